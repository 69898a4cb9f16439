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

On disk they are packed into five arrays of the store's ``ledger`` subgroup
(:mod:`esap_dask.engine.ledger_layout`); stores of the earlier layout are read as they
are and moved by the next run (:mod:`esap_dask.engine.migrate`).

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

import itertools
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

import numpy as np
import zarr

from esap_dask.engine.ledger_layout import (  # re-exported: the ledger's one import path
    ARRAYS,
    COLUMNS,
    DONE,
    FAILED,
    PENDING,
    STATUS_NAMES,
    blank,
    column_reader,
    pack,
    read_columns,
)
from esap_dask.engine.observations import Observation, RunNumbers
from esap_dask.store import open_store, read_many, write_rows

__all__ = [
    "ARRAYS",
    "COLUMNS",
    "DONE",
    "FAILED",
    "PENDING",
    "STATUS_NAMES",
    "GivenUp",
    "Ledger",
    "Plan",
    "PlannedRow",
    "blank",
    "column_reader",
    "fill_given_up",
    "fill_last_errors",
    "pack",
    "plan",
    "read_columns",
    "read_ledger",
    "reopen",
]


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


class NewRows(Sequence[PlannedRow]):
    """The planned rows of a list of new observations, in row order, each made when read.

    A new store (or a new list) plans every observation as new, at consecutive rows: held
    as :class:`PlannedRow` objects, 100,000 of them took 17 MiB of the driver's peak
    (``/proc/self/statm`` sampled during a run); read one at a time, they cost nothing.
    """

    __slots__ = ("fingerprints", "observations", "start")

    def __init__(
        self, start: int, observations: Sequence[Observation], fingerprints: Sequence[str]
    ) -> None:
        self.start, self.observations, self.fingerprints = start, observations, fingerprints

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def rows(self) -> range:
        """The rows, in order."""
        return range(self.start, self.start + len(self.observations))

    @overload
    def __getitem__(self, index: int) -> PlannedRow: ...

    @overload
    def __getitem__(self, index: slice) -> NewRows: ...

    def __getitem__(self, index: int | slice) -> PlannedRow | NewRows:
        if isinstance(index, slice):
            a, b, step = index.indices(len(self))
            if step != 1:
                raise ValueError("NewRows slices are contiguous (step 1)")
            b = max(a, b)
            return NewRows(self.start + a, self.observations[a:b], self.fingerprints[a:b])
        if index < 0:
            index += len(self.observations)
        obs = self.observations[index]  # IndexError beyond the end
        return PlannedRow(self.start + index, obs, self.fingerprints[index], 0, "new")

    def __iter__(self) -> Iterator[PlannedRow]:
        return map(
            PlannedRow._make,
            zip(
                itertools.count(self.start),
                self.observations,
                self.fingerprints,
                itertools.repeat(0),
                itertools.repeat("new"),
            ),
        )


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

    #: Each observation to run, with its row, fingerprint and attempts so far, in row
    #: order for a list of new observations (:class:`NewRows`).
    todo: list[PlannedRow] | NewRows = field(default_factory=list)
    #: observations not yet in the store, to append (in order).
    new: list[Observation] | RunNumbers = field(default_factory=list)
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
    if not len(ledger.ids):  # a new store: no ids to look up (run numbers make none)
        rows = np.full(n, -1, dtype=np.int64)
    else:
        ids = (
            np.asarray(observations.ids(), dtype=object)
            if isinstance(observations, RunNumbers)
            else np.fromiter((o.id for o in observations), dtype=object, count=n)
        )
        rows = _rows_in_ledger(ids, ledger)
    known = rows >= 0
    r = rows[known]
    if isinstance(fingerprints, list):
        fps = np.asarray(fingerprints, dtype=object)[known]
    else:  # computed when read (run numbers): only those of known rows
        fps = np.asarray([fingerprints[i] for i in np.flatnonzero(known).tolist()], dtype=object)
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
    all_new = not known.any()
    if all_new:  # a new store, or a new list: every row new, in order (0.10 -> 0.05 s at 100,000)
        if isinstance(observations, (list, RunNumbers)):  # run numbers stay unmade
            result.new = observations
        else:
            result.new = list(observations)
        result.todo = NewRows(next_row, result.new, fingerprints)
        result.reasons["new"] = n
        next_row += n
    redo = [] if all_new else np.flatnonzero(~known | (reasons != "")).tolist()
    listed: list[PlannedRow] = []
    added: list[Observation] = []
    for i in redo:
        obs = observations[i]
        if rows[i] < 0:
            listed.append(PlannedRow(next_row, obs, fingerprints[i], 0, "new"))
            added.append(obs)
            result.reasons["new"] += 1
            next_row += 1
            continue
        tried = int(attempts[rows[i]])
        why = str(reasons[i])
        if why == "failed" and max_attempts is not None and tried >= max_attempts and unchanged[i]:
            result.given_up.append(GivenUp(int(rows[i]), obs, tried))
            continue
        listed.append(PlannedRow(int(rows[i]), obs, fingerprints[i], tried, why))
        result.reasons[why] += 1
    if not all_new:
        result.todo, result.new = listed, added
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
    """Mark the committed rows (done or failed) a run will process again as pending; how many.

    Called by the driver before any task starts. A task overwrites a row's products,
    then its ledger arrays, its ``status`` (the commit point) last:

    - were the run cut short in between, a row still reading ``done`` would hold
      products (or fill values, if the observation failed this time) that its ledger
      does not describe, and a forced rerun's row would be skipped from then on;
    - a task that the scheduler starts again after its worker died takes rows whose
      status is done or failed and whose ``run`` is this run's for committed by its
      first start (:func:`esap_dask.engine.task._committed_report`); a failed row being
      retried, still reading ``failed`` after its first start had written this run's id,
      was taken for committed with its old error.

    Pending, they run again.
    """
    known = len(ledger.status)
    if isinstance(todo.todo, NewRows) and todo.todo.start >= known:
        return 0  # new rows only: none is committed
    rows = np.fromiter((e.row for e in todo.todo if e.row < known), dtype=np.int64)
    rows = np.sort(rows[ledger.status[rows] != PENDING]) if len(rows) else rows
    if len(rows):
        write_rows(group, rows, pack({"status": np.full(len(rows), PENDING, dtype="i1")}))
    return len(rows)
