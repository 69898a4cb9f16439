"""The ledger: one row per observation inside the store, the memory of every run.

Its columns (as :func:`esap_dask.ledger` returns them):

==================  ======================================================
status              0 pending, 1 done, 2 failed
source              the input's path, URL or value
fingerprint         the input's fingerprint when it was processed
checksum            SHA-256 of the input file (provenance), "" for values
params              hash of the parameters it was processed with
version             pipeline version it was processed with
attempts            how many times it was processed
error_type          exception class of the last failure
error               its message
traceback           the last lines of its traceback
worker              the Dask worker that processed it
run                 id of the run that processed it
start, end          when processing began and ended (UTC, decoded by xarray)
==================  ======================================================

On disk they are packed into five arrays of the store's ``ledger`` subgroup, along
the same ``obs`` rows (and chunk grid) as the products (:data:`ARRAYS`)::

    ledger/status    (obs)                int8     the commit point of a row
    ledger/attempts  (obs)                int32
    ledger/key       (obs, key_field)     str      fingerprint, params, version
    ledger/record    (obs, record_field)  str      source, checksum, worker, run,
                                                   error_type, error, traceback
    ledger/time      (obs, event)         float64  start, end

So a batch writes 5 ledger arrays, not 14 columns (the ledger was 14 of the 17 array
writes of a batch of three products): measured with ``python -m bench.ledger_layout``
(three products and the ledger, batches of 100 rows, medians of 7 interleaved rounds,
2 shared cores, load 6), 17.4-18.6 ms a batch against 30.5-32.7 ms for 14 columns. A
rerun reads the short ``key`` fields it plans from, not the error texts: one array of 10
string fields took twice the time of 3 string columns to read at 100,000 rows. Stores of the earlier
layout (``ledger_<column>`` arrays beside the products) are read as they are
(:func:`read_columns`) and moved into the subgroup by the next run, under its lock
(:func:`esap_dask.engine.migrate.migrate`).

A batch writes its products first and its ledger rows last, ``status`` after
every other array, each chunk write atomic; a run first marks the ``done`` rows
it will redo as pending (:func:`reopen`). So a row that reads ``done`` has its
products and all its ledger columns from the same processing, whenever a run
was cut short. A rerun plans
from the ledger (:func:`plan`): only new, changed, failed or unfinished
observations run, and all of them when the parameters or the version changed;
with ``max_attempts``, a failed observation tried that many times is given up.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import zarr

from esap_dask.engine.observations import Observation
from esap_dask.pipeline import Coordinate, Schema, Variable
from esap_dask.store import (
    LEDGER_GROUP,
    TIME_UNITS,
    StoreError,
    array,
    ledger_group,
    open_store,
    read_many,
    write_rows,
)

__all__ = [
    "ARRAYS",
    "COLUMNS",
    "DONE",
    "FAILED",
    "PENDING",
    "GivenUp",
    "Ledger",
    "Plan",
    "PlannedRow",
    "fill_given_up",
    "fill_last_errors",
    "pack",
    "plan",
    "read_columns",
    "read_ledger",
    "reopen",
]

PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}

#: The status flags, as CF's ``flag_values`` and ``flag_meanings`` say them.
STATUS_FLAGS = {"flag_values": [PENDING, DONE, FAILED], "flag_meanings": "pending done failed"}

#: The ledger's logical columns (name, dtype, description), as :func:`esap_dask.ledger` shows.
COLUMNS: tuple[Variable, ...] = (
    Variable("status", "int8", description="processing status", attrs=STATUS_FLAGS),
    Variable("source", "str", description="path, URL or value of the input"),
    Variable("fingerprint", "str", description="input fingerprint when processed"),
    Variable("checksum", "str", description="SHA-256 of the input file"),
    Variable("params", "str", description="hash of the parameters used"),
    Variable("version", "str", description="pipeline version used"),
    Variable("attempts", "int32", units="1", description="times processed"),
    Variable("error_type", "str", description="exception type of the last failure"),
    Variable("error", "str", description="message of the last failure"),
    Variable("traceback", "str", description="tail of the last failure's traceback"),
    Variable("worker", "str", description="Dask worker that processed it"),
    Variable("run", "str", description="run that processed it"),
    Variable("start", "float64", units=TIME_UNITS, description="processing start (UTC)"),
    Variable("end", "float64", units=TIME_UNITS, description="processing end (UTC)"),
)
_COLUMN = {v.name: v for v in COLUMNS}

#: Packed arrays of the ledger subgroup: name -> the columns along its second axis
#: (none for a one-column array).
PACKED: dict[str, tuple[str, ...]] = {
    "key": ("fingerprint", "params", "version"),
    "record": ("source", "checksum", "worker", "run", "error_type", "error", "traceback"),
    "time": ("start", "end"),
    "attempts": (),
    "status": (),
}
_FIELD_DIM = {"key": "key_field", "record": "record_field", "time": "event"}
#: column -> (array, position along its second axis, or None)
_WHERE = {
    col: (name, (cols.index(col) if cols else None))
    for name, cols in PACKED.items()
    for col in (cols or (name,))
}

#: The ledger subgroup's layout, as a schema of its arrays (per observation).
ARRAYS = Schema(
    variables=[
        Variable(
            "status",
            "int8",
            description="processing status: 0 pending, 1 done, 2 failed",
            attrs=STATUS_FLAGS,
        ),
        Variable("attempts", "int32", units="1", description="times processed"),
        Variable(
            "key",
            "str",
            dims=("key_field",),
            description="what it was processed from: input fingerprint, parameter hash, "
            "pipeline version",
        ),
        Variable(
            "record",
            "str",
            dims=("record_field",),
            description="source, checksum, worker, run, and the last failure's type, "
            "message and traceback tail",
        ),
        Variable(
            "time",
            "float64",
            dims=("event",),
            units=TIME_UNITS,
            description="processing start and end (UTC)",
        ),
    ],
    coords=[
        Coordinate("key_field", np.array(PACKED["key"], dtype=object)),
        Coordinate("record_field", np.array(PACKED["record"], dtype=object)),
        Coordinate("event", np.array(PACKED["time"], dtype=object)),
    ],
)


def blank(n: int) -> dict[str, np.ndarray]:
    """``n`` rows of every ledger column, at their fill values (to be filled in)."""
    return {v.name: np.full(n, v.fill, dtype=v.numpy_dtype) for v in COLUMNS}


def pack(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ledger arrays (``ledger/<name>`` -> values) of full rows of every column.

    A packed array is written whole per row: its columns not in ``columns`` are
    written at their fill values.
    """
    n = len(next(iter(columns.values())))
    out: dict[str, np.ndarray] = {}
    for name, cols in PACKED.items():
        if not cols:
            if name in columns:
                dtype = _COLUMN[name].numpy_dtype
                out[f"{LEDGER_GROUP}/{name}"] = np.asarray(columns[name], dtype=dtype)
            continue
        if not any(c in columns for c in cols):
            continue
        dtype = _COLUMN[cols[0]].numpy_dtype
        block = np.empty((n, len(cols)), dtype=dtype)
        for k, col in enumerate(cols):
            block[:, k] = columns[col] if col in columns else _COLUMN[col].fill
        out[f"{LEDGER_GROUP}/{name}"] = block
    return out


def read_columns(
    group: zarr.Group, names: Sequence[str], rows: slice | None = None
) -> dict[str, np.ndarray]:
    """The ledger columns ``names`` of ``group`` (all rows, or ``rows``), of either layout.

    Reads the ``ledger`` subgroup's arrays that hold them, at once; a store of the
    earlier layout (``ledger_<column>`` arrays) is read as it is.
    """
    sub = ledger_group(group)
    where = rows if rows is not None else slice(None)
    if sub is None:
        if f"ledger_{names[0]}" not in group:
            raise StoreError(f"{group.store}: has no ledger; is it an esap-dask store?")
        if rows is None:
            found = read_many(group, [f"ledger_{n}" for n in names])
        else:
            found = [np.asarray(array(group, f"ledger_{n}")[where]) for n in names]
        return dict(zip(names, found, strict=True))
    arrays = sorted({_WHERE[n][0] for n in names})
    if rows is None:
        values = dict(zip(arrays, read_many(sub, arrays), strict=True))
    else:
        values = {a: np.asarray(array(sub, a)[where]) for a in arrays}
    out = {}
    for n in names:
        name, k = _WHERE[n]
        out[n] = values[name] if k is None else values[name][:, k]
    return out


@dataclass
class Ledger:
    """The columns of a store's ledger the driver plans from, one entry per row."""

    ids: np.ndarray
    status: np.ndarray
    fingerprint: np.ndarray
    params: np.ndarray
    version: np.ndarray
    attempts: np.ndarray

    @classmethod
    def empty(cls) -> Ledger:
        """The ledger of a store with no observations yet."""
        blank = np.array([], dtype=object)
        return cls(blank, np.array([], "i1"), blank, blank, blank, np.array([], "i4"))

    def counts(self) -> dict[str, int]:
        """Number of observations per status name."""
        found = Counter(int(s) for s in self.status)
        return {name: found.get(code, 0) for code, name in STATUS_NAMES.items()}


def read_ledger(
    store: zarr.Group | str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Ledger:
    """Read the planning columns of a store's ledger.

    Parameters
    ----------
    store
        The store: a path or URL (opened read-only with ``storage_options``), or
        its open ``zarr.Group``.

    Returns
    -------
    Ledger
        ``ids``, ``status``, ``fingerprint``, ``params``, ``version``, ``attempts``:
        one entry per row. For every column as a table, see :func:`esap_dask.ledger`.
    """
    group = _group_of(store, storage_options)
    (ids,) = read_many(group, ["obs"])
    cols = read_columns(group, ["status", "fingerprint", "params", "version", "attempts"])
    n = committed_length(ids)  # a store cut short mid-append, read before its repair
    return Ledger(
        ids[:n].astype(object),
        cols["status"][:n],
        cols["fingerprint"][:n],
        cols["params"][:n],
        cols["version"][:n],
        cols["attempts"][:n],
    )


def committed_length(ids: np.ndarray) -> int:
    """Rows up to the last assigned observation id (see :func:`esap_dask.store.repair`)."""
    n = len(ids)
    while n and not ids[n - 1]:
        n -= 1
    return n


def _group_of(
    store: zarr.Group | str | os.PathLike[str], storage_options: Mapping[str, Any] | None
) -> zarr.Group:
    if isinstance(store, zarr.Group):
        return store
    if isinstance(store, (str, os.PathLike)):
        return open_store(os.fspath(store), storage_options=storage_options, mode="r")
    raise TypeError(
        f"store must be a path, a URL or a zarr.Group, not {type(store).__name__} "
        "(give the store's path, e.g. read_ledger('products.zarr'))"
    )


class PlannedRow(NamedTuple):
    """One observation a run must process, at its row of the store."""

    #: The store row (along ``obs``) its products and ledger entry go to.
    row: int
    observation: Observation
    #: Its fingerprint now (size and mtime, or content hash), written to the ledger.
    fingerprint: str
    #: Attempts so far (0 for a new observation).
    attempts: int
    #: Why it runs: new, forced, failed, unfinished, version, parameters, changed.
    reason: str = ""


class GivenUp(NamedTuple):
    """An observation that failed ``max_attempts`` times and is not tried again."""

    row: int
    observation: Observation
    attempts: int
    #: its last error: exception type and message (filled in from the ledger)
    error_type: str = ""
    error: str = ""


@dataclass
class Plan:
    """What a run must do: store rows to (re)process, and why."""

    #: Each observation to run, with its row, fingerprint and attempts so far.
    todo: list[PlannedRow] = field(default_factory=list)
    #: observations not yet in the store, to append (in order).
    new: list[Observation] = field(default_factory=list)
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    #: failed observations not tried again: they failed ``max_attempts`` times
    given_up: list[GivenUp] = field(default_factory=list)
    #: the last error (type, message) of each planned row that failed before, by row
    #: (filled in by :func:`fill_last_errors`, for a dry run)
    last_errors: dict[int, tuple[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: each observation that would run with its reason, the given up."""
        return {
            "run": [
                {
                    "observation": e.observation.id,
                    "reason": e.reason,
                    "attempts": e.attempts,
                    "source": str(e.observation.value),
                    **(
                        dict(zip(("error_type", "message"), self.last_errors[e.row], strict=True))
                        if e.row in self.last_errors
                        else {}
                    ),
                }
                for e in self.todo
            ],
            "skipped": self.skipped,
            "reasons": dict(self.reasons),
            "given_up": [
                {
                    "observation": g.observation.id,
                    "attempts": g.attempts,
                    "error_type": g.error_type,
                    "message": g.error,
                }
                for g in self.given_up
            ],
            "notes": list(self.notes),
        }


def _rows_in_ledger(ids: np.ndarray, ledger: Ledger) -> np.ndarray:
    """Ledger row of each id, -1 for ids not in the ledger."""
    known = ledger.ids
    if len(known) >= len(ids) and np.array_equal(known[: len(ids)], ids):
        return np.arange(len(ids))  # the usual rerun: the same list in the same order
    row_of = dict(zip(known.tolist(), range(len(known)), strict=True))
    return np.fromiter((row_of.get(i, -1) for i in ids.tolist()), dtype=np.int64, count=len(ids))


def plan(
    observations: Sequence[Observation],
    fingerprints: Sequence[str],
    ledger: Ledger,
    *,
    param_hash: str,
    version: str,
    force: bool = False,
    max_attempts: int | None = None,
) -> Plan:
    """Compare the observation list with the ledger and decide what runs.

    New observations are appended after the store's last row. Existing ones
    run when forced, failed, unfinished, changed, or processed with other
    parameters or another pipeline version; the reasons are counted, and
    :attr:`Plan.notes` says in words why a whole store is reprocessed. With
    ``max_attempts``, an observation whose last attempt failed and that was tried
    that many times (or more) is not run again, unless it changed (a new file, new
    parameters or version) or ``force``: it is in :attr:`Plan.given_up`.
    """
    result = Plan()
    n = len(observations)
    ids = np.fromiter((o.id for o in observations), dtype=object, count=n)
    rows = _rows_in_ledger(ids, ledger)
    known = rows >= 0
    r = rows[known]
    fps = np.asarray(fingerprints, dtype=object)[known]
    status = ledger.status[r]
    same = (
        (ledger.version[r] == version)
        & (ledger.params[r] == param_hash)
        & (ledger.fingerprint[r] == fps)
    )
    conditions = [np.full(len(r), force), status == FAILED, status == PENDING, ~same]
    names = np.array(["", "forced", "failed", "unfinished", "changed"])
    reason = names[np.select(conditions, np.arange(1, len(conditions) + 1), default=0)]
    other_version = ledger.version[r] != version
    reason[(reason == "changed") & other_version] = "version"
    reason[(reason == "changed") & ~other_version & (ledger.params[r] != param_hash)] = "parameters"
    reasons = np.full(n, "", dtype=reason.dtype)
    reasons[known] = reason
    unchanged = np.zeros(n, dtype=bool)
    unchanged[known] = same
    next_row = len(ledger.ids)
    attempts = ledger.attempts
    for i in np.flatnonzero(~known | (reasons != "")).tolist():
        obs = observations[i]
        if rows[i] < 0:
            result.todo.append(PlannedRow(next_row, obs, fingerprints[i], 0, "new"))
            result.new.append(obs)
            result.reasons["new"] += 1
            next_row += 1
            continue
        tried = int(attempts[rows[i]])
        why = str(reasons[i])
        if why == "failed" and max_attempts is not None and tried >= max_attempts and unchanged[i]:
            result.given_up.append(GivenUp(int(rows[i]), obs, tried))
            continue
        result.todo.append(PlannedRow(int(rows[i]), obs, fingerprints[i], tried, why))
        result.reasons[why] += 1
    result.skipped = n - len(result.todo)
    if result.reasons["version"]:
        result.notes.append(
            f"{result.reasons['version']} observation(s) were processed with another pipeline "
            f"version; reprocessing them with version {version}"
        )
    if result.reasons["parameters"]:
        result.notes.append(
            f"{result.reasons['parameters']} observation(s) were processed with other "
            "parameters; reprocessing them with the parameters given now"
        )
    if result.given_up:
        result.notes.append(
            f"{len(result.given_up)} observation(s) failed {max_attempts} time(s) or more and "
            "were given up (not tried again); fix them and run with --force, or raise "
            "--max-attempts"
        )
    result.reasons = +result.reasons  # drop zero counts
    return result


def fill_given_up(group: zarr.Group, todo: Plan) -> None:
    """Fill in the last error of each of ``todo``'s given-up observations from the ledger."""
    if not todo.given_up:
        return
    cols = read_columns(group, ["error_type", "error"])
    todo.given_up = [
        g._replace(error_type=str(cols["error_type"][g.row]), error=str(cols["error"][g.row]))
        for g in todo.given_up
    ]


def fill_last_errors(group: zarr.Group, todo: Plan) -> None:
    """Fill in :attr:`Plan.last_errors`: the last error of each planned row that failed."""
    rows = [e.row for e in todo.todo if e.reason == "failed"]
    if not rows:
        return
    cols = read_columns(group, ["error_type", "error"])
    todo.last_errors = {r: (str(cols["error_type"][r]), str(cols["error"][r])) for r in rows}


def reopen(group: zarr.Group, todo: Plan, ledger: Ledger) -> int:
    """Mark the ``done`` rows a run will process again as pending; how many.

    Called by the driver before any task starts. A task overwrites a row's products
    before its ledger columns: were the run cut short in between, a row still
    reading ``done`` would hold products (or fill values, if the observation failed
    this time) that its ledger does not describe, and a forced rerun's row would
    be skipped from then on. Pending, it runs again.
    """
    known = len(ledger.status)
    rows = np.fromiter((e.row for e in todo.todo if e.row < known), dtype=np.int64)
    rows = np.sort(rows[ledger.status[rows] == DONE]) if len(rows) else rows
    if len(rows):
        write_rows(group, rows, pack({"status": np.full(len(rows), PENDING, dtype="i1")}))
    return len(rows)
