"""DIRAC: a grid cluster manager speaking the DiracX REST API.

:mod:`~esap_dask.deploy.dirac.cluster` (``DiracCluster``, ``open_dirac``),
:mod:`~esap_dask.deploy.dirac.jobs` (its grid jobs: submit, watch, kill),
:mod:`~esap_dask.deploy.dirac.diracx_client` (the REST client, JDLs, sandboxes).
"""

from __future__ import annotations

import importlib
from typing import Any

#: The cluster manager's names, as ``esap_dask.deploy.dirac`` offered them when it was one
#: module; imported on first use (the package's other modules do not need dask-jobqueue).
_CLUSTER = ("DiracCluster", "DiracJob", "open_dirac")

__all__ = list(_CLUSTER)


def __getattr__(name: str) -> Any:
    if name in _CLUSTER:
        return getattr(importlib.import_module(f"{__name__}.cluster"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
