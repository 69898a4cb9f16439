"""The ledger: one row per observation inside the store, the memory of every run.

Columns (``ledger_*`` variables along ``obs``):

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

A batch writes its products first and its ledger rows last, ``status`` after
every other column, each chunk write atomic; a run first marks the ``done`` rows
it will redo as pending (:func:`reopen`). So a row that reads ``done`` has its
products and all its ledger columns from the same processing, whenever a run
was cut short. A rerun plans
from the ledger (:func:`plan`): only new, changed, failed or unfinished
observations run, and all of them when the parameters or the version changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import zarr

from esap_dask.engine.observations import Observation
from esap_dask.pipeline import Variable
from esap_dask.store import TIME_UNITS, read_many, write_rows

__all__ = [
    "COLUMNS",
    "DONE",
    "FAILED",
    "PENDING",
    "Ledger",
    "Plan",
    "PlannedRow",
    "plan",
    "read_ledger",
    "reopen",
]

PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}

COLUMNS: tuple[Variable, ...] = (
    Variable("ledger_status", "int8", description="0 pending, 1 done, 2 failed"),
    Variable("ledger_source", "str", description="path, URL or value of the input"),
    Variable("ledger_fingerprint", "str", description="input fingerprint when processed"),
    Variable("ledger_checksum", "str", description="SHA-256 of the input file"),
    Variable("ledger_params", "str", description="hash of the parameters used"),
    Variable("ledger_version", "str", description="pipeline version used"),
    Variable("ledger_attempts", "int32", description="times processed"),
    Variable("ledger_error_type", "str", description="exception type of the last failure"),
    Variable("ledger_error", "str", description="message of the last failure"),
    Variable("ledger_traceback", "str", description="tail of the last failure's traceback"),
    Variable("ledger_worker", "str", description="Dask worker that processed it"),
    Variable("ledger_run", "str", description="run that processed it"),
    Variable("ledger_start", "float64", units=TIME_UNITS, description="processing start (UTC)"),
    Variable("ledger_end", "float64", units=TIME_UNITS, description="processing end (UTC)"),
)

_PLAN_COLUMNS = ("status", "fingerprint", "params", "version", "attempts")


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


def read_ledger(group: zarr.Group) -> Ledger:
    """Read the planning columns of ``group``'s ledger."""
    ids, status, fingerprint, params, version, attempts = read_many(
        group, ["obs", *(f"ledger_{c}" for c in _PLAN_COLUMNS)]
    )
    return Ledger(ids.astype(object), status, fingerprint, params, version, attempts)


class PlannedRow(NamedTuple):
    """One observation a run must process, at its row of the store."""

    #: The store row (along ``obs``) its products and ledger entry go to.
    row: int
    observation: Observation
    #: Its fingerprint now (size and mtime, or content hash), written to the ledger.
    fingerprint: str
    #: Attempts so far (0 for a new observation).
    attempts: int


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
) -> Plan:
    """Compare the observation list with the ledger and decide what runs.

    New observations are appended after the store's last row. Existing ones
    run when forced, failed, unfinished, changed, or processed with other
    parameters or another pipeline version; the reasons are counted, and
    :attr:`Plan.notes` says in words why a whole store is reprocessed.
    """
    result = Plan()
    n = len(observations)
    ids = np.fromiter((o.id for o in observations), dtype=object, count=n)
    rows = _rows_in_ledger(ids, ledger)
    known = rows >= 0
    r = rows[known]
    fps = np.asarray(fingerprints, dtype=object)[known]
    status = ledger.status[r]
    conditions = [
        np.full(len(r), force),
        status == FAILED,
        status == PENDING,
        ledger.version[r] != version,
        ledger.params[r] != param_hash,
        ledger.fingerprint[r] != fps,
    ]
    names = np.array(["", "forced", "failed", "unfinished", "version", "parameters", "changed"])
    reason = names[np.select(conditions, np.arange(1, len(conditions) + 1), default=0)]
    reasons = np.full(n, "", dtype=reason.dtype)
    reasons[known] = reason
    next_row = len(ledger.ids)
    attempts = ledger.attempts
    for i in np.flatnonzero(~known | (reasons != "")).tolist():
        obs = observations[i]
        if rows[i] < 0:
            result.todo.append(PlannedRow(next_row, obs, fingerprints[i], 0))
            result.new.append(obs)
            result.reasons["new"] += 1
            next_row += 1
        else:
            result.todo.append(
                PlannedRow(int(rows[i]), obs, fingerprints[i], int(attempts[rows[i]]))
            )
            result.reasons[str(reasons[i])] += 1
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
    result.reasons = +result.reasons  # drop zero counts
    return result


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
        write_rows(group, rows, {"ledger_status": np.full(len(rows), PENDING, dtype="i1")})
    return len(rows)
