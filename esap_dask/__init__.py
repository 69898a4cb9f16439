"""esap-dask: one analysis over thousands of observation files, into one Zarr store.

The public API::

    import esap_dask
    cluster = esap_dask.open_cluster("local")          # or "slurm-loopback", "dirac", ...
    summary = esap_dask.map_observations("helloworld", "runs/*.fits", "hello.zarr")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from esap_dask._moved import install as _install_moved

_install_moved()  # old module paths (esap_dask.gadf, ...) import with a DeprecationWarning

if TYPE_CHECKING:
    from esap_dask.catalogs.facilities import Facility, list_facilities, load_facility, open_cluster
    from esap_dask.catalogs.workflows import get_pipeline, list_pipelines
    from esap_dask.engine.handle import RunCancelled, RunHandle
    from esap_dask.engine.inputs import read_input
    from esap_dask.engine.ledger import read_ledger
    from esap_dask.engine.ledger_table import ledger
    from esap_dask.engine.mapper import map_observations
    from esap_dask.engine.observations import Observation, ObservationError, as_observations
    from esap_dask.engine.summary import RunSummary
    from esap_dask.pipeline import (
        Coordinate,
        Parameter,
        ParameterError,
        Pipeline,
        Schema,
        SchemaError,
        Variable,
    )

#: public name -> the module defining it; imported on first use, so that ``esap-dask
#: --version`` (and every command) loads only what it uses, not zarr and the mapper.
#: Nor Dask: esap-dask's defaults in Dask's configuration (:mod:`esap_dask.config`) are
#: registered by the modules that read them, each of which imports ``esap_dask.config``
#: (tests/test_architecture.py checks it), so that an unchanged ``esap-dask run`` answers
#: from its receipt (:mod:`esap_dask.engine.receipt`) without importing Dask (0.1 s).
_LAZY = {
    **dict.fromkeys(
        ("Facility", "list_facilities", "load_facility", "open_cluster"),
        "esap_dask.catalogs.facilities",
    ),
    "read_ledger": "esap_dask.engine.ledger",
    "ledger": "esap_dask.engine.ledger_table",
    "RunSummary": "esap_dask.engine.summary",
    **dict.fromkeys(("RunCancelled", "RunHandle"), "esap_dask.engine.handle"),
    "map_observations": "esap_dask.engine.mapper",
    **dict.fromkeys(
        ("Observation", "ObservationError", "as_observations"), "esap_dask.engine.observations"
    ),
    "read_input": "esap_dask.engine.inputs",
    **dict.fromkeys(
        ("Coordinate", "Parameter", "ParameterError", "Pipeline", "Schema", "SchemaError"),
        "esap_dask.pipeline",
    ),
    "Variable": "esap_dask.pipeline",
    **dict.fromkeys(("get_pipeline", "list_pipelines"), "esap_dask.catalogs.workflows"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("esap-dask")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata costs 0.04 s of every command's start
        globals()[name] = value = _version()
        return value
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Coordinate",
    "Facility",
    "Observation",
    "ObservationError",
    "Parameter",
    "ParameterError",
    "Pipeline",
    "RunCancelled",
    "RunHandle",
    "RunSummary",
    "Schema",
    "SchemaError",
    "Variable",
    "__version__",
    "as_observations",
    "get_pipeline",
    "ledger",
    "list_facilities",
    "list_pipelines",
    "load_facility",
    "map_observations",
    "open_cluster",
    "read_input",
    "read_ledger",
]
