"""dask-jobqueue, imported without its import-time SIGINT handler.

dask-jobqueue 0.9.0 (the newest release) runs ``signal.signal(SIGINT, lambda *_:
sys.exit())`` when ``dask_jobqueue.runner`` is imported (upstream issues #667 and
#696; fixed on its main branch by moving the handler into the runners, not yet
released). From any thread but the main one that raises ``ValueError: signal only
works in main thread``, so the job service, whose jobs run in worker threads, could
not open a SLURM cluster at all; from the main thread it silently replaces Python's
``KeyboardInterrupt`` with ``sys.exit()``, so Ctrl-C in a notebook or the CLI no
longer interrupts the way the user expects.

esap-dask uses none of dask-jobqueue's runners, so the handler is not wanted: this
module imports dask-jobqueue once with SIGINT's installation skipped and every other
signal call left alone. Every module of esap-dask imports dask-jobqueue from here.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SLURMCluster", "SLURMJob", "dask_jobqueue"]

_lock = threading.Lock()


def _import() -> None:
    with _lock:
        if "dask_jobqueue.runner" in sys.modules:
            return
        original: Callable[..., Any] = signal.signal

        def skip_sigint(signum: Any, handler: Any) -> Any:
            if signum == signal.SIGINT:
                return signal.getsignal(signal.SIGINT)
            return original(signum, handler)

        signal.signal = skip_sigint  # type: ignore[assignment]
        try:
            import dask_jobqueue.runner  # noqa: F401 - the module that installs the handler
        finally:
            signal.signal = original


_import()

import dask_jobqueue  # noqa: E402 - after the import above, which must come first
from dask_jobqueue import SLURMCluster  # noqa: E402
from dask_jobqueue.slurm import SLURMJob  # noqa: E402
