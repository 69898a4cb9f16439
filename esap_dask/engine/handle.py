"""A run that goes on in the background: ``map_observations(..., wait=False)``.

The run executes in a driver thread of the calling process, exactly as a blocking run
would (same client, same store lock, same summary), so the notebook stays free. The
:class:`RunHandle` it returns watches it (:attr:`~RunHandle.progress`,
:meth:`~RunHandle.done`, a live-state HTML repr), waits for it
(:meth:`~RunHandle.result`, which raises the run's error if it failed) or stops it
(:meth:`~RunHandle.cancel`).

How a cancel keeps the store consistent: the driver (:func:`esap_dask.engine.execute.execute`)
asks the scheduler to refuse to start any further batch of the run and cancels the tasks
that have not started; the batches already running finish and commit their rows, and
their reports come back as usual. The run then ends as every run ends (summary,
provenance, store lock released). Every observation is either committed once or still
pending, so the next run over the same store does exactly the rest.

The driver thread and :func:`~esap_dask.engine.execute.execute` meet through
:class:`RunControl`, carried in a context variable of the driver thread, so the mapper's
signature stays that of a blocking run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import html
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from esap_dask.engine.progress import ProgressState
from esap_dask.engine.summary import RunSummary

__all__ = [
    "RunCancelled",
    "RunControl",
    "RunHandle",
    "cancel_tasks",
    "controlled",
    "current_control",
    "drain",
]


class RunCancelled(concurrent.futures.CancelledError):
    """:meth:`RunHandle.result` of a run that was cancelled; ``summary`` says what it did."""

    def __init__(self, summary: RunSummary | None) -> None:
        self.summary = summary
        if summary is None:
            text = "the run was cancelled before it processed anything"
        else:
            pending = summary.processed - summary.succeeded - summary.failed
            text = (
                f"the run {summary.run_id} was cancelled: {summary.succeeded} done, "
                f"{summary.failed} failed, {pending} stay pending in {summary.store} for "
                "the next run (its summary is this error's .summary)"
            )
        super().__init__(text)


class RunControl:
    """What a run's handle and its driver share: counts, the cancel request, the canceller.

    :func:`esap_dask.engine.execute.execute` finds it with :func:`current_control`,
    :meth:`attach`-es the function that cancels its tasks, and records whether a cancel
    interrupted it.
    """

    def __init__(self) -> None:
        self.state = ProgressState()
        self.lock = threading.Lock()
        self.requested = False
        #: a cancel stopped the run before all its observations were processed
        self.interrupted = False
        self.run_id: str | None = None
        self.dashboard: str | None = None
        self._canceller: Callable[[], None] | None = None

    def attach(self, canceller: Callable[[], None], *, run_id: str, dashboard: str | None) -> bool:
        """Register the function that cancels the run's tasks; False when cancelled already."""
        with self.lock:
            self.run_id, self.dashboard = run_id, dashboard or self.dashboard
            if self.requested:
                self.interrupted = True
                return False
            self._canceller = canceller
            return True

    def detach(self) -> None:
        """The run's tasks are over: a cancel from now on has nothing to stop."""
        with self.lock:
            self._canceller = None

    def request_cancel(self) -> None:
        """Ask the run to stop; cancels its tasks when they run (from any thread)."""
        with self.lock:
            if self.requested:
                return
            self.requested = True
            canceller = self._canceller
            if canceller is not None:
                self.interrupted = True
        if canceller is not None:
            canceller()


_CONTROL: contextvars.ContextVar[RunControl | None] = contextvars.ContextVar(
    "esap_run_control", default=None
)


def current_control() -> RunControl | None:
    """The control of the background run this thread drives, if it is one."""
    return _CONTROL.get()


@contextlib.contextmanager
def controlled(control: RunControl) -> Iterator[RunControl]:
    """Runs of this thread, inside the block, answer to ``control`` (as a handle's run does).

    For a caller that drives a blocking run from a thread of its own and may have to
    stop it from another (the job service's ABORT): ``control.request_cancel()`` stops
    the run whether it comes before its tasks are submitted (none is) or after.
    """
    token = _CONTROL.set(control)
    try:
        yield control
    finally:
        _CONTROL.reset(token)


def cancel_tasks(client: Any, futures: list[Any], prefix: str, tracked: bool) -> None:
    """Stop a run: no batch starts any more, those not started are cancelled.

    With the scheduler's record of starts (``tracked``), the batches already started
    finish and commit (their reports come back as usual), and a batch that was about to
    start refuses to (:func:`esap_dask.engine.task.run_batch`). Without it every task is
    cancelled and :func:`drain` waits for the ones still running on a worker.
    """
    started: set[str] | None = None
    if tracked:
        try:
            started = set(client.sync(client.scheduler.esap_batch_cancel, prefix=prefix))
        except Exception:  # a scheduler with an older record: cancel them all
            started = None
    chosen = [f for f in futures if started is None or str(f.key) not in started]
    with contextlib.suppress(Exception):
        client.cancel(chosen)


#: Worker task states of a task that runs, or may still start.
_LIVE = ("waiting", "ready", "constrained", "executing", "long-running", "cancelled", "resumed")


def drain(client: Any, prefix: str, poll: float = 0.25) -> None:
    """Wait until no worker runs, or may start, a task whose key starts with ``prefix``.

    A cancelled task's thread runs to its end on its worker, and would commit its rows
    after the run released the store's lock. Two clean polls in a row are required:
    a cancel reaches the workers over the scheduler's stream, the poll over another.
    """

    def live(dask_worker: Any, prefix: str) -> int:
        return sum(
            1
            for ts in dask_worker.state.tasks.values()
            if str(ts.key).startswith(prefix) and ts.state in _LIVE
        )

    clean = 0
    while clean < 2:
        try:
            counts = client.run(live, prefix=prefix, on_error="return")
        except Exception:  # the cluster is gone: nothing of it writes any more
            return
        busy = sum(c for c in counts.values() if isinstance(c, int))
        clean = clean + 1 if busy == 0 else 0
        time.sleep(poll)


class RunHandle:
    """A run of :func:`~esap_dask.map_observations` going on in the background.

    Returned by ``map_observations(..., wait=False)``; the run started already.

    Examples
    --------
    >>> handle = map_observations("helloworld", "1..1000", "h.zarr", wait=False)  # doctest: +SKIP
    >>> handle.progress.done, handle.progress.rate                               # doctest: +SKIP
    (120, 41.5)
    >>> handle.cancel()            # the rest stays pending for the next run     # doctest: +SKIP
    True
    """

    def __init__(
        self, run: Callable[..., RunSummary], arguments: Mapping[str, Any], *, store: str
    ) -> None:
        self.store = store
        self._control = RunControl()
        self._summary: RunSummary | None = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        client = arguments.get("client")
        if client is None:
            from distributed import default_client

            try:
                client = default_client()
            except ValueError:  # the run opens a cluster of its facility
                client = None
        self._control.dashboard = getattr(client, "dashboard_link", None)
        context = contextvars.copy_context()
        context.run(_CONTROL.set, self._control)
        self._thread = threading.Thread(
            target=context.run,
            args=(self._main, run, dict(arguments)),
            name=f"esap-run-{store}",
            daemon=True,
        )
        self._thread.start()

    def _main(self, run: Callable[..., RunSummary], arguments: dict[str, Any]) -> None:
        try:
            self._summary = run(**arguments)
        except BaseException as err:  # kept for result(): the caller's thread raises it
            self._error = err
        finally:
            self._finished.set()

    @property
    def progress(self) -> ProgressState:
        """A snapshot of the counts: ``total`` (``None`` while planning), ``done``,
        ``failed``, ``rate`` (observations/s), ``eta`` (s), ``elapsed`` (s)."""
        with self._control.lock:
            return dataclasses.replace(self._control.state)

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard of the run's cluster, once known."""
        return self._control.dashboard

    @property
    def run_id(self) -> str | None:
        """The run's id (as in the ledger and the provenance), once its tasks are submitted."""
        return self._control.run_id

    def done(self) -> bool:
        """True when the run has ended: completed, failed or cancelled."""
        return self._finished.is_set()

    def cancelled(self) -> bool:
        """True when a cancel stopped the run before all its observations were processed."""
        return self._control.interrupted

    def result(self, timeout: float | None = None) -> RunSummary:
        """Wait for the run and return its :class:`RunSummary`.

        Raises
        ------
        TimeoutError
            The run has not ended within ``timeout`` seconds (it goes on).
        RunCancelled
            The run was cancelled; its ``summary`` says what was done.
        Exception
            The error that stopped the run (as the blocking call would raise it).
        """
        if not self._finished.wait(timeout):
            raise TimeoutError(
                f"the run into {self.store} has not ended after {timeout} s; it goes on "
                "(call result() again, or cancel())"
            )
        if self._error is not None:
            raise self._error
        if self._control.interrupted:
            raise RunCancelled(self._summary)
        assert self._summary is not None
        return self._summary

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the run; the error that stopped it, or ``None``."""
        self._finished.wait(timeout)
        return self._error

    def cancel(self, timeout: float | None = None) -> bool:
        """Stop the run and wait (up to ``timeout`` s) until it has released the store.

        Tasks not started yet are cancelled and their observations stay pending; batches
        already running finish and commit. Returns True when the cancel reached the run
        before its observations were all submitted, False when its tasks were over.
        """
        if not self.done():
            self._control.request_cancel()
        self._finished.wait(timeout)
        return self.cancelled()

    def _status(self) -> str:
        if not self.done():
            return "cancelling" if self._control.requested else "running"
        if self._error is not None:
            return "error"
        return "cancelled" if self._control.interrupted else "finished"

    def __repr__(self) -> str:
        p = self.progress
        return (
            f"<RunHandle {self._status()}: {p.done}/{p.total if p.total is not None else '?'} "
            f"observations, {p.failed} failed, store {self.store!r}>"
        )

    def _repr_html_(self) -> str:
        p = self.progress
        status = self._status()
        total = "?" if p.total is None else str(p.total)
        bar = (
            f'<progress value="{p.done}" max="{p.total}" style="width:20em"></progress>'
            if p.total
            else ""
        )
        rows = [
            ("status", html.escape(status)),
            ("progress", f"{bar} {p.done}/{total} observations, {p.failed} failed"),
            ("rate", f"{p.rate:.3g} obs/s" if p.done else "–"),
        ]
        if p.eta is not None and not self.done():
            rows.append(("ETA", f"{p.eta:.0f} s"))
        rows.append(("store", f"<code>{html.escape(self.store)}</code>"))
        if self.run_id:
            rows.append(("run", f"<code>{html.escape(self.run_id)}</code>"))
        if self.dashboard_link:
            link = html.escape(self.dashboard_link, quote=True)
            rows.append(("dashboard", f'<a href="{link}" target="_blank">{link}</a>'))
        if self._error is not None:
            message = f"{type(self._error).__name__}: {self._error}"
            rows.append(("error", f"<code>{html.escape(message[:2000])}</code>"))
        body = "".join(
            f'<tr><th style="text-align:left">{k}</th><td style="text-align:left">{v}</td></tr>'
            for k, v in rows
        )
        return f"<div><strong>esap-dask run</strong><table>{body}</table></div>"
