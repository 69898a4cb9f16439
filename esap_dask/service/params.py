"""A job's UWS parameters: ``pipeline``, ``facility``, ``observations`` and the pipeline's own.

Parameters arrive as UWS parameters (form fields of ``POST /uws/jobs`` or
``POST /uws/jobs/{id}/parameters``); names are case-insensitive, as in DALI.
They are stored as given (strings, or lists for repeated ones) and turned into
a :class:`JobSpec` — checked against the facility and pipeline catalogs and the
pipeline's :class:`~esap_dask.Parameter` declarations — whenever they change.

``observations`` may be

- a glob (``/data/runs/*.fits.gz``) or a list file (``.txt``/``.lst``/``.list``);
- an inclusive run-number range ``A..B``;
- a list: the parameter repeated, or one value with items separated by commas or
  new lines (items that are integers become run numbers);
- a GADF obs-index file (``obs-index.fits[.gz]``): its ``OBS_ID`` rows, each mapped to its
  events file through the ``hdu-index`` next to it (the run number when there is none).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esap_dask.facilities import FacilityError, load_facility
from esap_dask.observations import ObservationError, as_observations, parse_range
from esap_dask.pipeline import ParameterError, Pipeline
from esap_dask.workflows import get_pipeline, list_pipelines

__all__ = [
    "RESERVED",
    "JobParameterError",
    "JobSpec",
    "catalog_pipeline",
    "merge_parameters",
    "parse_spec",
]

#: Job parameters of the service itself (the pipeline's own come on top).
RESERVED = ("pipeline", "facility", "observations")
_INT = re.compile(r"^-?\d+$")
#: Most observations one job may map (a range is checked before it is expanded).
MAX_OBSERVATIONS = 1_000_000


class JobParameterError(ValueError):
    """A job parameter is missing, unknown or invalid; the message names it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"parameter {name!r}: {message}")
        self.name = name


@dataclass(frozen=True)
class JobSpec:
    """What running a job means: a pipeline on a facility over observations, with params."""

    pipeline: Pipeline
    facility: str
    observations: Any
    params: dict[str, Any]


def _single(name: str, value: Any) -> str:
    if isinstance(value, list):
        if len(value) != 1:
            raise JobParameterError(name, f"give it once, not {len(value)} times")
        value = value[0]
    return str(value)


def merge_parameters(current: Mapping[str, Any], new: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``current`` updated with ``(name, value)`` pairs; repeated names become lists.

    Reserved names are lower-cased; a pipeline parameter keeps its given spelling,
    replacing any value stored under another spelling of the same name.
    """
    merged = dict(current)
    seen: dict[str, list[str]] = {}
    for name, value in new:
        key = name.lower() if name.lower() in RESERVED else name
        seen.setdefault(key, []).append(value)
    for key, values in seen.items():
        for old in [k for k in merged if k.lower() == key.lower()]:
            del merged[old]
        merged[key] = values[0] if len(values) == 1 else values
    return merged


def parse_spec(parameters: Mapping[str, Any]) -> JobSpec:
    """Check stored job parameters and build the :class:`JobSpec`.

    Raises
    ------
    JobParameterError
        Naming the missing, unknown or invalid parameter and what to give instead.
    """
    if "pipeline" not in parameters:
        names = ", ".join(p.name for p in list_pipelines())
        raise JobParameterError("pipeline", f"required; give pipeline=<name> (one of: {names})")
    pipeline = catalog_pipeline(_single("pipeline", parameters["pipeline"]))
    facility = _single("facility", parameters.get("facility", "local"))
    try:
        load_facility(facility)
    except FacilityError as err:
        raise JobParameterError("facility", str(err)) from None
    if "observations" not in parameters:
        raise JobParameterError(
            "observations",
            "required; give a glob, a list, an obs-index file or a run-number range like 1..10",
        )
    observations = observation_spec(parameters["observations"])
    try:
        as_observations(observations)
    except (ObservationError, OSError) as err:
        raise JobParameterError("observations", str(err)) from None
    own = {p.name.lower(): p.name for p in pipeline.parameters}
    given: dict[str, Any] = {}
    for key, value in parameters.items():
        if key.lower() in RESERVED:
            continue
        if key.lower() not in own:
            known = ", ".join(own.values()) or "none"
            raise JobParameterError(
                key,
                f"unknown for pipeline {pipeline.name!r} (its parameters: {known}; "
                f"service parameters: {', '.join(RESERVED)})",
            )
        given[own[key.lower()]] = _single(key, value)
    try:
        params = pipeline.resolve(given)
    except ParameterError as err:
        bad = next((n for n in given if repr(n) in str(err)), "parameters")
        raise JobParameterError(bad, str(err).split(": ", 1)[-1]) from None
    return JobSpec(pipeline=pipeline, facility=facility, observations=observations, params=params)


def catalog_pipeline(name: str) -> Pipeline:
    """A pipeline of the catalog by name (never a path: a job cannot load server files)."""
    catalog = {p.name: p for p in list_pipelines()}
    if name not in catalog:
        known = ", ".join(sorted(catalog)) or "none"
        raise JobParameterError("pipeline", f"unknown pipeline {name!r}; give one of: {known}")
    return get_pipeline(catalog[name])


def observation_spec(value: Any) -> Any:
    """The ``observations`` parameter as something :func:`as_observations` accepts."""
    if isinstance(value, list):
        items = [str(v).strip() for v in value]
        return [int(v) if _INT.match(v) else v for v in items if v]
    text = str(value).strip()
    if not text:
        raise JobParameterError("observations", "empty; give a glob, a list or a range")
    if re.search(r"obs-index\.fits(\.gz)?$", text):
        return obs_index(Path(text))
    bounds = parse_range(text)
    if bounds and bounds[1] - bounds[0] >= MAX_OBSERVATIONS:
        raise JobParameterError(
            "observations",
            f"the range {text} holds more than {MAX_OBSERVATIONS} observations; split it "
            "into several jobs",
        )
    if "," in text or "\n" in text:
        return observation_spec(re.split(r"[,\n]", text))
    if _INT.match(text):
        return [int(text)]
    return text


def obs_index(path: Path) -> list[Any]:
    """The observations of a GADF obs-index file: events files when the hdu-index says."""
    from astropy.table import Table

    if not path.is_file():
        raise JobParameterError("observations", f"obs-index file {path} does not exist")
    try:
        obs_ids = [int(i) for i in Table.read(path, hdu=1, format="fits")["OBS_ID"]]
    except Exception as err:  # astropy raises many kinds for a file that is not FITS
        raise JobParameterError("observations", f"{path}: not a GADF obs-index ({err})") from None
    name = path.name.replace("obs-index", "hdu-index")
    hdu_path = path.with_name(name)
    if not hdu_path.is_file():
        return obs_ids
    events: dict[int, str] = {}
    try:
        for row in Table.read(hdu_path, hdu=1, format="fits"):
            if str(row["HDU_CLASS"]).strip().lower() == "events":
                events[int(row["OBS_ID"])] = os.path.normpath(
                    path.parent / str(row["FILE_DIR"]).strip() / str(row["FILE_NAME"]).strip()
                )
    except Exception as err:  # not FITS, or not the GADF columns
        raise JobParameterError(
            "observations", f"{hdu_path}: not a GADF hdu-index ({err})"
        ) from None
    return [events.get(i, i) for i in obs_ids]
