"""The environment every esap-dask worker starts with, wherever its nanny runs.

A nanny started by this process reads :data:`esap_dask.config.WORKER_ENVIRONMENT`
from Dask's configuration (``distributed.nanny.pre-spawn-environ``): local
clusters, and SSH workers, which inherit the client's configuration. Nannies
that batch systems, container runtimes and grid sites start run
``python -m distributed.cli.dask_worker`` without esap-dask, so the variables go
into what starts them:

Batch job scripts (slurm, pbs, sge, lsf, htcondor)
    :func:`job_script_prologue`: ``export`` lines first in dask-jobqueue's
    ``job_script_prologue``, before the facility's own prologue lines, so a
    user's ``export`` of the same variable runs later and wins.
Containers (apptainer, singularity, docker, podman)
    :func:`worker_environment`: passed with ``--env``/``-e`` (apptainer's
    ``--cleanenv`` drops the job's environment, docker and podman never pass
    it); the facility's ``container: {env: ...}`` wins.
DIRAC jobs
    :func:`execution_environment`: the JDL's ``ExecutionEnvironment``, which
    DIRAC's JobWrapper sets for the job's executable.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from esap_dask.config import WORKER_ENVIRONMENT

__all__ = ["execution_environment", "job_script_prologue", "worker_environment"]


def worker_environment(env: Mapping[str, Any] | None = None) -> dict[str, str]:
    """:data:`~esap_dask.config.WORKER_ENVIRONMENT` with ``env`` on top (its values win).

    Examples
    --------
    >>> worker_environment({"OMP_NUM_THREADS": 1})
    {'MALLOC_MMAP_THRESHOLD_': '16777216', 'OMP_NUM_THREADS': '1'}
    >>> worker_environment({"MALLOC_MMAP_THRESHOLD_": "65536"})
    {'MALLOC_MMAP_THRESHOLD_': '65536'}
    """
    return {**WORKER_ENVIRONMENT, **{str(k): str(v) for k, v in (env or {}).items()}}


def job_script_prologue(prologue: Iterable[str] | None = None) -> list[str]:
    """dask-jobqueue's ``job_script_prologue``: the worker environment's exports, then ``prologue``.

    The user's lines come last, so an ``export`` of the same variable there wins.

    Examples
    --------
    >>> job_script_prologue(["module load apptainer"])
    ['export MALLOC_MMAP_THRESHOLD_=16777216', 'module load apptainer']
    """
    exports = [f"export {k}={shlex.quote(v)}" for k, v in worker_environment().items()]
    return [*exports, *(prologue or [])]


def execution_environment() -> list[str]:
    """A DIRAC JDL's ``ExecutionEnvironment``: ``NAME=value``, the value URL-quoted.

    DIRAC's JobWrapper URL-unquotes each value and sets it in the environment of
    the job's executable (the format of DIRAC's ``Job.setExecutionEnv``).

    Examples
    --------
    >>> execution_environment()
    ['MALLOC_MMAP_THRESHOLD_=16777216']
    """
    return [f"{k}={quote(v)}" for k, v in worker_environment().items()]
