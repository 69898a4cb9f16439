"""The facility catalog: where a run's Dask workers come from.

A facility is one YAML file in a catalog directory, in the shape of ESAP's
``batch.facility`` record plus the options of its cluster manager::

    name: slurm-loopback
    description: The local SLURM test cluster (scripts/slurm.sh)
    url: https://slurm.schedmd.com
    facilitytype: slurm        # local, slurm, pbs, sge, htcondor, lsf, ssh, dirac
    runtimeengine: none        # none, apptainer, singularity, docker, podman
    options:                   # passed to the cluster manager
      queue: debug
      cores: 1
      memory: 1GiB

Catalog directories are searched in this order (a later file of the same name
wins): the built-in ``clusters/`` of esap-dask, then each directory in the Dask
config key ``esap.facilities-path``, then the user's ``clusters`` directory
(:func:`user_catalog_dir`: ``~/.config/esap-dask/clusters`` on Linux, from platformdirs).
An invalid file is left out of the catalog with its error (:func:`broken_facilities`);
only opening a facility of that file's name raises it.

The fields are validated with pydantic (:class:`_FacilityFile`); the errors name the
file and each wrong field. A template (the shipped ``slurm``) leaves ``<your-...>``
placeholders in its options: :func:`open_cluster` refuses it, naming each one.

Options merge with Dask's configuration, so a site configures esap-dask the
Dask way: ``esap.facilities.<name>.<option>`` in a YAML file of the Dask config
directory, or ``DASK_ESAP__FACILITIES__SLURM__QUEUE=long`` in the environment.
Keyword arguments of :func:`open_cluster` win over both.

Cluster managers register per facility type in :data:`MANAGERS` as
``"module:function"`` strings, imported only when a facility of that type is
opened; the function takes ``(facility, options)`` and returns a started
``distributed.deploy.Cluster``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.config
import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from esap_dask.config import apply_log_level
from esap_dask.deploy.facility import FACILITY_TYPES, RUNTIME_ENGINES, Facility, FacilityError
from esap_dask.extras import FACILITY_EXTRAS, MissingExtra, require

__all__ = [
    "FACILITY_TYPES",
    "MANAGERS",
    "PLACEHOLDER",
    "RUNTIME_ENGINES",
    "Facility",
    "FacilityError",
    "broken_facilities",
    "catalog_dirs",
    "list_facilities",
    "load_facility",
    "open_cluster",
    "ready_facilities",
    "unfilled_placeholders",
    "user_catalog_dir",
]

#: facility type -> "module:function" of its cluster manager factory.
MANAGERS: dict[str, str] = {
    "local": "esap_dask.deploy.local:open_local",
    "slurm": "esap_dask.deploy.jobqueue:open_jobqueue",
    "pbs": "esap_dask.deploy.jobqueue:open_jobqueue",
    "sge": "esap_dask.deploy.jobqueue:open_jobqueue",
    "htcondor": "esap_dask.deploy.jobqueue:open_jobqueue",
    "lsf": "esap_dask.deploy.jobqueue:open_jobqueue",
    "ssh": "esap_dask.deploy.ssh:open_ssh",
    "dirac": "esap_dask.deploy.dirac.cluster:open_dirac",
}

#: A value the shipped templates (``clusters/slurm.yaml``) leave for the site to fill.
PLACEHOLDER = re.compile(r"<your[-\w ]*>")


class _FacilityFile(BaseModel):
    """The fields of a facility YAML file, validated by pydantic."""

    model_config = ConfigDict(extra="forbid")

    name: str
    facilitytype: str
    description: str = ""
    url: str = ""
    runtimeengine: str | None = "none"
    options: dict[str, Any] | None = None

    @field_validator("facilitytype")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in FACILITY_TYPES:
            raise ValueError(f"{value!r} is not one of {', '.join(FACILITY_TYPES)}")
        return value

    @field_validator("runtimeengine")
    @classmethod
    def _known_engine(cls, value: str | None) -> str:
        value = value or "none"
        if value not in RUNTIME_ENGINES:
            raise ValueError(f"{value!r} is not one of {', '.join(RUNTIME_ENGINES)}")
        return value


def _explain(path: Path, error: ValidationError) -> str:
    """One line naming ``path`` and each field pydantic refused, with what to do."""
    parts = []
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"])
        if e["type"] == "missing":
            parts.append(f"missing field '{field}'")
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown field '{field}' (cluster options go under 'options:')")
        else:
            parts.append(f"field '{field}': {e['msg'].removeprefix('Value error, ')}")
    return f"{path}: " + "; ".join(parts)


def user_catalog_dir() -> Path:
    """The user's own catalog directory (platformdirs: ``~/.config/esap-dask/clusters``)."""
    return Path(platformdirs.user_config_dir("esap-dask")) / "clusters"


def catalog_dirs() -> list[Path]:
    """The catalog directories, in search order (later ones override earlier ones)."""
    here = Path(__file__).resolve().parent.parent
    dirs = [
        here.parent / "clusters",  # a source checkout or editable install
        Path(sys.prefix) / "share" / "esap-dask" / "clusters",  # a wheel install
    ]
    extra = dask.config.get("esap.facilities-path") or []
    if isinstance(extra, str):
        extra = extra.split(os.pathsep)
    dirs += [Path(p).expanduser() for p in extra]
    dirs.append(user_catalog_dir())
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.append(d.resolve())
    return seen


def _parse(path: Path) -> Facility:
    try:
        record = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise FacilityError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(record, dict):
        raise FacilityError(f"{path}: expected a mapping with 'name' and 'facilitytype'")
    try:
        valid = _FacilityFile.model_validate(record)
    except ValidationError as err:
        raise FacilityError(_explain(path, err)) from None
    return Facility(
        name=valid.name,
        facilitytype=valid.facilitytype,
        description=valid.description,
        url=valid.url,
        runtimeengine=valid.runtimeengine or "none",
        options=valid.options or {},
        path=path,
    )


def _catalog() -> tuple[dict[str, Facility], dict[Path, FacilityError]]:
    found: dict[str, Facility] = {}
    broken: dict[Path, FacilityError] = {}
    for d in catalog_dirs():
        for path in sorted(d.glob("*.yaml")):
            try:
                fac = _parse(path)
            except FacilityError as err:
                broken[path] = err
                continue
            found[fac.name] = fac
    return found, broken


def broken_facilities() -> dict[Path, FacilityError]:
    """Facility files of the catalog that are invalid, with the error naming the field."""
    return _catalog()[1]


def ready_facilities() -> list[Facility]:
    """The facilities of the catalog that can open: templates with placeholders left out.

    Their options are merged with ``dask.config`` (a template whose placeholders the
    configuration fills is ready). The job service offers these.
    """
    merged = (load_facility(f.name) for f in list_facilities())
    return [f for f in merged if not unfilled_placeholders(f)]


def unfilled_placeholders(facility: Facility) -> list[str]:
    """The options of ``facility`` that still hold a template's ``<your-...>`` placeholder.

    Each entry names the option (``options.account``, ``options.job_script_prologue[1]``)
    and the placeholder; empty when the facility is ready to open.
    """
    found: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str) and (hit := PLACEHOLDER.search(value)):
            found.append(f"{where} ({hit.group(0)})")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    walk(dict(facility.options), "options")
    return found


def list_facilities() -> list[Facility]:
    """All valid facilities of the catalog, sorted by name (see :func:`broken_facilities`)."""
    return sorted(_catalog()[0].values(), key=lambda f: f.name)


def load_facility(name: str, /, **overrides: Any) -> Facility:
    """The facility called ``name``, its options merged with ``dask.config`` and ``overrides``.

    Raises
    ------
    FacilityError
        When no catalog file defines ``name``; the message lists the known ones.
    """
    catalog, broken = _catalog()
    if name not in catalog:
        for path, err in broken.items():
            if path.stem == name:
                raise err
        known = ", ".join(sorted(catalog)) or "none"
        dirs = ", ".join(str(d) for d in catalog_dirs()) or "none"
        raise FacilityError(
            f"unknown facility {name!r} (known: {known}); add a clusters/{name}.yaml "
            f"to one of the catalog directories ({dirs})"
        )
    fac = catalog[name]
    configured = dask.config.get(f"esap.facilities.{name}", default=None) or {}
    options = dask.config.merge(dict(fac.options), dict(configured), overrides)
    return Facility(
        name=fac.name,
        facilitytype=fac.facilitytype,
        description=fac.description,
        url=fac.url,
        runtimeengine=fac.runtimeengine,
        options=options,
        path=fac.path,
    )


def open_cluster(name: str = "local", /, **overrides: Any) -> Any:
    """Start the Dask cluster of facility ``name`` and return its cluster manager.

    Parameters
    ----------
    name
        A facility of the catalog (``esap-dask facilities`` lists them).
    **overrides
        Cluster options that win over the facility file and ``dask.config``.

    Examples
    --------
    >>> cluster = open_cluster("local", n_workers=2)   # doctest: +SKIP
    >>> client = distributed.Client(cluster)            # doctest: +SKIP
    """
    fac = load_facility(name, **overrides)
    apply_log_level()  # the CLI's -v/-q, before the manager imports distributed
    unfilled = unfilled_placeholders(fac)
    if unfilled:
        env = f"DASK_ESAP__FACILITIES__{name.upper().replace('-', '_')}__<OPTION>"
        raise FacilityError(
            f"facility {name!r} ({fac.path}) is a template: fill in {', '.join(unfilled)}; "
            f"copy it to {user_catalog_dir()}/<site>.yaml and edit it there, or set the "
            f"option in the Dask config ({env})"
        )
    target = MANAGERS[fac.facilitytype]
    module_name, func_name = target.split(":")
    try:
        if fac.facilitytype in FACILITY_EXTRAS:
            require(FACILITY_EXTRAS[fac.facilitytype], f"facility {name!r}")
        module = importlib.import_module(module_name)
    except MissingExtra as err:
        raise FacilityError(str(err)) from err
    except ModuleNotFoundError as err:
        raise FacilityError(
            f"facility {name!r}: the {fac.facilitytype} cluster manager is not available "
            f"({err}); install the extra it needs"
        ) from err
    factory = getattr(module, func_name)
    # Options of the store and of the job service, not of the cluster manager:
    store_keys = ("storage_options", "shared_filesystem")
    return factory(fac, {k: v for k, v in fac.options.items() if k not in store_keys})


def __getattr__(name: str) -> Any:
    if name == "storage_options_for":  # moved to the store, which owns its options
        import warnings

        warnings.warn(
            "esap_dask.facilities.storage_options_for moved to "
            "esap_dask.store.options.storage_options_for",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("esap_dask.store.options"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
