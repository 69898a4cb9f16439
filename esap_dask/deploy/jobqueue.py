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
    the batch system kills their job. On SLURM the cluster renews workers ahead
    of that (:func:`renew_after`): it submits a successor, and retires the old
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
from dask.utils import parse_timedelta
from distributed.deploy import Cluster

from esap_dask.deploy.containers import facility_python
from esap_dask.deploy.environment import job_script_prologue
from esap_dask.deploy.facility import Facility, FacilityError
from esap_dask.deploy.options import check_options, keywords
from esap_dask.deploy.tls import new_cluster_security, security_directory

__all__ = [
    "jobqueue_keywords",
    "lifetime_arguments",
    "open_jobqueue",
    "parse_walltime",
    "renew_after",
    "worker_lifetime",
]

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


def parse_walltime(walltime: str | int | float, facilitytype: str = "slurm") -> float:
    """A batch walltime in seconds.

    Parameters
    ----------
    walltime
        SLURM: ``minutes``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``;
        PBS/SGE: ``HH:MM:SS``; LSF: ``HH:MM``; or a Dask duration such as ``"90m"``.
    facilitytype
        Decides how a two-field ``A:B`` value reads (LSF: hours:minutes, else minutes:seconds).

    Examples
    --------
    >>> parse_walltime("01:30:00")
    5400.0
    >>> parse_walltime("1-00:00")
    86400.0
    >>> parse_walltime("00:30", "lsf")
    1800.0
    """
    if isinstance(walltime, int | float):
        return float(walltime) * 60.0
    text = str(walltime).strip()
    days = 0.0
    if "-" in text:
        d, text = text.split("-", 1)
        days = float(d)
        parts = [float(p) for p in text.split(":")] + [0.0] * 2
        return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    if not any(c.isalpha() for c in text):
        parts = [float(p) for p in text.split(":")]
        if len(parts) == 1:
            return parts[0] * 60.0
        if len(parts) == 2:
            a, b = parts
            return a * 3600 + b * 60 if facilitytype == "lsf" else a * 60 + b
        h, m, s = parts[-3:]
        return h * 3600 + m * 60 + s
    seconds = parse_timedelta(text)
    assert seconds is not None
    return float(seconds)


def worker_lifetime(
    walltime_s: float, margin: str | float | None = None, stagger: str | float | None = None
) -> tuple[float, float]:
    """``(lifetime, stagger)`` in seconds for workers of jobs with this walltime.

    A worker lives ``walltime − margin`` ± ``stagger`` seconds, so the workers of
    one array do not all leave at once and each has ``margin/2`` at least to hand
    its data over before the batch system's kill. The default margin is 10% of the
    walltime, within [1 min, 10 min] and at most a quarter of the walltime; the
    default stagger is half the margin.
    """
    if margin is None:
        m = min(max(0.1 * walltime_s, 60.0), 600.0, walltime_s / 4)
    else:
        m = float(parse_timedelta(margin) or 0)
    if not 0 < m < walltime_s:
        raise FacilityError(
            f"lifetime_margin {margin!r} must be shorter than the walltime ({walltime_s:.0f} s)"
        )
    s = m / 2 if stagger is None else float(parse_timedelta(stagger) or 0)
    return walltime_s - m, min(s, m / 2, walltime_s - m)


def lifetime_arguments(lifetime: float, stagger: float) -> list[str]:
    """``dask worker`` options for a :func:`worker_lifetime`.

    Examples
    --------
    >>> lifetime_arguments(*worker_lifetime(3600))
    ['--lifetime', '3240s', '--lifetime-stagger', '180s']
    >>> lifetime_arguments(*worker_lifetime(60, margin="20s"))
    ['--lifetime', '40s', '--lifetime-stagger', '10s']
    """
    return ["--lifetime", f"{lifetime:.0f}s", "--lifetime-stagger", f"{stagger:.0f}s"]


def renew_after(lifetime: float, stagger: float) -> float:
    """When the cluster starts a worker's successor: early enough that it connects in time.

    The successor is submitted a third of the earliest lifetime (at most 2 min)
    before the worker could leave by itself; the cluster spreads renewals over a
    further ``stagger`` seconds earlier.

    Examples
    --------
    >>> renew_after(3240, 180)
    2940.0
    """
    earliest = lifetime - stagger
    return earliest - min(120.0, earliest / 3)


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
    >>> cluster = esap_dask.open_cluster("slurm")   # doctest: +SKIP
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
