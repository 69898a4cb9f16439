"""One place that turns a facility into a running Dask client.

The Python API (:func:`esap_dask.map_observations`), the CLI (``esap-dask run``)
and the job service all get their client here, so a run on ``slurm`` or ``dirac``
behaves the same from every entry point:

- :func:`facility_client` opens the facility's cluster (or connects to one the
  caller already runs, such as the job service's shared ``LocalCluster``), makes
  sure it will get workers, and closes what it opened, whatever happens;
- :func:`ensure_workers` lets the load decide (``adapt(0, esap.max-workers)``)
  when a batch or grid cluster was opened with no workers asked for: without it a
  run on such a cluster waits forever for workers nobody requested.

Both work from any thread: the job service runs each job in a thread of its own
(see :mod:`esap_dask.deploy.slurm.jobqueue_import` for the dask-jobqueue import that
used to make that impossible on SLURM).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask.config

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask.deploy.protocol import scaling_of

__all__ = ["ensure_workers", "facility_client", "max_workers"]


def max_workers() -> int:
    """Most workers an adaptive facility cluster asks for (Dask config ``esap.max-workers``)."""
    return int(dask.config.get("esap.max-workers"))


def ensure_workers(cluster: Any) -> str | None:
    """Make ``cluster`` adaptive when it has neither workers asked for nor an adaptive policy.

    Clusters that asked for workers (``scale(n)``, ``n_workers``, a ``LocalCluster``),
    that adapt already, or that esap-dask cannot manage (a client connected to a
    scheduler address has no cluster object) are left as they are.

    Returns
    -------
    str or None
        A note for the run's summary when the cluster was made adaptive.
    """
    if cluster is None or not callable(getattr(cluster, "adapt", None)):
        return None
    if getattr(cluster, "worker_spec", None) or scaling_of(cluster).adaptive:
        return None
    if getattr(cluster, "workers", None):  # a cluster with workers it manages itself
        return None
    most = max_workers()
    cluster.adapt(minimum=0, maximum=most)
    return (
        f"the cluster asked for no workers: it adapts to the load between 0 and {most} "
        "workers (Dask config esap.max-workers)"
    )


@contextlib.contextmanager
def facility_client(
    facility: str = "local",
    *,
    cluster: Any = None,
    label: str | None = None,
    notes: list[str] | None = None,
    **overrides: Any,
) -> Iterator[Any]:
    """A ``distributed.Client`` on a running cluster of ``facility``, closed on exit.

    Parameters
    ----------
    facility
        A facility of the catalog (``esap-dask facilities``); ignored when
        ``cluster`` is given.
    cluster
        A cluster that is already running and that the caller owns (the job
        service's shared ``LocalCluster``): connected to, never closed here.
    label
        A name for the batch or grid jobs of the cluster opened here (the SLURM
        job name, the DIRAC job group ``esap-dask-<label>``), so an operator finds
        them in ``squeue`` or the DIRAC monitor: the job service labels them with
        the UWS job's id.
    notes
        A list that receives what the run's summary should say about the cluster.
    **overrides
        Cluster options that win over the facility file and ``dask.config``.

    The client is not made the default client: each caller (one job thread of the
    service, say) uses its own. The cluster opened here is closed on exit, which
    cancels its batch or grid jobs.

    Examples
    --------
    >>> with facility_client("slurm-loopback") as client: # doctest: +SKIP
    ...     client.submit(sum, [1, 2]).result()
    3
    """
    from distributed import Client

    from esap_dask.catalogs.facilities import open_cluster

    own = cluster is None
    if own:
        if label:
            overrides = {**_label_options(facility, label), **overrides}
        cluster = open_cluster(facility, **overrides)
    try:
        note = ensure_workers(cluster)
        if note and notes is not None:
            notes.append(note)
        with Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        if own:
            cluster.close()


def _label_options(facility: str, label: str) -> dict[str, Any]:
    """The cluster option that names a facility's jobs ``label``, by facility type."""
    from esap_dask.catalogs.facilities import load_facility

    ftype = load_facility(facility).facilitytype
    if ftype == "dirac":
        return {"name": label}
    if ftype in ("slurm", "pbs", "sge", "htcondor", "lsf"):
        return {"job_name": label}
    return {}
