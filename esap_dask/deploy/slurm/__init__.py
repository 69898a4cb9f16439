"""SLURM: job-array clusters, batch-job state, and the scheduler plugin that watches jobs.

:mod:`~esap_dask.deploy.slurm.cluster` (``SLURMArrayCluster``: one ``sbatch --array`` for N
workers), :mod:`~esap_dask.deploy.slurm.jobarray` (the array's tasks as workers),
:mod:`~esap_dask.deploy.slurm.jobstate` (``squeue``/``sacct`` into one job-state vocabulary),
:mod:`~esap_dask.deploy.slurm.batch_scheduler` (failed jobs reported to the run),
:mod:`~esap_dask.deploy.slurm.jobqueue_import` (dask-jobqueue, imported once).
"""

from __future__ import annotations

import importlib
from typing import Any

#: The cluster manager's names, as ``esap_dask.deploy.slurm`` offered them when it was one
#: module; imported on first use (the package's other modules do not need dask-jobqueue).
_CLUSTER = ("SLURMArrayCluster", "SLURMArrayJob")

__all__ = list(_CLUSTER)


def __getattr__(name: str) -> Any:
    if name in _CLUSTER:
        return getattr(importlib.import_module(f"{__name__}.cluster"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
