"""A run's progress: a bar in a terminal or a notebook, lines in a log, counts for a handle.

The bar is tqdm's: ``tqdm.std`` on a terminal (stderr), ``tqdm.notebook`` (an ipywidgets
``HBox`` the kernel updates over its comm channel) in Jupyter when ipywidgets is installed
(the ``notebook`` extra), else tqdm's text bar on the cell's stderr with a warning naming the
extra. It counts observations, not tasks, with the observations/s and the ETA tqdm computes,
and the failed ones as a postfix.

Why tqdm, and not what was here or distributed's bar:

- the hand-written rich bar before it needed ipywidgets in Jupyter too, and without it
  showed nothing but a ``UserWarning``; tqdm brings the widget bar, the text bar, the rate
  and the ETA in one well-kept package. It is not lighter to import (``python -X
  importtime``, best of 5 at load 7.5 on 2 cores: ``tqdm.std`` 63 ms, ``tqdm.notebook``
  192 ms, ``rich.progress`` 41 ms), so it is imported only when a bar is shown: runs
  without one (the job service, ``--json``, scripts) import neither;
- ``distributed.diagnostics.progressbar.progress`` counts Dask tasks: a run's tasks are
  batches of unequal size, a batch lost with its worker is submitted again under another
  key, and a task's failed observations are no task failure, so its bar would show
  neither observations nor failures; it also needs ipywidgets in Jupyter.

:class:`ProgressState` holds the counts that the bar shows; a run's handle
(:class:`esap_dask.engine.handle.RunHandle`) reads them while the run goes on. With a
function instead of a bar (the job service's run log) a line such as ``helloworld →
a.zarr: 120/1000 observations (3 failed), 12.3 obs/s, ETA 0:01:11`` is passed to it when
the run starts, at most every :data:`LOG_INTERVAL` seconds, and when it ends.
"""

from __future__ import annotations

import html
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LOG_INTERVAL", "Progress", "ProgressState"]

#: Seconds between two progress lines passed to a log function.
LOG_INTERVAL = 10.0


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (ipykernel's shell), not in a terminal IPython."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except Exception:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _interactive() -> bool:
    return sys.stderr.isatty() or _in_kernel()


def _format_eta(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class ProgressState:
    """Observations finished (``done`` includes ``failed``) out of ``total``, and since when.

    ``total`` is ``None`` until the run knows what it must process.
    """

    total: int | None = None
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    #: when the run's last observation ended (``time.monotonic()``), else ``None``
    ended: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds from the submission of the run's observations to its end, or to now."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Observations finished per second, on average since the start."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the average rate; ``None`` before the first observation ends."""
        if self.total is None or not self.done:
            return None
        return max(0, self.total - self.done) / self.rate if self.rate else None

    def line(self, description: str) -> str:
        """One line for a log: counts, rate and ETA."""
        text = f"{description}: {self.done}/{self.total} observations"
        if self.failed:
            text += f" ({self.failed} failed)"
        if self.done:
            text += f", {self.rate:.3g} obs/s"
        eta = self.eta
        if eta is not None and self.total is not None and self.done < self.total:
            text += f", ETA {_format_eta(eta)}"
        return text


class Progress:
    """The progress of one run: a bar, log lines, or nothing; the counts in :attr:`state`.

    Parameters
    ----------
    total
        Observations the run processes.
    description
        The bar's label (the pipeline and the store).
    enabled
        Show a bar: ``None`` means when interactive (stderr is a terminal, or a Jupyter
        kernel); a function means no bar, progress lines passed to it instead.
    dashboard
        The cluster's dashboard link, shown with the bar.
    state
        Counts to update (a run handle's); default: new ones.
    interval
        Seconds between two lines passed to a log function.
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        enabled: bool | Callable[[str], None] | None = None,
        dashboard: str | None = None,
        state: ProgressState | None = None,
        interval: float = LOG_INTERVAL,
    ) -> None:
        self.log = enabled if callable(enabled) else None
        self.enabled = (
            False if self.log is not None else _interactive() if enabled is None else bool(enabled)
        )
        self.description = description
        self.dashboard = dashboard
        self.interval = interval
        self.state = state if state is not None else ProgressState()
        self.state.total, self.state.started = total, time.monotonic()
        self._bar: Any = None
        self._logged = 0.0
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Observations the run processes."""
        return self.state.total or 0

    @property
    def failed(self) -> int:
        """Observations that failed so far."""
        return self.state.failed

    def _open_bar(self) -> Any:
        kwargs: dict[str, Any] = {"total": self.total, "unit": "obs", "dynamic_ncols": True}
        if _in_kernel():
            try:
                from tqdm.notebook import tqdm as notebook_tqdm

                if self.dashboard:  # the bar's label is text (tqdm escapes it): a link above
                    from IPython.display import HTML, display

                    link = html.escape(self.dashboard, quote=True)
                    display(HTML(f'Dashboard: <a href="{link}" target="_blank">{link}</a>'))
                return notebook_tqdm(desc=self.description, **kwargs)
            except ImportError:
                warnings.warn(
                    "no ipywidgets: the progress bar is text; install the notebook extra "
                    "(pip install 'esap-dask[notebook]') for a widget",
                    stacklevel=4,
                )
        from tqdm.std import tqdm as text_tqdm

        if self.dashboard:
            print(f"Dashboard: {self.dashboard}", file=sys.stderr)
        return text_tqdm(desc=self.description, file=sys.stderr, **kwargs)

    def __enter__(self) -> Progress:
        if self.enabled:
            self._bar = self._open_bar()
        if self.log is not None:
            self._logged = time.monotonic()
            self.log(self.state.line(self.description))
        return self

    def advance(self, n: int, *, failed: int = 0) -> None:
        """Count ``n`` more observations finished, ``failed`` of them failed."""
        with self._lock:
            self.state.done += n
            self.state.failed += failed
        if self._bar is not None:
            if failed:
                self._bar.set_postfix(failed=self.state.failed, refresh=False)
            self._bar.update(n)
        if self.log is not None and time.monotonic() - self._logged >= self.interval:
            self._logged = time.monotonic()
            self.log(self.state.line(self.description))

    def __exit__(self, *exc: object) -> None:
        self.state.ended = time.monotonic()
        if self._bar is not None:
            if self.state.failed or exc[0] is not None:
                self._bar.colour = "red"  # tqdm.notebook: the danger style
            self._bar.close()
        if self.log is not None:
            self.log(self.state.line(self.description))
