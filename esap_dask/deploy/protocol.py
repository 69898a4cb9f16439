"""What the engine may ask a cluster manager: the :class:`WorkerJobs` protocol.

A run needs three things from the cluster behind its client, beyond what
``distributed.Client`` says: whether the workers' batch or grid jobs can never start
(:attr:`WorkerJobs.error`, so that the run stops instead of waiting forever), what the
jobs' system said about lost workers (:meth:`WorkerJobs.run_notes`, for the summary), and
how many workers are planned (:meth:`WorkerJobs.scaling`, to size the run's tasks while
workers are still queued). esap-dask's managers declare the protocol through
:class:`WorkerJobsMixin`; any other Dask cluster (``LocalCluster``, a user's own
``SpecCluster``) is read through :func:`worker_jobs`, which answers with no error, no
notes, and what the cluster's spec and adaptive policy say.

distributed keeps a cluster's adaptive policy in the private ``Cluster._adaptive`` (set
by ``adapt()``; there is no public accessor as of distributed 2025.x). This module is the
one place esap-dask reads it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["Scaling", "WorkerJobs", "WorkerJobsMixin", "scaling_of", "worker_jobs"]


class Scaling(NamedTuple):
    """How many workers a cluster plans.

    ``adaptive``: an adaptive policy is set; ``maximum``: its maximum (``inf`` when
    unbounded or not adaptive); ``planned``: the workers of its spec (asked for).
    """

    adaptive: bool
    maximum: float
    planned: int


@runtime_checkable
class WorkerJobs(Protocol):
    """A cluster manager that reports on its workers' jobs to the engine."""

    @property
    def error(self) -> BaseException | None:
        """Why workers can never start (a refused submission), else None."""
        ...

    def run_notes(self) -> list[str]:
        """One line per worker job lost, with what its system said; for the run's summary."""
        ...

    def scaling(self) -> Scaling:
        """How many workers the cluster plans."""
        ...


def scaling_of(cluster: Any) -> Scaling:
    """The :class:`Scaling` of any Dask cluster (a spec and an adaptive policy, or neither)."""
    adaptive = getattr(cluster, "_adaptive", None)  # distributed's Cluster; see the module doc
    maximum = float(getattr(adaptive, "maximum", math.inf)) if adaptive is not None else math.inf
    planned = len(getattr(cluster, "worker_spec", None) or {})
    return Scaling(adaptive is not None, maximum, planned)


class WorkerJobsMixin:
    """Defaults of :class:`WorkerJobs` for esap-dask's cluster managers (override what you know)."""

    @property
    def error(self) -> BaseException | None:
        """No known reason that workers can never start."""
        return None

    def run_notes(self) -> list[str]:
        """Nothing to report."""
        return []

    def scaling(self) -> Scaling:
        """The spec's workers and the adaptive policy, if any."""
        return scaling_of(self)


class _AnyCluster(WorkerJobsMixin):
    """A Dask cluster that does not declare :class:`WorkerJobs`, read from the outside."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster

    def scaling(self) -> Scaling:
        return scaling_of(self._cluster)


def worker_jobs(cluster: Any) -> WorkerJobs | None:
    """``cluster`` as :class:`WorkerJobs`: itself if it declares it, else a reader (or None)."""
    if cluster is None:
        return None
    if isinstance(cluster, WorkerJobs):
        return cluster
    return _AnyCluster(cluster)
