"""``esap-dask facilities check NAME``: does a facility give a working worker?

One worker is started on the facility's cluster, one task runs on it and reports where it
ran (host, Python, esap-dask version, the batch or grid job it belongs to), and the
cluster is closed, which cancels the job. The report says how long the worker took to
connect; when it does not come, :class:`FacilityCheckError` carries the reason: the
cluster manager's own (SLURM's pending reason or the job's stderr, raised by
``wait_for_workers``) or the timeout.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["JOB_ID_VARIABLES", "FacilityCheck", "FacilityCheckError", "check_facility"]

#: Environment variables that hold the id of the batch or grid job a worker runs in.
JOB_ID_VARIABLES = (
    "SLURM_ARRAY_JOB_ID",  # with SLURM_ARRAY_TASK_ID: a task of an array
    "SLURM_JOB_ID",
    "PBS_JOBID",
    "LSB_JOBID",
    "JOB_ID",  # SGE
    "CONDOR_JOB_ID",
    "DIRACJOBID",
)


#: Facility types whose options ``n_workers`` and ``adapt`` esap-dask's jobqueue manager reads.
_BATCH = ("slurm", "pbs", "sge", "htcondor", "lsf")


class FacilityCheckError(RuntimeError):
    """The facility's worker did not come, or the task on it failed; the message says why."""


@dataclass(frozen=True)
class FacilityCheck:
    """What :func:`check_facility` saw.

    Attributes
    ----------
    facility
        The facility's catalog name.
    seconds_to_worker
        From opening the cluster to the worker connected to its scheduler.
    host, python, esap_dask
        Where the task ran: the worker's host name, its Python version and the esap-dask
        version it imports (compare them with the machine running ``esap-dask run``).
    job_id
        The batch or grid job of the worker (``12345_0`` for a SLURM array task), or
        ``None`` for a local process.
    scheduler
        The scheduler's address.
    """

    facility: str
    seconds_to_worker: float
    host: str
    python: str
    esap_dask: str
    job_id: str | None
    scheduler: str

    def to_dict(self) -> dict[str, Any]:
        """The check as a JSON-ready mapping."""
        return asdict(self)


def check_facility(name: str, *, timeout: float = 300, **overrides: Any) -> FacilityCheck:
    """Start one worker on facility ``name``, run one task on it, close the cluster.

    Parameters
    ----------
    name
        A facility of the catalog (``esap-dask facilities``).
    timeout
        Seconds to wait for the worker to connect, and then for the task.
    **overrides
        Cluster options that win over the facility file and ``dask.config``.

    Raises
    ------
    FacilityError
        The facility is unknown, invalid or a template with placeholders left.
    FacilityCheckError
        No worker within ``timeout`` (or the cluster manager's reason it cannot start),
        or the task failed on the worker.
    """
    from distributed import Client

    from esap_dask.catalogs.facilities import load_facility, open_cluster

    def worker_report(variables: tuple[str, ...] = JOB_ID_VARIABLES) -> dict[str, Any]:
        """Runs on the worker (pickled by value: it needs any esap-dask there, not this one)."""
        import os
        import platform

        import esap_dask

        job = next((os.environ[v] for v in variables if os.environ.get(v)), None)
        if job and os.environ.get("SLURM_ARRAY_TASK_ID") and "SLURM_ARRAY_JOB_ID" in os.environ:
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        return {
            "host": platform.node(),
            "python": platform.python_version(),
            "esap_dask": esap_dask.__version__,
            "job_id": job,
        }

    ftype = load_facility(name).facilitytype
    if ftype in _BATCH:  # one worker job, not the facility's n_workers or adapt policy
        overrides = {"n_workers": 0, "adapt": None, **overrides}
    elif ftype in ("local", "dirac"):
        overrides = {"n_workers": 0, **overrides}
    started = time.monotonic()
    cluster = open_cluster(name, **overrides)
    try:
        if not getattr(cluster, "worker_spec", None):  # ssh starts its hosts' workers itself
            cluster.scale(1)
        try:
            cluster.wait_for_workers(1, timeout=timeout)
        except TimeoutError as err:
            raise FacilityCheckError(
                f"facility {name!r}: no worker connected within {timeout:g} s; see the "
                "batch system's queue and the jobs' logs (log_directory), or give more time "
                "with --timeout"
            ) from err
        except Exception as err:  # the cluster manager's reason, e.g. WorkerJobError
            raise FacilityCheckError(f"facility {name!r}: the worker did not come: {err}") from err
        seconds = time.monotonic() - started
        with Client(cluster, set_as_default=False) as client:
            try:
                report = client.submit(worker_report, pure=False).result(timeout=timeout)
            except Exception as err:
                raise FacilityCheckError(
                    f"facility {name!r}: a worker came but the task failed on it: "
                    f"{type(err).__name__}: {err}"
                ) from err
        return FacilityCheck(
            facility=name,
            seconds_to_worker=round(seconds, 2),
            scheduler=str(cluster.scheduler_address),
            **report,
        )
    finally:
        cluster.close()
