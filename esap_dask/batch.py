"""One batch of observations, processed on a Dask worker.

A batch covers whole write units of the store (see :mod:`esap_dask.store`):
the worker runs the pipeline on each of its observations, writes the products
of its rows, then their ledger rows, and returns a small :class:`BatchReport`.
Product arrays never travel back to the driver.

An exception in one observation fails that observation only: its products keep
their fill values, its ledger row says what went wrong, and the rest of the
batch is written as usual.
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

from esap_dask.ledger import COLUMNS, DONE, FAILED
from esap_dask.observations import Observation, sha256_file
from esap_dask.pipeline import Pipeline, Schema
from esap_dask.store import open_store, write_rows

__all__ = ["Batch", "BatchReport", "RunContext", "run_batch"]

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


@dataclass(frozen=True)
class Batch:
    """Store rows and the observations to process into them (rows sorted ascending)."""

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


def check_input(obs: Observation) -> None:
    """Raise a clear error for a file observation that is missing or not a file."""
    if obs.kind != "file":
        return
    path = obs.value
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file; check the observation list")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, not an observation file")


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
    ledger["ledger_start"][k] = time.time()
    failure = None
    try:
        check_input(obs)
        _place(schema, ctx.pipeline.function(obs.value, **ctx.params), buffers, i)
        ledger["ledger_status"][k] = DONE
    except Exception as err:
        for v in schema.variables:
            buffers[v.name][i] = v.fill
        message = (str(err) or repr(err))[:MAX_MESSAGE]
        ledger["ledger_status"][k] = FAILED
        ledger["ledger_error_type"][k] = type(err).__name__
        ledger["ledger_error"][k] = message
        ledger["ledger_traceback"][k] = traceback.format_exc()[-MAX_TRACEBACK:]
        failure = (obs.id, type(err).__name__, message)
    if ctx.checksums and obs.kind == "file" and os.path.isfile(obs.value):
        ledger["ledger_checksum"][k] = sha256_file(obs.value)
    ledger["ledger_end"][k] = time.time()
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


def run_batch(ctx: RunContext, batch: Batch) -> BatchReport:
    """Process ``batch`` and write its rows into ``ctx.store``; return its report.

    Products are written one write unit (``ctx.unit`` rows of the store) at a time, as
    soon as its observations are done, so a worker holds at most one unit of products;
    the ledger rows of the whole batch are written last.
    """
    t0 = time.perf_counter()
    n = len(batch.rows)
    schema = ctx.schema
    group = _run_group(ctx)
    ledger = {v.name: np.full(n, v.fill, dtype=v.numpy_dtype) for v in COLUMNS}
    worker = _worker_name()
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
    ledger["ledger_source"][:] = [str(o.value) for o in batch.observations]
    ledger["ledger_fingerprint"][:] = batch.fingerprints
    ledger["ledger_params"][:] = ctx.param_hash
    ledger["ledger_version"][:] = ctx.pipeline.version
    ledger["ledger_attempts"][:] = np.asarray(batch.attempts) + 1
    ledger["ledger_worker"][:] = worker
    ledger["ledger_run"][:] = ctx.run_id
    write_rows(group, batch.rows, ledger)  # the commit point: after every product
    return BatchReport(
        index=batch.index,
        done=int((ledger["ledger_status"] == DONE).sum()),
        failed=len(failures),
        failures=failures,
        worker=worker,
        seconds=time.perf_counter() - t0,
    )
