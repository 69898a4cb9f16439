"""esap-dask: one analysis over thousands of observation files, into one Zarr store.

The public API::

    import esap_dask
    cluster = esap_dask.open_cluster("local")          # or "slurm", "dirac", ...
    summary = esap_dask.map_observations("helloworld", "runs/*.fits", "hello.zarr")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version

import esap_dask.config  # noqa: F401 - registers esap-dask's Dask defaults
from esap_dask.facilities import Facility, list_facilities, load_facility, open_cluster
from esap_dask.ledger import read_ledger
from esap_dask.mapper import RunSummary, map_observations
from esap_dask.observations import Observation, ObservationError, as_observations
from esap_dask.pipeline import (
    Coordinate,
    Parameter,
    ParameterError,
    Pipeline,
    Schema,
    SchemaError,
    Variable,
)
from esap_dask.workflows import get_pipeline, list_pipelines

try:
    __version__ = _pkg_version("esap-dask")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Coordinate",
    "Facility",
    "Observation",
    "ObservationError",
    "Parameter",
    "ParameterError",
    "Pipeline",
    "RunSummary",
    "Schema",
    "SchemaError",
    "Variable",
    "__version__",
    "as_observations",
    "get_pipeline",
    "list_facilities",
    "list_pipelines",
    "load_facility",
    "map_observations",
    "open_cluster",
    "read_ledger",
]
