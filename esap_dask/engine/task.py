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
runs the pipeline (:class:`~esap_dask.engine.starts.BatchStarts`, one round trip per
batch) and learns how many times its key started already: a task the scheduler ran
again after a worker loss (``distributed.scheduler.allowed-failures``, or a result that
died with its worker before the driver fetched it) counts every start; the driver asks the same
record whether a batch lost with its worker had started (:mod:`esap_dask.engine.execute`).
A task that finds its rows already committed by its run (its earlier start finished,
and only the result was lost) returns their report from the ledger instead of
running the pipeline again.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np
import zarr

from esap_dask.engine.inputs import EXPECTED, open_checked, stat_fingerprint
from esap_dask.engine.ledger import DONE, FAILED, blank, pack, read_columns
from esap_dask.engine.ledger_layout import buffer_dtype
from esap_dask.engine.observations import (
    Observation,
    RunNumbers,
    TakenByWorkers,
    ValueFingerprints,
    sha256_fd,
    sha256_file,
)
from esap_dask.engine.remote import local_copy
from esap_dask.pipeline import Pipeline, Schema
from esap_dask.store import LEDGER_GROUP, crash_point, open_store, write_rows

__all__ = [
    "Batch",
    "BatchReport",
    "PackedBatch",
    "RunContext",
    "SharedContext",
    "call_on",
    "run_batch",
]


def __getattr__(name: str) -> Any:
    if name == "BatchStarts":  # a scheduler plugin: its module imports distributed
        from esap_dask.engine.starts import BatchStarts

        return BatchStarts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Longest error message and traceback tail kept per observation, in characters.
MAX_MESSAGE, MAX_TRACEBACK = 2000, 4000

T = TypeVar("T")


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
    #: where each task renders the provenance of its inputs once it committed them
    #: (:func:`esap_dask.engine.provenance.write_part`); None: the driver renders them all
    provenance_parts: str | None = None
    #: the store is being created while the tasks start (a new store, with
    #: :class:`BatchStarts` on the scheduler): a task runs its first rows, then waits for
    #: the store (:func:`_store_opener`) before it opens it
    store_pending: bool = False


@dataclass(frozen=True)
class Batch:
    """Store rows and the observations to process into them (rows sorted ascending).

    ``attempts`` are the starts recorded before this task: by earlier runs, and by
    earlier tasks of this run for the same rows (a suspect retried alone).
    """

    index: int
    rows: np.ndarray
    observations: Sequence[Observation]
    fingerprints: Sequence[str]
    attempts: list[int]
    #: the first rows, a write unit, that time the work (0: none): when the rest of the
    #: batch would take longer than a tiny task (:func:`tasks_per_thread`), the task
    #: commits these rows only and its report says so; the driver plans the others
    probe: int = 0

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        attempts = np.asarray(self.attempts, dtype=np.int64)
        obs, fps, probe = self.observations, self.fingerprints, self.probe
        if isinstance(obs, RunNumbers) and isinstance(fps, ValueFingerprints):
            # the numbers alone: the worker makes the ids and fingerprints of its rows, and
            # the rows and attempts of new observations (consecutive, none) from their count
            rows, n = self.rows, len(self.rows)
            if n and int(rows[-1]) - int(rows[0]) == n - 1 and not attempts.any():
                return _new_batch_of_numbers, (self.index, int(rows[0]), obs.values, probe)
            return _batch_of_numbers, (self.index, rows, obs.values, attempts, probe)
        # by column: a list of 1,000s of named tuples pickles 5x slower than its columns
        columns = tuple(map(list, zip(*obs, strict=True)))
        # fingerprints the tasks take: their kind only (TakenByWorkers)
        sent = type(fps) if isinstance(fps, TakenByWorkers) else list(fps)
        return _batch_of_columns, (self.index, self.rows, columns, sent, attempts, probe)

    def part(self, lo: int, hi: int, index: int | None = None) -> Batch:
        """Positions ``lo`` .. ``hi - 1`` of this batch (no probe), as batch ``index``."""
        return Batch(
            self.index if index is None else index,
            self.rows[lo:hi],
            self.observations[lo:hi],
            self.fingerprints[lo:hi],
            list(self.attempts[lo:hi]),
        )

    def describe(self) -> str:
        """``"obs_a … obs_b (n observations)"`` for messages."""
        first, last = self.observations[0].id, self.observations[-1].id
        span = first if first == last else f"{first} … {last}"
        return f"{span} ({len(self.observations)} observation(s))"


def _batch_of_columns(
    index: int,
    rows: np.ndarray,
    columns: tuple[list[Any], ...],
    fps: list[str] | type[TakenByWorkers],
    att: np.ndarray,
    probe: int = 0,
) -> Batch:
    observations = list(map(Observation._make, zip(*columns, strict=True))) if columns else []
    taken = fps(observations) if isinstance(fps, type) else fps
    return Batch(index, rows, observations, taken, att.tolist(), probe)


def _batch_of_numbers(
    index: int,
    rows: np.ndarray,
    numbers: range | tuple[int, ...],
    att: np.ndarray,
    probe: int = 0,
) -> Batch:
    fps = ValueFingerprints(numbers)
    return Batch(index, rows, RunNumbers(numbers), fps, att.tolist(), probe)


def _new_batch_of_numbers(
    index: int, first: int, numbers: range | tuple[int, ...], probe: int = 0
) -> Batch:
    n = len(numbers)
    rows = np.arange(first, first + n, dtype=np.int64)
    return Batch(index, rows, RunNumbers(numbers), ValueFingerprints(numbers), [0] * n, probe)


class PackedBatch:
    """A :class:`Batch` pickled once by the driver and carried through the scheduler as bytes.

    distributed pickles a submitted graph whole; the scheduler unpickles it and pickles
    each task again for its worker. A batch of 5,000 files took 2.8 ms to pickle and 3.5
    ms to unpickle (430 kB), four times on its way, in the scheduler's and the driver's
    busiest moments (docs/benchmarks/profiles.md, session 15). Packed, the scheduler
    holds bytes, and the task unpickles its batch where it runs (:meth:`unpack`): the
    first task of 10,000 tiny files started 25-31 ms after its submission against 141-144
    (``python -m bench.timeline --case tiny-files``, the scheduler in the driver's process).
    Batches of run numbers travel as they are (:meth:`Batch.__reduce__` sends their range):
    packed, 10,000 tiny values took 1.14x the time through a scheduler of its own process
    (``python -m bench.ab``, 18 runs each; the cause was not found).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def of(cls, batch: Batch) -> PackedBatch:
        import pickle

        return cls(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))

    def unpack(self) -> Batch:
        import pickle

        batch: Batch = pickle.loads(self.data)
        return batch

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return PackedBatch, (self.data,)


#: A task should take at least this long: below it, the scheduler's round trips and a
#: batch's fixed costs (its writes, its start record) dominate.
MIN_TASK_SECONDS = 0.5
#: Tasks per worker thread when the work is not tiny (each then takes its share of the
#: run in this many pieces, fed as threads free up).
TASKS_PER_THREAD = 4


def tasks_per_thread(seconds: float | None, rows: int, rest: int, threads: int) -> int:
    """Tasks a thread gets for the ``rest`` rows, from a probe's time for its ``rows``.

    Work whose share per thread is below :data:`MIN_TASK_SECONDS` per task gets fewer,
    larger tasks (one a thread for tiny work); work that is not tiny, or not measured (the
    probe failed: ``seconds`` is None), gets :data:`TASKS_PER_THREAD`, as the default plan.
    The count never falls as ``seconds`` grows.
    """
    if seconds is None or not rows or seconds <= 0:
        return TASKS_PER_THREAD
    share = seconds / rows * rest / threads
    return max(1, min(TASKS_PER_THREAD, int(share / MIN_TASK_SECONDS)))


class SharedContext:
    """A :class:`RunContext` pickled once by the driver, unpickled once per worker process.

    Every batch task of a run takes the same context; pickled with each task it cost the
    driver about 0.1 s of a 10,000-observation run (cloudpickle of the pipeline, its
    function and schema, see docs/benchmarks/profiles.md). This wrapper carries the
    bytes, and the worker unpickles them to the same :class:`RunContext` object for every
    task of the run (:func:`_shared_context`), which also lets a worker keep per-run state.
    """

    def __init__(self, ctx: RunContext) -> None:
        import hashlib

        import cloudpickle

        self.ctx = ctx
        self.data = cloudpickle.dumps(ctx)
        self.key = f"{ctx.run_id}-{hashlib.sha1(self.data).hexdigest()}"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _shared_context, (self.key, self.data)


#: Contexts unpickled by this process, by :attr:`SharedContext.key` (the newest few runs).
_CONTEXTS: dict[str, RunContext] = {}


def _shared_context(key: str, data: bytes) -> RunContext:
    import pickle

    with _GROUPS_LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is None:
            while len(_CONTEXTS) >= 4:  # the oldest runs first
                _CONTEXTS.pop(next(iter(_CONTEXTS)))
            ctx = _CONTEXTS[key] = pickle.loads(data)
    return ctx


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
    #: bytes of the entities and usages the task rendered for the run's provenance
    #: (:func:`esap_dask.engine.provenance.write_part`); None when it wrote none
    part: tuple[int, int] | None = None
    #: the batch's store rows, set by the driver when the report arrives
    rows: np.ndarray | None = None


def open_input(obs: Observation, checksum: bool = False) -> tuple[str | None, str | None]:
    """Raise a clear error for a file observation that is missing or not a file.

    Returns the file's checksum and its ``<size>-<mtime_ns>`` fingerprint (both None for
    other observations). With ``checksum``, the SHA-256 of a regular file's content
    (hex), read through the descriptor the check opened: one ``open`` and ``fstat`` serve
    the check, the fingerprint and the checksum (a ``stat``, then a Python file object for
    the checksum, took 13.2 µs a 100-byte file against 7.1; ``python -m bench.checksums``).
    An unreadable file raises here, so its observation fails alone (the checksum read
    after the pipeline failed its whole batch). Opened without blocking
    (:func:`~esap_dask.engine.inputs.open_checked`): a FIFO named as an observation
    is not waited on.
    """
    if obs.kind != "file":
        return None, None
    fd, st = open_checked(obs.value)
    try:
        taken = stat_fingerprint(st)  # what observations.fingerprint says, from the fd
        if not (checksum and stat.S_ISREG(st.st_mode)):
            return None, taken
        return sha256_fd(fd, st.st_size), taken
    finally:
        os.close(fd)


class _Slot(NamedTuple):
    """What :func:`_place` checks of one variable, computed once per schema."""

    name: str
    shape: tuple[int, ...]
    text: bool  # a "str" variable
    dtype: np.dtype[Any]
    fill: Any


#: Validation plans of the schemas this process met: (names, slots) by ``id(schema)``
#: (the schema is kept in the value, so its id is not reused while it is here).
_SLOTS: dict[int, tuple[Schema, frozenset[str], tuple[_Slot, ...]]] = {}
#: ``np.can_cast(got, declared, "same_kind")`` by (got, declared).
_CASTS: dict[tuple[np.dtype[Any], np.dtype[Any]], bool] = {}
#: Text of any element type, as numpy writes it (``str()`` of each): a text product that is
#: an array is made text with it, then stored as Python strings (:data:`buffer_dtype`).
_STRINGS = np.dtypes.StringDType()


def _slots(schema: Schema) -> tuple[frozenset[str], tuple[_Slot, ...]]:
    """The names and per-variable checks of ``schema``, computed once per schema object.

    ``Schema.shape`` rebuilds the dimension sizes on every call; validating each variable
    of each observation with it was 28% of a worker's time at 10,000 tiny observations
    (docs/benchmarks/profiles.md).
    """
    found = _SLOTS.get(id(schema))
    if found is None or found[0] is not schema:
        sizes = schema.sizes
        slots = tuple(
            _Slot(
                v.name,
                tuple(sizes[d] for d in v.dims),
                v.dtype == "str",
                buffer_dtype(v),  # object for text: Python strings, encoded as they are
                v.fill,
            )
            for v in schema.variables
        )
        if len(_SLOTS) >= 16:
            _SLOTS.clear()
        found = _SLOTS[id(schema)] = (schema, frozenset(s.name for s in slots), slots)
    return found[1], found[2]


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


def _check_products(names: frozenset[str], slots: Sequence[_Slot], out: Any) -> None:
    """Raise the error of a pipeline output that is not a mapping of the declared products."""
    if not isinstance(out, Mapping):
        raise TypeError(f"the pipeline returned {type(out).__name__}, not a mapping of products")
    if out.keys() != names:
        extra = sorted(set(out) - names)
        if extra:
            raise KeyError(f"the pipeline returned undeclared variable(s): {', '.join(extra)}")
        missing = next(s.name for s in slots if s.name not in out)
        raise KeyError(f"the pipeline returned no {missing!r}")


def _put(slot: _Slot, value: Any, buffer: np.ndarray, i: int) -> None:
    """Check ``value`` against ``slot`` (dtype kind, shape) and write it into ``buffer[i]``."""
    name = slot.name
    if slot.text:
        if type(value) is str and not slot.shape:  # the common case: no numpy round trip
            buffer[i] = value
            return
        value = np.asarray(value, dtype=object)
        if value.shape == () == slot.shape:  # an object buffer takes the text, not the array
            buffer[i] = str(value.item())
            return
        if value.shape == slot.shape:  # each element as text, as numpy's str() gives it
            value = value.astype(_STRINGS).astype(object)
    else:
        kind = slot.dtype.kind
        if not slot.shape and (
            (type(value) is int and kind in "iuf") or (type(value) is float and kind in "fc")
        ):  # a Python scalar of the declared kind: numpy checks its range on assignment
            buffer[i] = value
            return
        value = np.asarray(value)
        key = (value.dtype, slot.dtype)
        castable = _CASTS.get(key)
        if castable is None:
            castable = _CASTS[key] = bool(np.can_cast(*key, casting="same_kind"))
        if not castable:
            raise TypeError(f"variable {name!r}: got dtype {value.dtype}, declared {slot.dtype}")
    if value.shape != slot.shape:
        raise ValueError(f"variable {name!r}: got shape {value.shape}, declared {slot.shape}")
    buffer[i] = value


def _place(schema: Schema, out: Mapping[str, Any], buffers: dict[str, np.ndarray], i: int) -> None:
    """Check the pipeline's output ``out`` against ``schema`` and write it into row ``i``."""
    names, slots = _slots(schema)
    if type(out) is not dict or out.keys() != names:
        _check_products(names, slots, out)
    for slot in slots:
        _put(slot, out[slot.name], buffers[slot.name], i)


#: Python types written as they are, a column at a time, by dtype kind (see :func:`_put`).
_SCALARS: dict[str, frozenset[type]] = {
    "i": frozenset({int}),
    "u": frozenset({int}),
    "f": frozenset({int, float}),
    "c": frozenset({float}),
}


def _place_block(
    slots: Sequence[_Slot],
    outs: Sequence[Any],
    buffers: dict[str, np.ndarray],
    lo: int,
    failed: dict[int, tuple[str, str, str]],
) -> None:
    """Write the checked outputs ``outs`` (of rows ``lo``, ``lo + 1``, ...) a column at a time.

    ``outs[j]`` is a mapping with exactly the declared products (checked by the caller)
    unless row ``lo + j`` is in ``failed``. A column of plain ``str`` for a text scalar, or of
    Python numbers of the declared kind for a numeric scalar, is assigned in one numpy
    call (numpy checks each number's range as it does one at a time); any other column,
    or one that numpy refuses, is written row by row through :func:`_put`, whose error
    fails its row alone (added to ``failed``, as :func:`_caught` gives it).
    """
    rows = [j for j in range(len(outs)) if lo + j not in failed] if failed else None
    index: Any = slice(lo, lo + len(outs)) if rows is None else [lo + j for j in rows]
    good = outs if rows is None else [outs[j] for j in rows]
    for slot in slots:
        name, buffer = slot.name, buffers[slot.name]
        if not slot.shape and good:
            column = [o[name] for o in good]
            allowed = frozenset({str}) if slot.text else _SCALARS.get(slot.dtype.kind)
            if allowed is not None and set(map(type, column)) <= allowed:
                try:
                    buffer[index] = column
                    continue
                except (OverflowError, ValueError, TypeError):
                    pass  # row by row below: the row that numpy refuses fails alone
        for j in range(len(outs)) if rows is None else rows:
            if lo + j in failed:  # failed on an earlier product: not written
                continue
            try:
                _put(slot, outs[j][name], buffer, lo + j)
            except Exception as err:
                failed[lo + j] = _caught(err)


def _caught(err: BaseException) -> tuple[str, str, str]:
    """The ledger's error type, message and traceback of ``err``, being handled now."""
    message = (str(err) or repr(err))[:MAX_MESSAGE]
    return type(err).__name__, message, traceback.format_exc()[-MAX_TRACEBACK:]


def _fail_row(
    slots: Sequence[_Slot],
    buffers: dict[str, np.ndarray],
    i: int,
    ledger: dict[str, np.ndarray],
    k: int,
    caught: tuple[str, str, str],
) -> tuple[str, str]:
    """Row ``i`` of ``buffers`` back to its fill values and row ``k`` of ``ledger`` failed
    with ``caught`` (:func:`_caught`); its error type and message."""
    for slot in slots:
        buffers[slot.name][i] = slot.fill
    error_type, message, ledger["traceback"][k] = caught
    ledger["status"][k] = FAILED
    ledger["error_type"][k], ledger["error"][k] = error_type, message
    return error_type, message


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
    take: type[TakenByWorkers] | None = None,
) -> tuple[str, str, str] | None:
    """Run the pipeline on ``obs`` into row ``i`` of ``buffers`` and row ``k`` of ``ledger``.

    ``take``: the kind of :class:`~esap_dask.engine.observations.TakenByWorkers` when the
    task fingerprints its inputs, from the descriptor it checks and hashes the file through.
    """
    schema = ctx.schema
    ledger["start"][k] = time.time()
    failure = None
    try:
        checksum, taken = open_input(obs, ctx.checksums)
        if checksum is not None:
            ledger["checksum"][k] = checksum
        if take is not None and (fp := take.taken(checksum, taken)) is not None:
            ledger["fingerprint"][k] = fp  # the task fingerprints its inputs
        if obs.kind == "url":  # the pipeline reads a local copy, removed after
            with local_copy(obs.value, ctx.input_options) as path:
                _place(schema, ctx.pipeline.function(path, **ctx.params), buffers, i)
                if ctx.checksums:
                    ledger["checksum"][k] = sha256_file(path)
        else:
            _place(schema, ctx.pipeline.function(obs.value, **ctx.params), buffers, i)
        ledger["status"][k] = DONE
    except Exception as err:
        failure = (obs.id, *_fail_row(_slots(schema)[1], buffers, i, ledger, k, _caught(err)))
    ledger["end"][k] = time.time()
    return failure


#: Rows whose pipeline runs before their products are placed, a column at a time.
BLOCK_ROWS = 1024


def _run_rows(
    ctx: RunContext,
    observations: Sequence[Observation],
    first: int,
    end: int,
    buffers: dict[str, np.ndarray],
    base: int,
    ledger: dict[str, np.ndarray],
    take: type[TakenByWorkers] | None = None,
) -> list[tuple[str, str, str]]:
    """Run the pipeline on rows ``first`` .. ``end - 1`` of the batch; the failures.

    Row ``k``'s products go to row ``k - base`` of ``buffers``, its ledger columns to row
    ``k`` of ``ledger``. URL observations go one by one through :func:`_process` (each is
    placed while its local copy exists). The others run :data:`BLOCK_ROWS` at a time;
    each output is checked to be a mapping of the declared products as it comes, and a
    block's products are placed a column at a time (:func:`_place_block`). A row whose
    pipeline raised, or whose products do not match the schema, fails alone: its products
    keep their fill values and its ledger row says what went wrong. Run numbers reach the
    pipeline as they are, without an :class:`Observation` made for each. The ledger's
    ``end`` is when the pipeline returned.

    A file's checksum and fingerprint come from :func:`open_input` before the pipeline
    runs, until the pipeline reads its file through
    :func:`~esap_dask.engine.inputs.read_input`: from then on they come from the
    pipeline's own read, and a file the pipeline reads another way is read after it.
    """
    numbers = observations.values if isinstance(observations, RunNumbers) else None
    if numbers is None and any(o.kind == "url" for o in observations[first:end]):
        found = (
            _process(ctx, observations[k], buffers, k - base, ledger, k, take)
            for k in range(first, end)
        )
        return [f for f in found if f is not None]
    names, slots = _slots(ctx.schema)
    fn, params, checksums = ctx.pipeline.function, ctx.params, ctx.checksums
    started, ended, status = ledger["start"], ledger["end"], ledger["status"]
    sums, fingerprints = ledger["checksum"], ledger["fingerprint"]

    def took(k: int, checksum: str | None, taken: str | None) -> None:
        if checksum is not None:
            sums[k] = checksum
        if take is not None and (fp := take.taken(checksum, taken)) is not None:
            fingerprints[k] = fp  # the task fingerprints its inputs

    expected = EXPECTED  # what read_input reads for the pipeline, in this thread
    expected.checksum = checksums
    reads = False  # the pipeline reads its input through read_input: no read before it
    failures: list[tuple[str, str, str]] = []
    for lo in range(first, end, BLOCK_ROWS):
        hi = min(end, lo + BLOCK_ROWS)
        outs: list[Any] = []
        failed: dict[int, tuple[str, str, str]] = {}  # by buffer row
        for k in range(lo, hi):
            started[k] = time.time()
            obs = None
            try:
                if numbers is not None:
                    out = fn(numbers[k], **params)
                else:
                    obs = observations[k]
                    if not reads:
                        took(k, *open_input(obs, checksums))
                    expected.path = obs.value
                    try:
                        out = fn(obs.value, **params)
                    finally:  # what the pipeline read, as it read it (even if it then raised)
                        got, expected.path, expected.taken = expected.taken, None, None
                        if got is not None:
                            reads = True
                            took(k, *got)
                    if got is None and reads:  # not read through read_input this time
                        took(k, *open_input(obs, checksums))
                if type(out) is not dict or out.keys() != names:
                    _check_products(names, slots, out)
            except Exception as err:
                failed[k - base] = _caught(err)
                out = None
                if reads and obs is not None and not sums[k]:  # its checksum, if it can
                    with contextlib.suppress(Exception):
                        took(k, *open_input(obs, checksums))
            ended[k] = time.time()
            outs.append(out)
        _place_block(slots, outs, buffers, lo - base, failed)
        status[lo:hi] = DONE
        for i in sorted(failed):
            k = i + base
            ident = str(numbers[k]) if numbers is not None else observations[k].id
            failures.append((ident, *_fail_row(slots, buffers, i, ledger, k, failed[i])))
    return failures


#: The store group of the runs a worker served last, and its arrays by name:
#: (store, run id) -> (group, arrays).
_GROUPS: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
_GROUPS_LOCK = threading.Lock()


def _run_group(ctx: RunContext) -> tuple[Any, dict[str, Any]]:
    """The store's group for ``ctx``'s run and its arrays, opened once per worker and run.

    Array shapes change only between runs (the driver appends before any task starts),
    so the consolidated metadata read by a run's first task on this worker serves the
    run's other tasks here too; so do the array objects (looking each up in the group
    again took 8% of a worker's time at 10,000 tiny observations).
    """
    key = (ctx.store, ctx.run_id)
    with _GROUPS_LOCK:
        found = _GROUPS.get(key)
    if found is None:
        group = open_store(ctx.store, storage_options=ctx.storage_options, consolidated=True)
        arrays = dict(group.arrays())
        if LEDGER_GROUP in group:  # the ledger's arrays, by their path in the store
            sub = group[LEDGER_GROUP]
            if not isinstance(sub, zarr.Group):
                raise TypeError(f"{ctx.store}: '{LEDGER_GROUP}' is an array, not the ledger group")
            arrays.update((f"{LEDGER_GROUP}/{n}", a) for n, a in sub.arrays())
        found = (group, arrays)
        with _GROUPS_LOCK:
            while len(_GROUPS) >= 4:  # the oldest runs first
                _GROUPS.pop(next(iter(_GROUPS)))
            _GROUPS[key] = found
    return found


#: Seconds a task waits for its run's store between looks at whether it is still wanted.
STORE_WAIT = 2.0


def _store_opener(ctx: RunContext) -> Callable[[], tuple[Any, dict[str, Any]] | None]:
    """A function that opens the store of ``ctx`` (:func:`_run_group`); None from it when
    the task is no longer wanted.

    When the store is being created meanwhile (``ctx.store_pending``), the scheduler is
    asked now whether it exists (the answer comes while the pipeline runs), and the
    function waits for it: it opens the store once the driver said the store was created
    (or could not be: opening it then raises its error), or when the scheduler cannot say
    (a scheduler restarted without :class:`BatchStarts`: the task opens the store, and
    fails if it is not there yet); it returns None when the task is no longer wanted (its
    run was cancelled, or its driver is gone): its rows stay pending.
    """
    if not ctx.store_pending:
        return lambda: _run_group(ctx)
    try:
        import asyncio

        from distributed import get_worker

        w = get_worker()
        key = w.get_current_task()
    except Exception:  # not on a worker: nothing to wait with
        return lambda: None
    prefix = batch_prefix(ctx.run_id)
    loop = w.loop.asyncio_loop  # type: ignore[attr-defined]  # tornado's AsyncIOLoop

    def ask() -> Any:
        coro = w.scheduler.esap_store_wait(prefix=prefix, timeout=STORE_WAIT)
        return asyncio.run_coroutine_threadsafe(coro, loop)

    answer = ask()

    def wait_then_open() -> tuple[Any, dict[str, Any]] | None:
        nonlocal answer
        while True:
            try:
                if answer.result(timeout=STORE_WAIT + 30):
                    break
            except Exception:  # the scheduler cannot say: open it (an error if it is not there)
                break
            state = w.state.tasks.get(key)
            if state is None or state.state not in ("executing", "long-running"):
                return None  # cancelled or released: the driver no longer wants it
            answer = ask()
        return _run_group(ctx)

    return wait_then_open


def batch_prefix(run_id: str) -> str:
    """The prefix of the keys of the batch tasks of run ``run_id``."""
    return f"esap-batch-{run_id}-"


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


#: Products a task buffers before it writes them (whole write units, at least one).
FLUSH_BYTES = 32 * 2**20


def _flushes(ends: list[int], slots: Sequence[_Slot]) -> list[int]:
    """The last positions of the product writes of a batch whose write units end at ``ends``.

    Consecutive units are written together while they hold at most :data:`FLUSH_BYTES`:
    each write waits for its slowest array, and a batch of tiny observations spanning
    several units spent most of its time waiting on writes of a few KiB.
    """
    row = sum(
        (64 if s.text else s.dtype.itemsize) * int(np.prod(s.shape, dtype=np.int64)) for s in slots
    )
    out: list[int] = []
    start = 0
    for k, end in enumerate(ends):
        nxt = ends[k + 1] if k + 1 < len(ends) else None
        if nxt is None or (nxt + 1 - start) * max(1, row) > FLUSH_BYTES:
            out.append(end)
            start = end + 1
    return out


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
        and (cols["fingerprint"] == np.asarray(list(batch.fingerprints), dtype=object)).all()
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


def run_batch(ctx: RunContext | SharedContext, batch: Batch | PackedBatch) -> BatchReport:
    """Process ``batch`` and write its rows into ``ctx.store``; return its report.

    Products are written as soon as their write units (``ctx.unit`` rows of the store)
    are done, a few units at a time (up to :data:`FLUSH_BYTES`, always whole units), so a
    worker holds at most one unit or :data:`FLUSH_BYTES` of products, whichever is more;
    the ledger rows of the whole batch are written last, the ledger's ``status`` after the
    others. A batch that fits one flush writes its products with its ledger arrays, at
    once (one wait for the slowest array instead of two). The ledger's ``attempts`` adds the
    starts of this task (usually one) to ``batch.attempts``; a task started again after
    its run committed its rows returns their report without running the pipeline.

    A batch with a ``probe`` times its first rows (a write unit) first. When the rest
    would take longer than a tiny task (:func:`tasks_per_thread` gives more than one task
    for it), only the probe's rows are committed and the report counts only them; the
    driver plans the rest. Otherwise the task goes on with the rest: tiny work runs as one
    task a thread, without a round trip to the driver between the probe and the rest
    (each worker waited 20-28 ms for it, at 10,000 tiny observations).

    In a run whose store the driver creates while the first tasks run
    (``ctx.store_pending``), a task runs its rows first and waits for the store only before
    its first write (:func:`_store_opener`); a task whose run no longer wants it while it
    waits reports itself cancelled, its rows unwritten (they stay pending).
    """
    t0 = time.perf_counter()
    if isinstance(ctx, SharedContext):  # a client whose workers share its process
        ctx = ctx.ctx
    if isinstance(batch, PackedBatch):
        batch = batch.unpack()
    n = len(batch.rows)
    worker = _worker_name()
    cancelled = BatchReport(batch.index, 0, 0, [], worker, 0.0, cancelled=True)
    open_group = _store_opener(ctx)
    store = None if ctx.store_pending else open_group()  # (group, arrays) once opened
    started_on = _record_start(ctx, worker)
    if not started_on:  # the run was cancelled before this task started
        return cancelled
    if len(started_on) > 1:
        if store is None and (store := open_group()) is None:
            return cancelled
        committed = _committed_report(store[0], ctx, batch, started_on)
        if committed is not None:
            return committed
    ledger = blank(n)
    slots = _slots(ctx.schema)[1]
    failures: list[tuple[str, str, str]] = []
    units = np.asarray(batch.rows) // max(1, ctx.unit)
    bounds = _flushes([*np.flatnonzero(np.diff(units)).tolist(), n - 1], slots)
    obs = batch.observations
    ledger["source"][:] = (  # run numbers: their text, no Observation made for each
        list(map(str, obs.values)) if isinstance(obs, RunNumbers) else [str(o.value) for o in obs]
    )
    fps = batch.fingerprints
    take = type(fps) if isinstance(fps, TakenByWorkers) else None  # filled in by _process
    if take is None:
        ledger["fingerprint"][:] = list(fps)
    ledger["params"][:] = ctx.param_hash
    ledger["version"][:] = ctx.pipeline.version
    ledger["attempts"][:] = np.asarray(batch.attempts) + len(started_on)
    ledger["worker"][:] = worker
    ledger["run"][:] = ctx.run_id
    probe = batch.probe if 0 < batch.probe < n else 0
    first = 0
    for last in bounds:  # positions first..last: whole write units
        size = last - first + 1
        buffers = {  # every row is assigned below: a product or its fill value
            slot.name: np.empty((size, *slot.shape), dtype=slot.dtype) for slot in slots
        }
        if probe and first == 0:  # the probe is the first unit: it decides on the rest
            failures += _run_rows(ctx, obs, 0, probe, buffers, 0, ledger, take)
            seconds = time.perf_counter() - t0
            if tasks_per_thread(seconds, probe, n - probe, 1) > 1:  # not tiny: stop here
                n, batch = probe, batch.part(0, probe)
                ledger = {name: column[:n] for name, column in ledger.items()}
                buffers = {name: values[:n] for name, values in buffers.items()}
                break
            failures += _run_rows(ctx, obs, probe, last + 1, buffers, 0, ledger, take)
        else:
            failures += _run_rows(ctx, obs, first, last + 1, buffers, first, ledger, take)
        if size == n:  # one write of the whole batch: products and ledger together below
            break
        if store is None and (store := open_group()) is None:
            return cancelled
        write_rows(store[0], batch.rows[first : last + 1], buffers, arrays=store[1])
        first = last + 1
    else:
        buffers = {}
    if take is not None:  # inputs not opened, or not hashed: "missing", "directory", ... now
        for k in np.flatnonzero(ledger["fingerprint"] == "").tolist():
            ledger["fingerprint"][k] = fps[k]
    crash_point("products")  # test hook (ESAP_DASK_CRASH_AT), a no-op when unset
    # the commit point: write_rows writes ledger/status after every other array, so a row
    # reads done or failed only once its products and ledger arrays are written
    columns = {**buffers, **pack(ledger)}
    if store is None and (store := open_group()) is None:
        return cancelled
    group, arrays = store
    part = None
    if ctx.provenance_parts is None:
        write_rows(group, batch.rows, columns, arrays=arrays)
    else:
        part = _while_written(
            lambda: write_rows(group, batch.rows, columns, arrays=arrays),
            lambda: _write_part(ctx, batch, ledger),
        )
    return BatchReport(
        index=batch.index,
        done=int((ledger["status"] == DONE).sum()),
        failed=len(failures),
        failures=failures,
        worker=worker,
        seconds=time.perf_counter() - t0,
        started_on=started_on,
        part=part,
    )


def _while_written(write: Callable[[], None], render: Callable[[], T]) -> T:
    """``render()`` here while ``write()`` (the batch's commit) runs in a thread of its own.

    The commit's wait is mostly zarr's codec and store threads; the provenance part is
    pure Python. Rendered after the commit, the parts of 100,000 tiny observations added
    0.09-0.15 s to each worker's 0.83-0.92. A part written before its batch's commit is
    harmless: the driver joins only the parts of tasks that reported, and a task whose
    commit fails raises instead of reporting. Raises the commit's error, if any.
    """
    failed: list[BaseException] = []

    def commit() -> None:
        try:
            write()
        except BaseException as err:  # raised below, in the task's thread
            failed.append(err)

    thread = threading.Thread(target=commit, name="esap-commit")
    thread.start()
    try:
        result = render()
    finally:
        thread.join()
    if failed:
        raise failed[0]
    return result


def _write_part(
    ctx: RunContext, batch: Batch, ledger: Mapping[str, np.ndarray]
) -> tuple[int, int] | None:
    """Render the provenance of the batch's inputs; None if it cannot be written.

    Every row of the batch has its ledger row (done or failed) by now; their commit may
    still be under way (:func:`_while_written`). A part that is not written costs
    nothing but time: the run's record reads those inputs from the ledger.
    """
    if ctx.provenance_parts is None:
        return None
    from esap_dask.engine.provenance_inputs import write_part

    obs = batch.observations
    inputs: dict[str, Any] = {  # a run number's id is its text, as its source is
        "id": ledger["source"] if isinstance(obs, RunNumbers) else [o.id for o in obs],
        "source": ledger["source"],
        "fingerprint": ledger["fingerprint"],
        "checksum": ledger["checksum"],
    }
    try:
        return write_part(
            ctx.provenance_parts, ctx.storage_options, ctx.run_id, batch.index, inputs
        )
    except Exception:  # any failure: the driver reads these rows from the ledger
        return None
