"""esap-dask's defaults in Dask's configuration (the user's own configuration wins).

All of them are in one YAML file, ``esap_dask/esap.yaml``, loaded here once (as
dask-jobqueue loads its ``jobqueue.yaml``): the ``esap.*`` keys (catalog paths,
per-facility options, observation-index readers, ``max-workers``, CORSIKA images) and
the worker environment below. Code reads them with ``dask.config.get(key)``, without
inline fall-backs.

``distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_``: distributed starts every
worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which, as a side effect, switches off
glibc's dynamic mmap threshold: every allocation above 128 KiB (a numpy temporary over
a 20,000-event column) becomes a fresh ``mmap`` with its page faults. Measured here, the
dl3-products loop ran 1.65x slower in a worker than in a plain process (1.83 s against
1.11 s for 150 files). A fixed 16 MiB mmap threshold restores the speed; memory is still
returned to the system by the trim threshold.

The setting reaches the nannies this process starts (local clusters) and those that
inherit its Dask configuration (SSH workers, through distributed's
``DASK_INTERNAL_INHERIT_CONFIG``). Nannies that batch systems, grid sites and container
runtimes start do not import esap-dask: :mod:`esap_dask.deploy.environment` sets the
variables of :data:`WORKER_ENVIRONMENT` for them. Batch job scripts (slurm, pbs, sge, lsf,
htcondor) ``export`` them first in ``job_script_prologue``; container commands pass them
with ``--env`` (docker and podman: ``-e``); DIRAC JDLs list them in ``ExecutionEnvironment``,
which DIRAC's JobWrapper sets for the job's executable. A user's own value wins: an
``export`` of the same variable in a batch facility's ``job_script_prologue``, a variable
of a container's ``env``, and ``distributed.nanny.pre-spawn-environ`` in the Dask
configuration the nanny reads (the nanny applies it last, just before the worker starts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

__all__ = ["DEFAULTS", "MMAP_THRESHOLD", "WORKER_ENVIRONMENT"]

#: The contents of ``esap.yaml``: esap-dask's Dask configuration defaults.
DEFAULTS: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "esap.yaml").read_text())
#: Environment variables every esap-dask worker starts with.
WORKER_ENVIRONMENT: dict[str, str] = dict(DEFAULTS["distributed"]["nanny"]["pre-spawn-environ"])
MMAP_THRESHOLD = int(WORKER_ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"])

dask.config.update_defaults(DEFAULTS)

#: distributed's loggers that its own configuration sets apart from ``distributed``, and
#: tornado's, which logs the tracebacks of distributed's failed callbacks.
DISTRIBUTED_LOGGERS = ("distributed", "distributed.client", "distributed.gc", "tornado.application")


def apply_log_level() -> None:
    """Give distributed's loggers the CLI's level (``esap.log-level``), importing it if need be.

    Called where a cluster is opened (:func:`esap_dask.open_cluster`) and by the CLI when
    distributed is already loaded; a no-op unless the CLI set the level. distributed sets
    its loggers from the ``logging`` key once, when imported: the key is set only for
    that import and not left in the configuration, which SSH clusters hand to their remote
    processes (distributed's SSH launcher reads their info lines to learn their addresses,
    and with that key at critical it waits for ever).
    """
    import logging
    import sys

    level = dask.config.get("esap.log-level", None)
    if not level:
        return
    if "distributed" not in sys.modules:
        with dask.config.set({"logging": dict.fromkeys(DISTRIBUTED_LOGGERS, level)}):
            import distributed  # noqa: F401
    for name in DISTRIBUTED_LOGGERS:
        logging.getLogger(name).setLevel(str(level).upper())
