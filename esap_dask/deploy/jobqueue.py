"""Batch-system facilities (slurm, pbs, sge, htcondor, lsf): Dask workers as batch jobs.

:func:`open_jobqueue` turns a facility of the catalog into a started
dask-jobqueue cluster. SLURM facilities get
:class:`~esap_dask.deploy.slurm.cluster.SLURMArrayCluster`
(job arrays and job-state tracking); the other batch systems get dask-jobqueue's
own one-job-per-worker clusters. On top of dask-jobqueue's options, every one gets:

TLS by default
    A per-cluster certificate authority (:mod:`esap_dask.deploy.tls`); scheduler,
    workers and client must present the cluster's certificate. ``tls: false`` turns it off.
A private dashboard
    The dashboard listens on ``127.0.0.1`` (a login node is shared) unless the
    facility sets ``dashboard_address``.
Walltime-aware workers
    Each worker gets ``--lifetime`` = walltime − ``lifetime_margin`` and
    ``--lifetime-stagger``, so workers retire gracefully, one at a time, before
    the batch system kills their job (:mod:`esap_dask.deploy.walltime`). On SLURM the
    cluster renews workers ahead of that: it submits a successor, and retires the old
    worker once the successor has connected, so results move instead of being
    lost; a worker that leaves anyway (walltime, node failure, scancel) is replaced.
Containers
    The facility's ``runtimeengine`` wraps the worker command
    (:mod:`esap_dask.deploy.containers`, options under ``container:``).
esap-dask's worker environment
    The job script exports :data:`esap_dask.config.WORKER_ENVIRONMENT` before the
    facility's ``job_script_prologue`` lines (so an ``export`` there wins), and
    thus before the worker starts (:mod:`esap_dask.deploy.environment`).

Facility options (everything else goes to the dask-jobqueue cluster class)::

    options:
      queue: debug              # cores, memory, walltime, account, job_extra_directives, ...
      cores: 1
      memory: 1GiB
      walltime: "01:00:00"
      host: 127.0.0.1           # scheduler address workers connect to (scheduler_options.host)
      array: true               # SLURM only: job arrays (default) or one job per worker
      array_cap: 4              # SLURM only: at most 4 array tasks running at once
      poll_interval: 2s         # SLURM only: how often squeue is asked
      lifetime_margin: 5m       # default: 10% of walltime, within [1 min, 10 min], ≤ walltime/4
      lifetime_stagger: 2m      # default: half the margin
      tls: true
      dashboard_address: 127.0.0.1:0
      n_workers: 0              # scale to this many at start
      scheduler_in_job: false   # SLURM only: run the scheduler as a batch job too
      scheduler_job: {walltime: "7-00:00:00", memory: 2G}
"""

from __future__ import annotations

import shutil
import sys
import uuid
import weakref
from pathlib import Path
from typing import Any

import dask.config
from distributed.deploy import Cluster

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask.deploy.containers import facility_python
from esap_dask.deploy.environment import job_script_prologue
from esap_dask.deploy.facility import Facility, FacilityError
from esap_dask.deploy.options import check_options, keywords
from esap_dask.deploy.tls import new_cluster_security, security_directory
from esap_dask.deploy.walltime import (
    lifetime_arguments,
    parse_walltime,
    renew_after,
    worker_lifetime,
)

__all__ = ["jobqueue_keywords", "open_jobqueue"]

_CLASSES = {
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "htcondor": "HTCondorCluster",
    "lsf": "LSFCluster",
    "slurm": "SLURMCluster",
}
_SLURM_ONLY = ("array", "array_cap", "poll_interval", "max_array_size")
_SCHEDULER_KEYS = ("host", "dashboard_address", "port")
#: Options esap-dask reads itself (the module docstring); the rest go to dask-jobqueue.
_OWN_KEYS = (
    *_SLURM_ONLY,
    *_SCHEDULER_KEYS,
    "n_workers",
    "adapt",
    "tls",
    "tls_directory",
    "lifetime_margin",
    "lifetime_stagger",
    "container",
    "scheduler_in_job",
    "scheduler_job",
)


def _cluster_class(facilitytype: str, array: bool) -> type[Cluster]:
    from esap_dask.deploy.slurm.jobqueue_import import dask_jobqueue

    if facilitytype == "slurm" and array:
        from esap_dask.deploy.slurm.cluster import SLURMArrayCluster

        return SLURMArrayCluster
    return getattr(dask_jobqueue, _CLASSES[facilitytype])


def jobqueue_keywords(facilitytype: str, array: bool = True) -> set[str]:
    """The option names a batch facility takes: esap-dask's and its dask-jobqueue classes'.

    Those of the cluster class and of its job class (and of their dask-jobqueue
    base classes: ``JobQueueCluster`` passes what it does not take to the job).
    """
    cls = _cluster_class(facilitytype, array)  # imports dask-jobqueue the safe way first
    from dask_jobqueue.core import Job, JobQueueCluster

    inits = [
        k.__dict__["__init__"]
        for base, top in ((cls, JobQueueCluster), (getattr(cls, "job_cls", Job), Job))
        for k in base.__mro__
        if issubclass(k, top) and "__init__" in k.__dict__
    ]
    return set(_OWN_KEYS) | keywords(*inits)


def _prologue(opts: dict[str, Any], ftype: str) -> list[str]:
    """The job script's prologue: the worker environment's exports, then the facility's lines.

    The facility's lines are its ``job_script_prologue`` option, else dask-jobqueue's
    configuration, else (as dask-jobqueue does) the deprecated ``env_extra``.
    """
    config = opts.get("config_name") or ftype
    lines = opts.pop("job_script_prologue", None)
    if lines is None:
        lines = dask.config.get(f"jobqueue.{config}.job-script-prologue", None)
    old = opts.pop("env_extra", None)
    if old is None:
        old = dask.config.get(f"jobqueue.{config}.env-extra", None)
    return job_script_prologue(lines or old)


def _scheduler_in_job(facility: Facility, opts: dict[str, Any], job: dict[str, Any]) -> None:
    """Make the cluster run its scheduler as a SLURM job (see :mod:`.batch_scheduler`)."""
    if facility.facilitytype != "slurm":
        raise FacilityError(
            f"facility {facility.name!r}: scheduler_in_job is available on SLURM only"
        )
    from esap_dask.deploy.slurm.batch_scheduler import BatchScheduler

    name = opts.setdefault("job_name", f"esap-{uuid.uuid4().hex[:8]}")
    logs = Path(opts.get("log_directory") or "~/.esap-dask/logs").expanduser() / name
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    opts["scheduler_cls"] = BatchScheduler
    opts["scheduler_options"] = {
        **opts["scheduler_options"],
        "scheduler_file": str(logs / "scheduler.json"),
        "job_name": f"{name}-scheduler",
        "queue": opts.get("queue"),
        "python": opts.get("python") or sys.executable,
        **job,
    }


def open_jobqueue(facility: Facility, options: dict[str, Any]) -> Cluster:
    """Start the batch cluster of ``facility``: array jobs on SLURM, TLS, lifetime, containers.

    Parameters
    ----------
    facility
        A catalog entry of type slurm, pbs, sge, htcondor or lsf.
    options
        The facility's options merged with ``dask.config`` (``esap.facilities.<name>``)
        and the call's overrides; see the module docstring.

    Returns
    -------
    distributed.deploy.Cluster
        Started; scaled to ``n_workers`` if given.

    Examples
    --------
    >>> cluster = esap_dask.open_cluster("slurm-loopback")   # doctest: +SKIP
    >>> cluster.scale(8)  # one sbatch --array=0-7  # doctest: +SKIP
    >>> client = distributed.Client(cluster)  # TLS, the cluster's certificate  # doctest: +SKIP
    """
    ftype = facility.facilitytype
    if ftype not in _CLASSES:
        raise FacilityError(
            f"facility {facility.name!r}: open_jobqueue handles {', '.join(_CLASSES)}, "
            f"not {ftype!r}"
        )
    check_options(
        facility,
        options,
        jobqueue_keywords(ftype, bool(options.get("array", True))),
        "dask-jobqueue's (the cluster's and its job's)",
    )
    opts = dict(options)
    array = bool(opts.pop("array", True))
    if ftype != "slurm" or not array:
        for key in _SLURM_ONLY:
            if opts.pop(key, None) is not None and key != "array":
                raise FacilityError(
                    f"facility {facility.name!r}: option {key!r} needs facilitytype slurm "
                    "with array: true"
                )
    n_workers = int(opts.pop("n_workers", 0) or 0)
    adapt = opts.pop("adapt", None)

    # Scheduler: loopback dashboard unless told otherwise
    scheduler_options = dict(opts.pop("scheduler_options", None) or {})
    for key in _SCHEDULER_KEYS:
        if key in opts:
            scheduler_options[key] = opts.pop(key)
    scheduler_options.setdefault("dashboard_address", "127.0.0.1:0")
    opts["scheduler_options"] = scheduler_options

    # TLS by default, with a per-cluster CA
    tls = opts.pop("tls", True)
    tls_dir = opts.pop("tls_directory", None)
    if tls and opts.get("security") is None:
        opts["security"] = new_cluster_security(Path(tls_dir) if tls_dir else None)
    security = opts.get("security")
    credentials = security_directory(security) if security is not None else None

    # Walltime -> worker lifetime
    margin = opts.pop("lifetime_margin", None)
    stagger = opts.pop("lifetime_stagger", None)
    walltime = opts.get("walltime", dask.config.get(f"jobqueue.{ftype}.walltime", None))
    extra = list(opts.pop("worker_extra_args", None) or [])
    if walltime and "--lifetime" not in extra:
        life, spread = worker_lifetime(parse_walltime(walltime, ftype), margin, stagger)
        extra += lifetime_arguments(life, spread)
        if ftype == "slurm" and array:
            opts.setdefault("renew_after", renew_after(life, spread))
            opts.setdefault("renew_stagger", spread)
    opts["worker_extra_args"] = extra

    # esap-dask's worker environment, exported before the worker starts
    opts["job_script_prologue"] = _prologue(opts, ftype)

    # Containers
    python = facility_python(facility, opts.pop("container", None), credentials)
    if python is not None:
        opts["python"] = python

    if opts.pop("scheduler_in_job", False):
        _scheduler_in_job(facility, opts, dict(opts.pop("scheduler_job", None) or {}))

    cls = _cluster_class(ftype, array)
    try:
        cluster = cls(**opts)
    except TypeError as err:
        raise FacilityError(
            f"facility {facility.name!r}: {err}; check the option names in {facility.path}"
        ) from err
    if credentials is not None and tls_dir is None:  # made for this cluster: goes with it
        weakref.finalize(cluster, shutil.rmtree, credentials, True)
    if n_workers:
        cluster.scale(n_workers)
    if adapt:
        cluster.adapt(**dict(adapt))
    return cluster
