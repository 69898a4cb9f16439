"""Running a run's batches on Dask: submission, progress, killed workers, broken clusters.

:func:`execute` turns the rows a run must process into batches of whole write units
(:func:`make_batches`), submits one task per batch, and collects the small reports as
they come. Batches killed with their worker are retried alone before being blamed; a
cluster that reports its workers can never start (``cluster.error``) stops the run.

Which batches a dead worker had started is asked of the scheduler's record of starts
(:class:`esap_dask.engine.starts.BatchStarts`), because distributed fails every task assigned
to the worker, queued ones too: a batch it had not started is submitted again as it
was (it is no attempt), and only the batches it was running count an attempt, are
retried alone, and are named in the run's notes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from typing import Any

import numpy as np

from esap_dask.deploy.protocol import WorkerJobs, worker_jobs
from esap_dask.engine.handle import cancel_tasks, current_control, drain
from esap_dask.engine.ledger import FAILED, NewRows, Plan, PlannedRow, pack
from esap_dask.engine.observations import MadeWhenRead, RunNumbers
from esap_dask.engine.progress import Progress
from esap_dask.engine.task import (
    TASKS_PER_THREAD,
    Batch,
    BatchReport,
    PackedBatch,
    RunContext,
    SharedContext,
    batch_prefix,
    run_batch,
    tasks_per_thread,
)
from esap_dask.store import StoreLayout, write_rows

__all__ = [
    "MAX_REQUEUES",
    "MAX_TASKS",
    "TASKS_PER_THREAD",
    "batch_starts",
    "execute",
    "gc_paused",
    "make_batches",
    "nthreads",
]

#: Automatic batches (``TASKS_PER_THREAD``, from :mod:`esap_dask.engine.task`): each
#: takes at least 1/(TASKS_PER_THREAD x threads) of the rows left (whole write units), so
#: a run starts with about this many tasks a thread, then shrinks. A run of more than two
#: write units a thread is planned as one share a thread, each task timing its first unit
#: (its probe): tiny work goes on with the share in the same task; other work commits the
#: probe's rows, and the driver sizes the share's other tasks from the probe's time
#: (:func:`esap_dask.engine.task.tasks_per_thread`).
#: Never more tasks than this in one run (scheduler overhead).
MAX_TASKS = 5000
#: A batch lost with a worker before it started is submitted again this many times at
#: most; then it is a suspect like the batches that were running (workers that die
#: before they run anything must not keep a run going forever).
MAX_REQUEUES = 3


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for code that builds 100,000s of tuples.

    Every 700 new container objects start a collection, and the collections of the
    oldest generation walk every object of the process (a driver holding a client, or
    a scheduler, has millions): they cost a run's planning 50-80 ms at 20,000 tiny
    observations. What is built here holds no cycles; collection resumes after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def make_batches(
    rows: Sequence[int] | np.ndarray, unit: int, target: int, parts: int = 0
) -> list[range]:
    """Group positions of sorted ``rows`` into batches of whole write units.

    A batch takes consecutive write units until it holds at least ``target`` rows;
    a write unit is never split between two batches. With ``parts``, a batch holds
    at least ``1/parts`` of the rows not yet batched (guided self-scheduling): the
    batches shrink towards the end of the run, so the last ones, which decide when
    the run ends, are short and the workers finish together. Each batch is a range of
    positions. The loop runs over the write units, not the rows (a loop over the rows
    took 8-12 ms of the driver's time before the first task of 100,000 observations).
    """
    n = len(rows)
    if not n:
        return []
    batches: list[range] = []
    lo = 0
    want = max(target, math.ceil(n / parts)) if parts else target
    for pos in _unit_starts(rows, unit)[1:]:
        if pos - lo >= want:
            batches.append(range(lo, pos))
            lo = pos
            if parts:
                want = max(target, math.ceil((n - pos) / parts))
    batches.append(range(lo, n))
    return batches


def _unit_starts(rows: Sequence[int] | np.ndarray, unit: int) -> list[int]:
    """The positions in sorted ``rows`` where a write unit begins (0 first, if any rows)."""
    if not len(rows):
        return []
    if isinstance(rows, range):
        values = np.arange(rows.start, rows.stop, rows.step, dtype=np.int64)
    else:
        values = np.asarray(rows, dtype=np.int64)
    units = values // max(1, unit)
    return [0, *(np.flatnonzero(units[1:] != units[:-1]) + 1).tolist()]


def _target(n: int) -> int:
    """The smallest automatic batch: no run has more than :data:`MAX_TASKS` tasks."""
    return max(math.ceil(n / MAX_TASKS), 1)


def _batch(index: int, chosen: Sequence[Any]) -> Batch:
    """The batch ``index`` of the planned rows ``chosen`` (sorted by row)."""
    if isinstance(chosen, NewRows):  # new rows: columns as they are, no row objects
        return Batch(
            index=index,
            rows=np.arange(chosen.start, chosen.start + len(chosen), dtype=np.int64),
            observations=_kept(chosen.observations),
            fingerprints=_kept(chosen.fingerprints),
            attempts=[0] * len(chosen),
        )
    return Batch(
        index=index,
        rows=np.asarray([e.row for e in chosen], dtype=np.int64),
        observations=[e.observation for e in chosen],
        fingerprints=[e.fingerprint for e in chosen],
        attempts=[e.attempts for e in chosen],
    )


def _probe_split(rows: Sequence[int], unit: int, threads: int) -> int:
    """How many of ``rows`` the probes take: the first write unit of each thread.

    0 (no probes) when the rows span no more than two write units a thread: then the
    default plan has few tasks anyway.
    """
    starts = _unit_starts(rows, unit)
    return starts[threads] if len(starts) > 2 * threads else 0


def _first_unit(rows: np.ndarray, unit: int) -> int:
    """How many of ``rows`` (sorted) lie in the write unit of the first."""
    units = np.asarray(rows) // max(1, unit)
    return int(np.searchsorted(units, units[0], side="right")) if len(units) else 0


def _measured(report: BatchReport | None) -> tuple[float | None, int]:
    """A probe's own time and its rows, as its report says (None: not measured)."""
    if report is None or report.from_ledger:
        return None, 0
    return report.seconds, report.done + report.failed


def _in_row_order(todo: Sequence[PlannedRow]) -> Sequence[PlannedRow]:
    """``todo`` sorted by row: a list of new rows is already (and is not copied)."""
    return todo if isinstance(todo, NewRows) else sorted(todo, key=attrgetter("row"))


def _kept(values: Sequence[Any]) -> Sequence[Any]:
    """``values`` as a list, unless made when read (run numbers stay numbers until pickled)."""
    if isinstance(values, (list, MadeWhenRead)):
        return values
    return list(values)


def _pick(entries: Sequence[PlannedRow], positions: range) -> Sequence[PlannedRow]:
    """The entries at ``positions`` (consecutive, from :func:`make_batches`)."""
    if isinstance(entries, NewRows):
        return entries[positions[0] : positions[-1] + 1]
    return [entries[p] for p in positions]


def _rows(entries: Sequence[PlannedRow]) -> Sequence[int]:
    return entries.rows if isinstance(entries, NewRows) else [e.row for e in entries]


def nthreads(client: Any) -> int:
    """Worker threads the run can count on: connected ones, or the ones the cluster plans.

    On a batch or grid facility the workers are often still queued when a run starts;
    sizing the layout by the connected ones alone would cut the run into too few tasks.
    """
    connected = {}
    with contextlib.suppress(Exception):
        connected = client.nthreads()
    per_worker = max(1, round(sum(connected.values()) / max(1, len(connected))))
    jobs = worker_jobs(getattr(client, "cluster", None))
    scaling = jobs.scaling() if jobs is not None else None
    if scaling is not None and scaling.adaptive and math.isfinite(scaling.maximum):
        planned = int(scaling.maximum)
    else:
        planned = scaling.planned if scaling is not None else 0
    return max(1, sum(connected.values()), planned * per_worker)


def execute(
    client: Any,
    ctx: RunContext,
    group: Any,
    todo: Plan,
    layout: StoreLayout,
    batch_size: int | None,
    progress: bool | Callable[[str], None] | None,
    *,
    threads: int | None = None,
    dashboard: str | None = None,
    create: Callable[[], Any] | None = None,
) -> list[BatchReport]:
    """Run the batches of ``todo`` on ``client``'s cluster; the reports of those that ended.

    ``create`` makes the run's new store (``group`` is then None): called once the first
    tasks are submitted, so that the workers run their first rows while the store is
    made, and each task waits for it before its first write (:class:`RunContext`'s
    ``store_pending``); before any submission when the scheduler has no
    :class:`~esap_dask.engine.starts.BatchStarts` to tell the tasks.

    ``threads`` (:func:`nthreads`) and ``dashboard`` (the client's ``dashboard_link``) as
    the caller knows them: each is a round trip to the scheduler for a client connected
    by address (3 ms each, twice a run).

    ``progress`` is a bar's switch, or a function that receives progress lines (see
    :class:`esap_dask.engine.progress.Progress`). In a run started with ``wait=False``
    the run's :class:`~esap_dask.engine.handle.RunControl` follows the counts and may
    cancel the run (:func:`_cancel`): the batches that never started stay pending.
    """
    from distributed import as_completed

    with gc_paused():
        entries = _in_row_order(todo.todo)
        rows = _rows(entries)
        n = len(rows)
        threads = threads or nthreads(client)
        probes = 0 if batch_size else _probe_split(rows, layout.unit, threads)
        if batch_size:
            planned = make_batches(rows, layout.unit, batch_size)
        elif probes:  # a share a thread, each timing its first write unit (its probe)
            planned = make_batches(rows, layout.unit, math.ceil(n / threads))
        else:
            planned = make_batches(rows, layout.unit, _target(n), TASKS_PER_THREAD * threads)
        batches = [_batch(i, _pick(entries, b)) for i, b in enumerate(planned)]
        if probes:
            batches = [
                dataclasses.replace(b, probe=_first_unit(b.rows, layout.unit)) for b in batches
            ]
    next_index = len(batches)

    def plan_rest(batch: Batch, report: BatchReport) -> list[Batch]:
        """Batches of the rows a probe left, sized from its measured time."""
        nonlocal next_index
        done = report.done + report.failed
        rest = len(batch.rows) - done
        per = tasks_per_thread(*_measured(report), rest, 1)
        with gc_paused():
            sized = make_batches(batch.rows[done:], layout.unit, _target(rest), per)
        out = [
            batch.part(done + b[0], done + b[-1] + 1, next_index + i) for i, b in enumerate(sized)
        ]
        next_index += len(out)
        return out

    tracked = _track_starts(client)
    if tracked:
        ctx = dataclasses.replace(ctx, track_starts=True)
    if create is not None and not tracked:  # the tasks could not be told: the store first
        group, create = create(), None
    if create is not None:
        ctx = dataclasses.replace(ctx, store_pending=True)
    shared = SharedContext(ctx)  # pickled once, not with every task
    prefix = batch_prefix(ctx.run_id)
    by_key: dict[str, Batch] = {}
    futures: list[Any] = []
    requeues: dict[int, int] = {}  # batches lost with a worker before they started

    def submit_all(bs: Sequence[Batch], alone: bool = False) -> list[Any]:
        """Submit ``bs`` to the scheduler in one message; their futures.

        Submitted one by one, each after the first waited for the client's next send
        (distributed sends a client's messages at most every 10 ms): the second probe
        started 10-15 ms after the first, and so did the second task of the rest when
        both probes ended together.
        """
        if not bs:
            return []
        keys = [
            f"{prefix}{b.index}"
            + ("-alone" if alone else "")
            + (f"-requeue{requeues[b.index]}" if requeues.get(b.index) else "")
            for b in bs
        ]
        # files and other objects as bytes through the scheduler; run numbers as they are
        sent = [b if isinstance(b.observations, RunNumbers) else PackedBatch.of(b) for b in bs]
        out = list(client.map(run_batch, [shared] * len(bs), sent, key=keys, pure=False))
        for b, fut in zip(bs, out, strict=True):
            by_key[fut.key] = b
            futures.append(fut)
        return out

    def submit(b: Batch, alone: bool = False) -> Any:
        return submit_all([b], alone)[0]

    control = current_control()
    cancelled = threading.Event()
    waiting: collections.deque[Batch] = collections.deque()

    def feed(pending: Any) -> None:
        """Submit the waiting batches while fewer than ``threads`` tasks are in flight.

        The rest of a probed run is planned when the first probe ends, while the others
        still run. Submitted at once, the scheduler gave them all to the one idle worker:
        on 105 H.E.S.S. files both batches of the rest ran on one worker, one after the
        other, while the other worker sat idle (1.66-1.70 s a run, against 1.05-1.21 s for
        the same work in batches all submitted at the start; docs/benchmarks/profiles.md).
        Fed as threads free up, each goes to a worker that is free.
        """
        free = threads - len(by_key)
        if cancelled.is_set() or free <= 0 or not waiting:
            return
        for fut in submit_all([waiting.popleft() for _ in range(min(free, len(waiting)))]):
            pending.add(fut)

    def cancel() -> None:
        cancelled.set()
        cancel_tasks(client, list(futures), prefix, tracked)

    if control is None or control.attach(cancel, run_id=ctx.run_id, dashboard=dashboard):
        submit_all(batches)  # all at once: an adaptive cluster scales to what is pending
    else:  # cancelled before anything was submitted
        cancelled.set()
    reports: list[BatchReport] = []
    # A dying worker takes the blame for every task assigned to it. Those it had not
    # started are innocent: submitted again as they were (not an attempt). Those it was
    # running are suspects, retried alone (one suspect at a time); only one that kills
    # its worker again is reported as the culprit.
    suspects: list[Batch] = []
    isolated: set[int] = set()
    alone: int | None = None  # the suspect running alone now
    bar = Progress(
        total=n,
        description=f"{ctx.pipeline.name} → {os.path.basename(ctx.store)}",
        enabled=progress,
        dashboard=dashboard,
        state=control.state if control is not None else None,
    )
    watch = _ClusterWatch(client, futures)
    try:
        if create is not None:
            group = _create_store(client, create, prefix)
        with bar, watch:
            # each report is fetched as soon as its task ends, on the client's loop (the
            # reports of two tasks that ended together were two round trips in a row here,
            # 8.5 ms at the end of a 10,000-observation run)
            pending = as_completed(futures, loop=client.loop, with_results=True, raise_errors=False)
            for ready in pending.batches():  # every task ended by now, at once
                ended: list[tuple[Any, Batch, Any]] = []
                for fut, result in ready:
                    batch = by_key.pop(fut.key)
                    if fut.status == "cancelled":  # aborted: its rows stay pending
                        continue
                    ended.append((fut, batch, result))
                feed(pending)  # the next tasks go out before these reports are read
                for fut, batch, result in ended:
                    report, error = _report_of(fut, result)
                    started: tuple[str, ...] = ()
                    if report is not None and not report.cancelled:
                        done = report.done + report.failed
                        if batch.probe and 0 < done < len(batch.rows):  # the probe stopped
                            waiting.extend(plan_rest(batch, report))
                            batch = batch.part(0, done)
                        report.rows = batch.rows
                    feed(pending)
                    fut.release()
                    if report is not None and report.cancelled:
                        continue  # refused to start after the run's cancel: its rows stay pending
                    if error is not None:  # count the starts the task had before it failed
                        started = _starts(client, fut.key, error, tracked)
                        batch = dataclasses.replace(
                            batch, attempts=[a + len(started) for a in batch.attempts]
                        )
                    killed = type(error).__name__ == "KilledWorker"
                    if killed and cancelled.is_set():
                        continue  # a cancelled run submits nothing more: its rows stay pending
                    if killed and not started and requeues.get(batch.index, 0) < MAX_REQUEUES:
                        requeues[batch.index] = requeues.get(batch.index, 0) + 1
                        pending.add(submit(batch, alone=batch.index == alone))
                        continue
                    if report is not None and len(report.started_on) > 1:
                        todo.notes.append(_restarted_note(batch, report))
                    if batch.index == alone:
                        alone = None
                    if killed and batch.index not in isolated:
                        suspects.append(batch)
                        where = (
                            f"were running on worker {', '.join(started)} when it was lost"
                            if started
                            else f"were lost with {MAX_REQUEUES + 1} workers before they started"
                        )
                        todo.notes.append(
                            f"observations {batch.describe()} {where}; they run again, alone"
                        )
                    else:
                        if report is None:
                            report = _batch_failed(
                                group, ctx, batch, error or RuntimeError("lost"), len(started)
                            )
                        reports.append(report)
                        bar.advance(len(batch.rows), failed=report.failed)
                    if suspects and alone is None and not cancelled.is_set():
                        again = suspects.pop(0)
                        isolated.add(again.index)
                        alone = again.index
                        pending.add(submit(again, alone=True))
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        if control is not None:
            control.detach()
        if cancelled.is_set() and not tracked:
            drain(client, prefix)
        if tracked:  # not waited for: the record of ended tasks matters to nobody now
            _forget(client, prefix)
    if cancelled.is_set():
        left = n - bar.state.done
        todo.notes.append(
            f"the run was cancelled: {left} observation(s) were not processed; they stay "
            "pending for the next run"
        )
    if watch.failure is not None:
        from esap_dask.catalogs.facilities import FacilityError

        raise FacilityError(
            f"the facility's workers cannot run: {watch.failure}; the run stopped, and its "
            "unprocessed observations stay pending for the next run"
        ) from watch.failure
    return reports


def _create_store(client: Any, create: Callable[[], Any], prefix: str) -> Any:
    """``create()``, the run's new store, then tell its tasks (whatever came of it).

    A 10,000-observation run of tiny work spent 22-42 ms of its 0.2-0.28 s creating its
    store before its first task was submitted (``python -m bench.phases``); now the
    workers start their rows meanwhile. A store that could not be made is said made
    too: the waiting tasks then fail to open it, and the run raises the creation's error.
    """
    try:
        return create()
    finally:
        with contextlib.suppress(Exception):
            client.sync(client.scheduler.esap_store_created, prefix=prefix)


def _report_of(fut: Any, result: Any) -> tuple[BatchReport | None, BaseException | None]:
    """The report of an ended task from what ``as_completed`` fetched, or its error."""
    if isinstance(result, BatchReport):
        return result, None
    if fut.status == "error" and isinstance(result, tuple) and len(result) == 3:
        return None, result[1]  # (type, exception, traceback)
    try:  # a result that died with its worker, or anything unexpected: ask for it
        return fut.result(), None
    except Exception as err:
        return None, err


def _forget(client: Any, prefix: str) -> None:
    """Ask the scheduler to drop its record of the run's tasks, without waiting (2-4 ms a
    run, at the end of every run)."""

    async def forget() -> None:
        with contextlib.suppress(Exception):
            await client.scheduler.esap_batch_forget(prefix=prefix)

    with contextlib.suppress(Exception):
        client.loop.add_callback(forget)


#: The schedulers that have :class:`BatchStarts`, by client: the id of the scheduler each
#: client registered it on (registering again costs a round trip, 1.5-2.3 ms a run).
_TRACKED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _track_starts(client: Any) -> bool:
    """Register :class:`BatchStarts` on the scheduler; False when it cannot load it.

    Without the record (a scheduler whose Python lacks esap_dask) a batch lost with its
    worker counts as started there, as every task assigned to a dying worker is blamed.
    Registered once per client and scheduler (a client that reconnects to a new
    scheduler registers it there).
    """
    from esap_dask.engine.starts import BatchStarts

    # the identity the client keeps (scheduler_info() would ask the scheduler again)
    identity = getattr(client, "_scheduler_identity", None)
    scheduler = str(identity.get("id", "")) if isinstance(identity, dict) else ""
    try:
        if scheduler and _TRACKED.get(client) == scheduler:
            return True
    except TypeError:  # a client that cannot be weakly referenced
        pass
    try:
        client.register_plugin(BatchStarts())
    except Exception:
        return False
    with contextlib.suppress(TypeError):
        if scheduler:
            _TRACKED[client] = scheduler
    return True


def _starts(client: Any, key: str, error: BaseException, tracked: bool) -> tuple[str, ...]:
    """The workers that started the failed task ``key``, from the scheduler's record.

    Without the record (not ``tracked``), a task that failed with ``error`` counts as
    started once, on the worker KilledWorker names if it does.
    """
    if not tracked:
        last = getattr(getattr(error, "last_worker", None), "name", None)
        return (str(last if last is not None else "?"),)
    try:
        return batch_starts(client, [key])[key]
    except Exception:
        return ("?",)


def batch_starts(client: Any, keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The workers that started each batch task of ``keys`` so far (by name, in order).

    A task counts as started once it told the scheduler, right before it runs the
    pipeline on its first observation; a key never started maps to ``()``. The record
    of a run is dropped when :func:`execute` returns.
    """
    record = client.sync(client.scheduler.esap_batch_starts, keys=list(keys))
    return {k: tuple(str(w) for w in record.get(k, ())) for k in keys}


def _restarted_note(batch: Batch, report: BatchReport) -> str:
    """What the summary says of a task the scheduler started again after a worker loss."""
    lost = ", ".join(report.started_on[:-1])
    if report.from_ledger:
        return (
            f"observations {batch.describe()} finished on worker {lost}, which was lost "
            f"before their report was fetched; worker {report.started_on[-1]} read the "
            "report back from the ledger (the pipeline did not run again)"
        )
    return (
        f"observations {batch.describe()} were running on worker {lost} when it was lost; "
        f"they ran again on worker {report.started_on[-1]}"
    )


class _ClusterWatch:
    """Cancel a run's tasks when its cluster reports that workers can never start.

    A cluster manager that knows its batch jobs (SLURM) declares
    :class:`~esap_dask.deploy.protocol.WorkerJobs` and sets its ``error`` when a job
    cannot start (unknown partition, impossible memory); without this watch the run
    would wait for workers forever.
    """

    def __init__(self, client: Any, futures: list[Any], interval: float = 1.0) -> None:
        cluster = getattr(client, "cluster", None)
        self.cluster: WorkerJobs | None = cluster if isinstance(cluster, WorkerJobs) else None
        self.client, self.futures, self.interval = client, futures, interval
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            error = self.cluster.error if self.cluster is not None else None
            if error is not None:
                self.failure = error
                self.client.cancel(self.futures)
                return

    def __enter__(self) -> _ClusterWatch:
        if self.cluster is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="esap-watch")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _batch_failed(
    group: Any, ctx: RunContext, batch: Batch, err: BaseException, started: int
) -> BatchReport:
    """Record a batch whose task itself failed (a killed worker, an unwritable store).

    ``batch.attempts`` counts every start already; ``started`` is how many of them the
    failed task made (a task lost before it started has none).
    """
    kind = type(err).__name__
    if kind == "KilledWorker" and not started:
        message = (
            f"the batch {batch.describe()} was assigned to {MAX_REQUEUES + 1} workers that "
            "were all lost before it could start: the facility's workers die (see the run's "
            "notes); it runs again next time"
        )
    elif kind == "KilledWorker":
        message = (
            f"the batch {batch.describe()} killed its worker again and again and was given up: "
            "one of its observations crashes the worker process (memory, segfault); run it "
            "alone to see which"
        )
    else:
        message = f"the batch {batch.describe()} failed as a whole: {kind}: {err}"
    n = len(batch.rows)
    now = time.time()
    columns = {  # whole rows: the columns not given here are written blank
        "status": np.full(n, FAILED, dtype="i1"),
        "source": np.asarray([str(o.value) for o in batch.observations], dtype=object),
        "fingerprint": np.asarray(batch.fingerprints, dtype=object),
        "params": np.full(n, ctx.param_hash, dtype=object),
        "version": np.full(n, ctx.pipeline.version, dtype=object),
        "attempts": np.asarray(batch.attempts, dtype="i4"),
        "error_type": np.full(n, kind, dtype=object),
        "error": np.full(n, message, dtype=object),
        "run": np.full(n, ctx.run_id, dtype=object),
        "end": np.full(n, now),
    }
    with contextlib.suppress(Exception):
        write_rows(group, batch.rows, pack(columns))
    failures = [(o.id, kind, message) for o in batch.observations]
    return BatchReport(batch.index, 0, n, failures, worker="", seconds=0.0)
