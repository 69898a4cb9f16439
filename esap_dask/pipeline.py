"""Pipelines: a per-observation function, its typed parameters and its output schema.

A pipeline is what ESAP calls a ``batch.workflow``: a name, a version, a
description, the function run once per observation, the parameters it takes
(with defaults and validation) and the products it returns, declared up front
so that the Zarr store can be laid out before any observation is processed::

    from esap_dask import Coordinate, Parameter, Pipeline, Schema, Variable

    def spectrum(obs, *, nbins):
        ...
        return {"counts": counts, "livetime": livetime}

    pipeline = Pipeline(
        name="spectrum",
        version="1.0",
        description="Counts per energy bin",
        function=spectrum,
        parameters=[Parameter("nbins", int, 20, "number of energy bins", minimum=1)],
        schema=lambda p: Schema(
            variables=[
                Variable("counts", "int64", dims=("energy",), units="count"),
                Variable("livetime", "float64", units="s"),
            ],
            coords=[Coordinate("energy", np.arange(p["nbins"]), units="TeV")],
        ),
    )

The function is called as ``function(observation, **params)`` and returns a
mapping from variable name to a value of the declared shape (without the
``obs`` dimension, which the mapper adds).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esap_dask.errors import Worded

__all__ = [
    "Coordinate",
    "Parameter",
    "ParameterError",
    "Pipeline",
    "Schema",
    "SchemaError",
    "Variable",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ParameterError(ValueError):
    """A pipeline parameter is unknown or its value is invalid."""


class SchemaError(Worded, ValueError):
    """A pipeline's output schema, or a product it returned, is inconsistent."""


@dataclass(frozen=True)
class Parameter:
    """A typed pipeline parameter with a default and validation.

    Parameters
    ----------
    name
        The keyword passed to the pipeline function.
    type
        ``str``, ``int``, ``float`` or ``bool``; strings from the command line or
        a UWS request are converted to it.
    default
        The value used when the caller gives none.
    description
        One line shown by ``esap-dask pipelines`` and the job service.
    choices, minimum, maximum
        Optional constraints, checked by :meth:`validate`.
    check
        Optional ``check(value) -> value``, called by :meth:`validate` after the
        constraints: it returns the value to use (e.g. a steering card read and
        validated) or raises :class:`ParameterError`, which is re-raised naming
        the parameter. It runs wherever parameters are resolved (the CLI, the job
        service's submission), so a bad value is refused before anything runs.
    file
        The value may name a local file whose *content* the pipeline reads (a steering
        card, a configuration): its SHA-256 joins the parameter hash, so editing the
        file reprocesses the store, as changing the value would.
    """

    name: str
    type: type
    default: Any
    description: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    file: bool = False
    check: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.type not in (str, int, float, bool):
            raise ParameterError(
                f"parameter {self.name!r}: type must be str, int, float or bool, not {self.type!r}"
            )
        object.__setattr__(self, "default", self.validate(self.default))

    def validate(self, value: Any) -> Any:
        """Return ``value`` converted to the parameter's type, or raise ParameterError."""
        try:
            converted = self._convert(value)
        except (TypeError, ValueError) as err:
            raise ParameterError(
                f"parameter {self.name!r}: {value!r} is not a valid {self.type.__name__}"
            ) from err
        if self.choices is not None and converted not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise ParameterError(f"parameter {self.name!r}: {converted!r} is not one of {allowed}")
        if self.minimum is not None and converted < self.minimum:
            raise ParameterError(
                f"parameter {self.name!r}: {converted!r} is below the minimum {self.minimum}"
            )
        if self.maximum is not None and converted > self.maximum:
            raise ParameterError(
                f"parameter {self.name!r}: {converted!r} is above the maximum {self.maximum}"
            )
        if self.check is not None:
            try:
                converted = self.check(converted)
            except ParameterError as err:
                raise type(err)(f"parameter {self.name!r}: {err}") from None
        return converted

    def _convert(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if self.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if self.type in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        return self.type(value)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (the ESAP workflow parameter record)."""
        record: dict[str, Any] = {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "description": self.description,
        }
        for key in ("choices", "minimum", "maximum"):
            value = getattr(self, key)
            if value is not None:
                record[key] = list(value) if key == "choices" else value
        return record


@dataclass(frozen=True)
class Variable:
    """One product variable, per observation.

    Parameters
    ----------
    name
        Variable name in the store.
    dtype
        A numpy dtype string (``"float32"``, ``"int64"``, ``"bool"``) or ``"str"``.
    dims
        Its dimensions besides ``obs``; each needs a :class:`Coordinate`.
    units, description
        Written to the variable's attrs as CF's ``units`` and ``long_name`` (and
        ``description``); an empty one is not written.
    fill_value
        Value of observations that failed or are not processed yet; defaults to
        NaN for floats, 0 for integers, False for booleans and "" for strings.
    attrs
        More attributes for the store (e.g. CF's ``flag_values`` and ``flag_meanings``).
    """

    name: str
    dtype: str
    dims: tuple[str, ...] = ()
    units: str = ""
    description: str = ""
    fill_value: Any = None
    attrs: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype (object for strings)."""
        return np.dtype(object) if self.dtype == "str" else np.dtype(self.dtype)

    @property
    def fill(self) -> Any:
        """The fill value, with the per-kind default applied."""
        if self.fill_value is not None:
            return self.fill_value
        kind = self.numpy_dtype.kind
        return {"f": np.nan, "c": np.nan, "b": False, "O": ""}.get(kind, 0)


@dataclass(frozen=True)
class Coordinate:
    """A coordinate of a non-``obs`` dimension (its values, units and description)."""

    name: str
    values: Any
    units: str = ""
    description: str = ""


@dataclass(frozen=True)
class Schema:
    """The products of one observation: variables and the coordinates of their dimensions."""

    variables: Sequence[Variable]
    coords: Sequence[Coordinate] = ()

    def __post_init__(self) -> None:
        names = [v.name for v in self.variables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"variable(s) declared twice: {', '.join(dupes)}")
        sizes = self.sizes
        for var in self.variables:
            if var.name in ("obs", "ledger") or var.name.startswith("ledger_"):
                raise SchemaError(
                    f"variable {var.name!r}: the names 'obs', 'ledger' and 'ledger_*' are "
                    "reserved; rename it"
                )
            if "obs" in var.dims:
                raise SchemaError(f"variable {var.name!r}: 'obs' is added by the mapper")
            missing = [d for d in var.dims if d not in sizes]
            if missing:
                raise SchemaError(
                    f"variable {var.name!r}: dimension(s) {', '.join(missing)} have no "
                    f"Coordinate; declare Coordinate({missing[0]!r}, values, units=...)"
                )
            var.numpy_dtype  # noqa: B018 - raises TypeError for an unknown dtype
        for coord in self.coords:
            if coord.name in ("obs", "ledger"):
                raise SchemaError(
                    f"coordinate {coord.name!r}: the names 'obs' and 'ledger' are reserved; "
                    "rename it"
                )

    @property
    def sizes(self) -> dict[str, int]:
        """Length of each declared dimension."""
        return {c.name: len(np.asarray(c.values)) for c in self.coords}

    def shape(self, var: Variable) -> tuple[int, ...]:
        """Per-observation shape of ``var``."""
        sizes = self.sizes
        return tuple(sizes[d] for d in var.dims)

    def bytes_per_observation(self) -> int:
        """Uncompressed bytes one observation adds to the store (strings count 64)."""
        total = 0
        for var in self.variables:
            itemsize = 64 if var.dtype == "str" else var.numpy_dtype.itemsize
            total += itemsize * int(np.prod(self.shape(var), dtype=np.int64))
        return total

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description, stored in the store's attrs."""
        return {
            "variables": [
                {
                    "name": v.name,
                    "dtype": v.dtype,
                    "dims": list(v.dims),
                    "units": v.units,
                    "description": v.description,
                }
                for v in self.variables
            ],
            "coords": {
                c.name: {"size": len(np.asarray(c.values)), "units": c.units} for c in self.coords
            },
        }


SchemaSpec = Schema | Sequence[Variable] | Callable[[Mapping[str, Any]], Schema]


@dataclass(frozen=True)
class Pipeline:
    """A per-observation workflow: function, parameters, output schema and metadata.

    Parameters
    ----------
    name, version, description
        Metadata; ``version`` is recorded per observation in the ledger, and
        changing it makes the next run reprocess every observation.
    function
        ``function(observation, **params) -> Mapping[str, array-like]``.
    parameters
        The :class:`Parameter` list; the function receives all of them.
    schema
        A :class:`Schema`, a list of :class:`Variable` (scalars only), or a
        callable taking the resolved parameters (for shapes set by parameters).
    """

    name: str
    version: str
    function: Callable[..., Mapping[str, Any]]
    schema: SchemaSpec
    parameters: Sequence[Parameter] = ()
    description: str = ""
    observations: str = field(default="files", compare=False)

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overridden by ``params``, each validated; unknown names are an error."""
        params = dict(params or {})
        known = {p.name: p for p in self.parameters}
        unknown = sorted(set(params) - set(known))
        if unknown:
            names = ", ".join(known) or "none"
            raise ParameterError(
                f"pipeline {self.name!r} has no parameter {unknown[0]!r} (its parameters: {names})"
            )
        return {
            name: p.validate(params[name]) if name in params else p.default
            for name, p in known.items()
        }

    def output_schema(self, params: Mapping[str, Any]) -> Schema:
        """The schema for resolved ``params``."""
        spec = self.schema
        if isinstance(spec, Schema):
            return spec
        if callable(spec):
            return spec(params)
        return Schema(variables=list(spec))

    def parameter_hash(self, params: Mapping[str, Any]) -> str:
        """The hash of resolved ``params``, with the content of the files they name.

        See :attr:`Parameter.file`: a parameter that names an existing local file
        contributes that file's SHA-256 besides its value.
        """
        contents = {}
        for p in self.parameters:
            value = params.get(p.name)
            if p.file and isinstance(value, str) and value and os.path.isfile(value):
                with open(value, "rb") as f:
                    contents[p.name] = hashlib.sha256(f.read()).hexdigest()
        return parameter_hash({**params, **{f"{k} (content)": v for k, v in contents.items()}})

    def describe(self) -> dict[str, Any]:
        """The ESAP ``batch.workflow`` record with the parameters and default schema."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "observations": self.observations,
            "parameters": [p.describe() for p in self.parameters],
            "schema": self.output_schema(self.resolve()).describe(),
        }


def parameter_hash(params: Mapping[str, Any]) -> str:
    """A stable hash of resolved parameters (recorded per observation in the ledger)."""
    text = json.dumps(dict(params), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def infer_schema(name: str, example: Mapping[str, Any]) -> Schema:
    """A schema from one example result, for plain functions mapped without a Pipeline.

    Names and units come from the values where they carry them, else are left out:

    - an ``xarray.DataArray`` gives its dimension names, the values and ``units`` of
      its coordinates along them, and its own ``units`` and ``long_name`` (or
      ``description``) attrs;
    - an astropy ``Quantity`` gives its unit;
    - any other array gets the dimensions ``<variable>_dim0``, ``<variable>_dim1``, ...
      with an integer index as coordinate (and no units). Two variables of equal
      lengths do not share a dimension: equal lengths are no evidence of one axis
      (20 energy bins and 20 time bins); return DataArrays to name shared axes.

    A dimension named by two variables must have the same coordinate in both.
    """
    variables: list[Variable] = []
    coords: dict[str, Coordinate] = {}
    owner: dict[str, str] = {}
    if not isinstance(example, Mapping):
        raise SchemaError(
            f"function {name!r} returned {type(example).__name__}; return a dict of "
            "variable name -> value, or wrap it in an esap_dask.Pipeline"
        )
    for key, value in example.items():
        arr = np.asarray(getattr(value, "value", value) if _is_quantity(value) else value)
        dtype = "str" if arr.dtype.kind in "OUS" else str(arr.dtype)
        attrs = dict(getattr(value, "attrs", None) or {}) if _is_dataarray(value) else {}
        if _is_dataarray(value):
            dims = tuple(str(d) for d in value.dims)
        else:
            dims = tuple(f"{key}_dim{i}" for i in range(arr.ndim))
        for axis, (dim, size) in enumerate(zip(dims, arr.shape, strict=True)):
            coord = _inferred_coordinate(value, dim, size)
            known = coords.get(dim)
            if known is None:
                coords[dim], owner[dim] = coord, str(key)
            elif not np.array_equal(np.asarray(known.values), np.asarray(coord.values)):
                raise SchemaError(
                    f"function {name!r}: dimension {dim!r} of {key!r} (axis {axis}) differs "
                    f"from that of {owner[dim]!r} (length or coordinate); give the axes "
                    "different names, or declare the schema with an esap_dask.Pipeline"
                )
        units = str(attrs.get("units") or "")
        if _is_quantity(value):
            units = value.unit.to_string()
        description = str(attrs.get("long_name") or attrs.get("description") or "")
        variables.append(Variable(str(key), dtype, dims=dims, units=units, description=description))
    return Schema(variables=variables, coords=list(coords.values()))


def _is_dataarray(value: Any) -> bool:
    return type(value).__name__ == "DataArray" and hasattr(value, "dims")


def _is_quantity(value: Any) -> bool:
    unit = getattr(value, "unit", None)
    return unit is not None and hasattr(unit, "to_string") and hasattr(value, "value")


def _inferred_coordinate(value: Any, dim: str, size: int) -> Coordinate:
    """The coordinate of ``dim``: a DataArray's own, else an integer index (unitless)."""
    if _is_dataarray(value) and dim in value.coords:
        coord = value.coords[dim]
        return Coordinate(
            dim,
            np.asarray(coord.values),
            units=str(coord.attrs.get("units") or ""),
            description=str(coord.attrs.get("long_name") or coord.attrs.get("description") or ""),
        )
    return Coordinate(dim, np.arange(size))
