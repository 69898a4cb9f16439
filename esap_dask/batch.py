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


def run_batch(ctx: RunContext, batch: Batch) -> BatchReport:
    """Process ``batch`` and write its rows into ``ctx.store``; return its report."""
    t0 = time.perf_counter()
    n = len(batch.rows)
    schema = ctx.schema
    buffers = {
        v.name: np.full((n, *schema.shape(v)), v.fill, dtype=v.numpy_dtype)
        for v in schema.variables
    }
    ledger = {v.name: np.full(n, v.fill, dtype=v.numpy_dtype) for v in COLUMNS}
    worker = _worker_name()
    failures: list[tuple[str, str, str]] = []
    function = ctx.pipeline.function
    for i, obs in enumerate(batch.observations):
        start = time.time()
        try:
            check_input(obs)
            _place(schema, function(obs.value, **ctx.params), buffers, i)
            ledger["ledger_status"][i] = DONE
        except Exception as err:
            for v in schema.variables:
                buffers[v.name][i] = v.fill
            message = (str(err) or repr(err))[:MAX_MESSAGE]
            ledger["ledger_status"][i] = FAILED
            ledger["ledger_error_type"][i] = type(err).__name__
            ledger["ledger_error"][i] = message
            ledger["ledger_traceback"][i] = traceback.format_exc()[-MAX_TRACEBACK:]
            failures.append((obs.id, type(err).__name__, message))
        if ctx.checksums and obs.kind == "file" and os.path.isfile(obs.value):
            ledger["ledger_checksum"][i] = sha256_file(obs.value)
        ledger["ledger_start"][i] = start
        ledger["ledger_end"][i] = time.time()
    ledger["ledger_source"][:] = [str(o.value) for o in batch.observations]
    ledger["ledger_fingerprint"][:] = batch.fingerprints
    ledger["ledger_params"][:] = ctx.param_hash
    ledger["ledger_version"][:] = ctx.pipeline.version
    ledger["ledger_attempts"][:] = np.asarray(batch.attempts) + 1
    ledger["ledger_worker"][:] = worker
    ledger["ledger_run"][:] = ctx.run_id
    group = open_store(ctx.store, storage_options=ctx.storage_options)
    write_rows(group, batch.rows, {**buffers, **ledger})  # products first, ledger last
    return BatchReport(
        index=batch.index,
        done=int((ledger["ledger_status"] == DONE).sum()),
        failed=len(failures),
        failures=failures,
        worker=worker,
        seconds=time.perf_counter() - t0,
    )
