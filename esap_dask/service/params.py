"""A job's UWS parameters: ``pipeline``, ``facility``, ``observations`` and the pipeline's own.

Parameters arrive as UWS parameters (form fields of ``POST /uws/jobs`` or
``POST /uws/jobs/{id}/parameters``); names are case-insensitive, as in DALI.
They are stored as given (strings, or lists for repeated ones) and turned into
a :class:`JobSpec` — checked against the facility and pipeline catalogs, the
pipeline's :class:`~esap_dask.Parameter` declarations and the service's
:class:`~esap_dask.service.sandbox.Sandbox` — whenever they change, and again
when the job runs (a file swapped meanwhile is caught then).

``observations`` may be

- an inclusive run-number range ``A..B``, or integers (run numbers);
- a path or a glob (``runs/*.fits.gz``) under the service's data roots;
- ``list:PATH``: a list file under a data root, one path a line;
- a list: the parameter repeated, or one value with items separated by commas or
  new lines (items that are integers become run numbers, the others are paths);
- a GADF obs-index file (``obs-index.fits[.gz]``) under a data root: its ``OBS_ID`` rows,
  each mapped to its events file through the ``hdu-index`` next to it (the run number
  when there is none);
- a URL, a URL glob or an obs-index URL under a URL data root (``esap-dask serve
  --data-root s3://bucket/runs/``); every URL is confined (:mod:`esap_dask.service.urls`).

The mapper receives only run numbers, the real paths of regular files under the
data roots and URLs under the URL data roots (see :mod:`esap_dask.service.sandbox`).
"""

from __future__ import annotations

import glob as globmod
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esap_dask.catalogs.facilities import FacilityError, load_facility, unfilled_placeholders
from esap_dask.catalogs.workflows import get_pipeline, list_pipelines
from esap_dask.engine.observations import Observation, parse_range
from esap_dask.pipeline import ParameterError, Pipeline
from esap_dask.service.sandbox import (
    LIST_PREFIX,
    MAX_RUNID_CHARS,
    MAX_VALUE_CHARS,
    JobParameterError,
    Sandbox,
    check_text,
    show,
)

__all__ = [
    "RESERVED",
    "JobParameterError",
    "JobSpec",
    "catalog_pipeline",
    "check_pairs",
    "merge_parameters",
    "parse_spec",
]

#: Job parameters of the service itself (the pipeline's own come on top).
RESERVED = ("pipeline", "facility", "observations")
_INT = re.compile(r"^-?\d+$")
_OBS_INDEX = re.compile(r"obs-index\.fits(\.gz)?$")
#: The sandbox of a service configured with nothing: no file is read.
_NO_FILES = Sandbox()


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


def parse_spec(parameters: Mapping[str, Any], sandbox: Sandbox | None = None) -> JobSpec:
    """Check stored job parameters and build the :class:`JobSpec`.

    ``sandbox``: the service's data roots and bounds (default: no file is read).

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
        unfilled = unfilled_placeholders(load_facility(facility))
    except FacilityError as err:
        raise JobParameterError("facility", str(err)) from None
    if unfilled:
        raise JobParameterError(
            "facility",
            f"{facility!r} is a template for a site, not a facility of this service (it "
            f"leaves {', '.join(unfilled)} to fill); GET /esap/facilities lists this "
            "service's facilities",
        )
    if "observations" not in parameters:
        raise JobParameterError(
            "observations",
            "required; give a glob, a list, an obs-index file or a run-number range like 1..10",
        )
    sandbox = sandbox or _NO_FILES
    observations = observation_spec(parameters["observations"], sandbox, facility)
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
    for p in pipeline.parameters:
        value = given.get(p.name)
        # a file parameter (a steering card) names a file, or holds the text itself
        if p.file and isinstance(value, str) and value.strip() and "\n" not in value:
            given[p.name] = sandbox.file(p.name, value.strip())
    try:
        params = pipeline.resolve(given)
    except ParameterError as err:
        bad = next((n for n in given if repr(n) in str(err)), "parameters")
        raise JobParameterError(bad, str(err).split(": ", 1)[-1]) from None
    sandbox.check_maxima(pipeline.name, params)
    return JobSpec(pipeline=pipeline, facility=facility, observations=observations, params=params)


def catalog_pipeline(name: str) -> Pipeline:
    """A pipeline of the catalog by name (never a path: a job cannot load server files)."""
    catalog = {p.name: p for p in list_pipelines()}
    if name not in catalog:
        known = ", ".join(sorted(catalog)) or "none"
        raise JobParameterError("pipeline", f"unknown pipeline {name!r}; give one of: {known}")
    return get_pipeline(catalog[name])


def observation_spec(value: Any, sandbox: Sandbox, facility: str = "local") -> list[Any] | range:
    """The ``observations`` parameter as run numbers, confined real paths and URLs (module doc)."""
    name = "observations"
    if isinstance(value, list):
        return _items([str(v).strip() for v in value], sandbox)
    text = str(value).strip()
    if not text:
        raise JobParameterError(name, "empty; give a range like 1..10, paths or a glob")
    bounds = parse_range(text)
    if bounds:
        lo, hi = bounds
        if hi < lo:
            raise JobParameterError(name, f"the range {show(text)}: the end is before the start")
        sandbox.count_ok(name, hi - lo + 1, f"the range {show(text)}")
        return range(lo, hi + 1)
    if text.startswith(LIST_PREFIX):
        return _unique(sandbox.list_file(name, text[len(LIST_PREFIX) :].strip()))
    if "," in text or "\n" in text:
        return _items(re.split(r"[,\n]", text), sandbox)
    if _INT.match(text):
        return [int(text)]
    if "://" in text:
        return _unique(_urls(text, sandbox, facility))
    if _OBS_INDEX.search(text):
        return _unique(obs_index(sandbox.file(name, text), sandbox))
    if globmod.has_magic(text):
        return _unique(sandbox.glob(name, text))
    return [sandbox.file(name, text)]


def _items(items: list[str], sandbox: Sandbox) -> list[Any]:
    items = [i.strip() for i in items if i.strip()]
    sandbox.count_ok("observations", len(items), "the list")
    if not items:
        raise JobParameterError("observations", "empty; give a range like 1..10, paths or a glob")
    return _unique([_item(i, sandbox) for i in items])


def _item(text: str, sandbox: Sandbox) -> Any:
    if _INT.match(text):
        return int(text)
    if "://" in text:
        return sandbox.url("observations", text)
    return sandbox.file("observations", text)


def _urls(text: str, sandbox: Sandbox, facility: str) -> list[str]:
    """A URL under a URL data root, the matches of a URL glob, or the runs of an obs-index URL.

    Every URL an obs-index names (through its hdu-index) is confined like the request's.
    """
    name = "observations"
    if _OBS_INDEX.search(text.split("?", 1)[0]):
        from esap_dask.engine.observations import ObservationError, as_observations

        index = sandbox.url(name, text)
        try:
            listed = as_observations(index, facility=facility)
        except (ObservationError, ValueError, OSError) as err:
            raise JobParameterError(
                name, f"the obs-index {show(text)} cannot be read ({type(err).__name__})"
            ) from None
        sandbox.count_ok(name, len(listed), "the obs-index")
        return [
            sandbox.url(name, str(o.value), where=f"the events file of obs_id row {i}")
            for i, o in enumerate(listed, 1)
        ]
    if globmod.has_magic(text.split("://", 1)[1]):
        return sandbox.url_glob(name, text, facility)
    return [sandbox.url(name, text)]


def _unique(items: list[Any]) -> list[Any]:
    """``items``, or an error naming the first observation id (file name) given twice."""
    seen: set[str] = set()
    for item in items:
        oid = Observation.of(item).id
        if oid in seen:
            raise JobParameterError(
                "observations",
                f"two observations share the id {show(oid)}; observation ids (file names) "
                "must be unique within a job",
            )
        seen.add(oid)
    return items


def obs_index(path: str, sandbox: Sandbox) -> list[Any]:
    """The observations of a GADF obs-index file: events files when the hdu-index says.

    ``path`` is already confined; the hdu-index next to it and every events file it
    names are confined the same way. Errors never quote the files' content.
    """
    from astropy.table import Table

    name = "observations"
    try:
        obs_ids = [int(i) for i in Table.read(path, hdu=1, format="fits")["OBS_ID"]]
    except Exception:  # astropy raises many kinds for a file that is not FITS
        raise JobParameterError(name, "the obs-index file is not a GADF obs-index") from None
    sandbox.count_ok(name, len(obs_ids), "the obs-index file")
    hdu_path = os.path.join(
        os.path.dirname(path), os.path.basename(path).replace("obs-index", "hdu-index")
    )
    if not os.path.lexists(hdu_path):
        return obs_ids
    hdu_path = sandbox.file(name, hdu_path, where="the hdu-index next to the obs-index")
    events: dict[int, str] = {}
    try:
        rows = [
            (int(row["OBS_ID"]), str(row["FILE_DIR"]).strip(), str(row["FILE_NAME"]).strip())
            for row in Table.read(hdu_path, hdu=1, format="fits")
            if str(row["HDU_CLASS"]).strip().lower() == "events"
        ]
    except Exception:  # not FITS, or not the GADF columns
        raise JobParameterError(name, "the hdu-index file is not a GADF hdu-index") from None
    base = os.path.dirname(path)
    for number, (obs_id, directory, file_name) in enumerate(rows, 1):
        where = f"the events file of row {number} of the hdu-index"
        target = os.path.normpath(os.path.join(base, directory, file_name))
        events[obs_id] = sandbox.file(name, target, where=where)
    return [events.get(i, i) for i in obs_ids]


def check_pairs(pairs: Sequence[tuple[str, str]]) -> None:
    """Refuse names and values a UWS document cannot carry (control characters), or too long.

    Raises
    ------
    JobParameterError
        Naming the parameter (its name escaped) and the offending character.
    """
    for name, value in pairs:
        check_text(name, name, limit=255)
        check_text(
            name, value, limit=MAX_RUNID_CHARS if name.upper() == "RUNID" else MAX_VALUE_CHARS
        )
