"""One batch of observations, processed on a Dask worker.

A batch covers whole write units of the store (see :mod:`esap_dask.store`):
the worker runs the pipeline on each of its observations, writes the products
of its rows, then their ledger rows, and returns a small :class:`BatchReport`.
Product arrays never travel back to the driver.

A URL observation (``s3://``, ``https://``) reaches the pipeline as a local copy made by
:func:`esap_dask.engine.remote.local_copy` and removed after; its checksum is that of
the bytes read.

An exception in one observation fails that observation only: its products keep
their fill values, its ledger row says what went wrong, and the rest of the
batch is written as usual.

The ledger's ``attempts`` counts the times the pipeline started on an observation, no
more: a task assigned to a worker that died before running it is not an attempt.
Only the worker knows when a task starts, so a task tells the scheduler before it
runs the pipeline (:class:`BatchStarts`, one round trip per batch) and learns how
many times its key started already: a task the scheduler ran again after a worker
loss (``distributed.scheduler.allowed-failures``, or a result that died with its
worker before the driver fetched it) counts every start; the driver asks the same
record whether a batch lost with its worker had started (:mod:`esap_dask.engine.execute`).
A task that finds its rows already committed by its run (its earlier start finished,
and only the result was lost) returns their report from the ledger instead of
running the pipeline again.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin

from esap_dask.engine.ledger import DONE, FAILED, blank, pack, read_columns
from esap_dask.engine.observations import Observation, sha256_file
from esap_dask.engine.remote import local_copy
from esap_dask.pipeline import Pipeline, Schema
from esap_dask.store import crash_point, open_store, write_rows

__all__ = ["Batch", "BatchReport", "BatchStarts", "RunContext", "call_on", "run_batch"]

#: Longest error message and traceback tail kept per observation, in characters.
MAX_MESSAGE, MAX_TRACEBACK = 2000, 4000


@dataclass(frozen=True)
class RunContext:
    """What every batch of one run shares."""

    store: str
    pipeline: Pipeline
    params: Mapping[str, Any]
    param_hash: str
    schema: Schema
    run_id: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    checksums: bool = True
    #: rows of the store's write unit (chunk, or shard when sharding): products are flushed
    #: one unit at a time
    unit: int = 1
    #: tasks report their start to the scheduler's :class:`BatchStarts` (the driver sets
    #: it once the plugin is registered)
    track_starts: bool = False
    #: fsspec options of URL observations by protocol, resolved on the driver (see
    #: :func:`esap_dask.engine.remote.input_options`)
    input_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """Store rows and the observations to process into them (rows sorted ascending).

    ``attempts`` are the starts recorded before this task: by earlier runs, and by
    earlier tasks of this run for the same rows (a suspect retried alone).
    """

    index: int
    rows: np.ndarray
    observations: list[Observation]
    fingerprints: list[str]
    attempts: list[int]

    def describe(self) -> str:
        """``"obs_a … obs_b (n observations)"`` for messages."""
        first, last = self.observations[0].id, self.observations[-1].id
        span = first if first == last else f"{first} … {last}"
        return f"{span} ({len(self.observations)} observation(s))"


@dataclass
class BatchReport:
    """The small record a batch returns: counts, failures, where and how long."""

    index: int
    done: int
    failed: int
    failures: list[tuple[str, str, str]]
    worker: str
    seconds: float
    #: the workers that started this task, in order, this one last: more than one when
    #: the scheduler ran it again after a worker was lost
    started_on: tuple[str, ...] = ()
    #: the rows were committed by an earlier start of this task, whose result was lost:
    #: the report was read back from the ledger and the pipeline did not run again
    from_ledger: bool = False
    #: the task did not start: its run was cancelled (its rows stay pending)
    cancelled: bool = False


def check_input(obs: Observation) -> None:
    """Raise a clear error for a file observation that is missing or not a file."""
    if obs.kind != "file":
        return
    path = obs.value
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file; check the observation list")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, not an observation file")


def call_on(
    function: Any,
    obs: Observation,
    input_options: Mapping[str, Mapping[str, Any]] | None = None,
    **params: Any,
) -> Any:
    """``function(value, **params)``; a URL observation's value is a local copy of it."""
    if obs.kind != "url":
        return function(obs.value, **params)
    with local_copy(obs.value, input_options) as path:
        return function(path, **params)


def _place(schema: Schema, out: Mapping[str, Any], buffers: dict[str, np.ndarray], i: int) -> None:
    if not isinstance(out, Mapping):
        raise TypeError(f"the pipeline returned {type(out).__name__}, not a mapping of products")
    extra = sorted(set(out) - set(buffers))
    if extra:
        raise KeyError(f"the pipeline returned undeclared variable(s): {', '.join(extra)}")
    for var in schema.variables:
        if var.name not in out:
            raise KeyError(f"the pipeline returned no {var.name!r}")
        want = schema.shape(var)
        if var.dtype == "str":
            value = np.asarray(out[var.name], dtype=object)
            if value.shape == ():
                value = np.asarray(str(value.item()), dtype=object)
        else:
            value = np.asarray(out[var.name])
            target = var.numpy_dtype
            if not np.can_cast(value.dtype, target, casting="same_kind"):
                raise TypeError(
                    f"variable {var.name!r}: got dtype {value.dtype}, declared {target}"
                )
        if value.shape != want:
            raise ValueError(f"variable {var.name!r}: got shape {value.shape}, declared {want}")
        buffers[var.name][i] = value


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"pid-{os.getpid()}"


def _process(
    ctx: RunContext,
    obs: Observation,
    buffers: dict[str, np.ndarray],
    i: int,
    ledger: dict[str, np.ndarray],
    k: int,
) -> tuple[str, str, str] | None:
    """Run the pipeline on ``obs`` into row ``i`` of ``buffers`` and row ``k`` of ``ledger``."""
    schema = ctx.schema
    ledger["start"][k] = time.time()
    failure = None
    try:
        check_input(obs)
        if obs.kind == "url":  # the pipeline reads a local copy, removed after
            with local_copy(obs.value, ctx.input_options) as path:
                _place(schema, ctx.pipeline.function(path, **ctx.params), buffers, i)
                if ctx.checksums:
                    ledger["checksum"][k] = sha256_file(path)
        else:
            _place(schema, ctx.pipeline.function(obs.value, **ctx.params), buffers, i)
        ledger["status"][k] = DONE
    except Exception as err:
        for v in schema.variables:
            buffers[v.name][i] = v.fill
        message = (str(err) or repr(err))[:MAX_MESSAGE]
        ledger["status"][k] = FAILED
        ledger["error_type"][k] = type(err).__name__
        ledger["error"][k] = message
        ledger["traceback"][k] = traceback.format_exc()[-MAX_TRACEBACK:]
        failure = (obs.id, type(err).__name__, message)
    if ctx.checksums and obs.kind == "file" and os.path.isfile(obs.value):
        ledger["checksum"][k] = sha256_file(obs.value)
    ledger["end"][k] = time.time()
    return failure


#: The store group of the runs a worker served last: (store, run id) -> group.
_GROUPS: dict[tuple[str, str], Any] = {}
_GROUPS_LOCK = threading.Lock()


def _run_group(ctx: RunContext) -> Any:
    """The store's group for ``ctx``'s run, opened once per worker process and run.

    Array shapes change only between runs (the driver appends before any task starts),
    so the consolidated metadata read by a run's first task on this worker serves the
    run's other tasks here too.
    """
    key = (ctx.store, ctx.run_id)
    with _GROUPS_LOCK:
        group = _GROUPS.get(key)
    if group is None:
        group = open_store(ctx.store, storage_options=ctx.storage_options, consolidated=True)
        with _GROUPS_LOCK:
            while len(_GROUPS) >= 4:  # the oldest runs first
                _GROUPS.pop(next(iter(_GROUPS)))
            _GROUPS[key] = group
    return group


class BatchStarts(SchedulerPlugin):
    """The scheduler's record of the workers that started each batch task, by task key.

    The driver registers it (once per scheduler: it is idempotent); it adds four
    handlers to the scheduler: ``esap_batch_started(key, worker)``, called by a task
    before it runs the pipeline, records the start and returns the workers that started
    ``key``, this one last (none when the run was cancelled: the task must not start);
    ``esap_batch_starts(keys)`` returns the record of ``keys``;
    ``esap_batch_cancel(prefix)`` refuses every later start of the run's keys and
    returns the keys started so far; ``esap_batch_forget(prefix)`` drops the keys of a
    run that ended.
    """

    name = "esap-batch-starts"
    idempotent = True

    def __init__(self) -> None:
        self.starts: dict[str, list[str]] = {}
        self.cancelled: set[str] = set()

    async def start(self, scheduler: Any) -> None:
        """Add the handlers to ``scheduler``."""
        scheduler.handlers["esap_batch_started"] = self.started
        scheduler.handlers["esap_batch_starts"] = self.lookup
        scheduler.handlers["esap_batch_forget"] = self.forget
        scheduler.handlers["esap_batch_cancel"] = self.cancel

    def started(self, key: str, worker: str) -> list[str]:
        """Record that ``worker`` starts ``key``; the workers that started it so far.

        None (an empty list) when the run of ``key`` was cancelled: the task must not start.
        """
        if any(key.startswith(prefix) for prefix in self.cancelled):
            return []
        self.starts.setdefault(key, []).append(worker)
        return list(self.starts[key])

    def lookup(self, keys: list[str]) -> dict[str, list[str]]:
        """The workers that started each of ``keys`` (none for a key never started)."""
        return {k: list(self.starts.get(k, ())) for k in keys}

    def cancel(self, prefix: str) -> list[str]:
        """Refuse every later start of a key starting with ``prefix``; the keys started."""
        self.cancelled.add(prefix)
        return [k for k in self.starts if k.startswith(prefix)]

    def forget(self, prefix: str) -> int:
        """Drop the record of every key starting with ``prefix``; how many were dropped."""
        self.cancelled.discard(prefix)
        gone = [k for k in self.starts if k.startswith(prefix)]
        for k in gone:
            del self.starts[k]
        return len(gone)


def _record_start(ctx: RunContext, worker: str) -> tuple[str, ...]:
    """Tell the scheduler that this task starts; the workers that started it, this one last.

    Outside a run that tracks starts (or outside a Dask worker) the task counts as
    started once, here. Empty when the run was cancelled: the task must not start.
    """
    if not ctx.track_starts:
        return (worker,)
    try:
        from distributed import get_worker
        from distributed.utils import sync

        w = get_worker()
        key = str(w.get_current_task())
        started = sync(w.loop, w.scheduler.esap_batch_started, key=key, worker=worker)
    except Exception:  # no worker, or no record on the scheduler: one start, this one
        return (worker,)
    return tuple(str(s) for s in started)


#: Ledger columns read back to rebuild the report of a batch its run already committed.
_COMMITTED = ("run", "fingerprint", "status", "worker", "error_type", "error")


def _committed_report(
    group: Any, ctx: RunContext, batch: Batch, started_on: tuple[str, ...]
) -> BatchReport | None:
    """The report of ``batch`` read back from its ledger rows if this run committed them.

    A task the scheduler runs again because its result died with its worker (the
    driver had not fetched it yet) finds its rows committed: products first, then the
    ledger rows, all of them with this run's id and the batch's fingerprints.
    """
    rows = np.asarray(batch.rows)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    cols = {
        name: values[rows - lo]
        for name, values in read_columns(group, _COMMITTED, slice(lo, hi)).items()
    }
    status = cols["status"]
    if not (
        (cols["run"] == ctx.run_id).all()
        and (cols["fingerprint"] == np.asarray(batch.fingerprints, dtype=object)).all()
        and np.isin(status, (DONE, FAILED)).all()
    ):
        return None
    failures = [
        (o.id, str(cols["error_type"][k]), str(cols["error"][k]))
        for k, o in enumerate(batch.observations)
        if status[k] == FAILED
    ]
    return BatchReport(
        index=batch.index,
        done=int((status == DONE).sum()),
        failed=len(failures),
        failures=failures,
        worker=str(cols["worker"][0]),
        seconds=0.0,
        started_on=started_on,
        from_ledger=True,
    )


def run_batch(ctx: RunContext, batch: Batch) -> BatchReport:
    """Process ``batch`` and write its rows into ``ctx.store``; return its report.

    Products are written one write unit (``ctx.unit`` rows of the store) at a time, as
    soon as its observations are done, so a worker holds at most one unit of products;
    the ledger rows of the whole batch are written last. The ledger's ``attempts`` adds the
    starts of this task (usually one) to ``batch.attempts``; a task started again after
    its run committed its rows returns their report without running the pipeline.
    """
    t0 = time.perf_counter()
    n = len(batch.rows)
    schema = ctx.schema
    group = _run_group(ctx)
    worker = _worker_name()
    started_on = _record_start(ctx, worker)
    if not started_on:  # the run was cancelled before this task started
        return BatchReport(batch.index, 0, 0, [], worker, 0.0, cancelled=True)
    if len(started_on) > 1:
        committed = _committed_report(group, ctx, batch, started_on)
        if committed is not None:
            return committed
    ledger = blank(n)
    failures: list[tuple[str, str, str]] = []
    units = np.asarray(batch.rows) // max(1, ctx.unit)
    bounds = [*np.flatnonzero(np.diff(units)).tolist(), n - 1]
    first = 0
    for last in bounds:  # positions first..last share one write unit
        size = last - first + 1
        buffers = {  # every row is assigned below: a product or its fill value
            v.name: np.empty((size, *schema.shape(v)), dtype=v.numpy_dtype)
            for v in schema.variables
        }
        for i in range(size):
            failure = _process(ctx, batch.observations[first + i], buffers, i, ledger, first + i)
            if failure:
                failures.append(failure)
        write_rows(group, batch.rows[first : last + 1], buffers)
        first = last + 1
    crash_point("products")  # test hook (ESAP_DASK_CRASH_AT), a no-op when unset
    ledger["source"][:] = [str(o.value) for o in batch.observations]
    ledger["fingerprint"][:] = batch.fingerprints
    ledger["params"][:] = ctx.param_hash
    ledger["version"][:] = ctx.pipeline.version
    ledger["attempts"][:] = np.asarray(batch.attempts) + len(started_on)
    ledger["worker"][:] = worker
    ledger["run"][:] = ctx.run_id
    write_rows(group, batch.rows, pack(ledger))  # the commit point: after every product
    return BatchReport(
        index=batch.index,
        done=int((ledger["status"] == DONE).sum()),
        failed=len(failures),
        failures=failures,
        worker=worker,
        seconds=time.perf_counter() - t0,
        started_on=started_on,
    )
