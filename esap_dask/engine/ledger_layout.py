"""The ledger's layout on disk: its columns, packed into five arrays of the ``ledger`` group.

The columns (:data:`COLUMNS`, described in :mod:`esap_dask.engine.ledger`) are packed
into five arrays of the store's ``ledger`` subgroup, along the same ``obs`` rows (and
chunk grid) as the products (:data:`ARRAYS`)::

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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from esap_dask.pipeline import Coordinate, Schema, Variable
from esap_dask.store import (
    LEDGER_GROUP,
    TIME_UNITS,
    StoreError,
    array,
    ledger_group,
    read_many,
)

__all__ = [
    "ARRAYS",
    "COLUMNS",
    "DONE",
    "FAILED",
    "PACKED",
    "PENDING",
    "STATUS_FLAGS",
    "STATUS_NAMES",
    "blank",
    "buffer_dtype",
    "column_reader",
    "pack",
    "read_columns",
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


#: The in-memory dtype of the text a task builds (ledger columns, products): ``object``,
#: Python strings. A task's commit writes whole chunks of a local store itself
#: (:func:`esap_dask.store.local.write_whole_chunks`), and numcodecs' ``VLenUTF8`` encodes
#: ``object`` text without numpy's ``StringDType`` (what zarr's own ``setitem`` converts
#: text to first): a ``helloworld`` commit of 5,000 rows (3 products and the ledger, 2
#: chunks each) took 36.0 ms built as ``object`` and written whole, against 55.7 ms built
#: as ``StringDType`` through zarr (49.6 ms ``StringDType`` written whole; ``python -m
#: bench.whole_chunks``, 11 rounds, medians; reruns gave 0.72-0.76x). Through zarr's
#: ``setitem`` (a remote store, a partial chunk), ``object`` text costs what zarr's
#: conversion costs: 66.3 ms.
TEXT = np.dtype(object)


def buffer_dtype(var: Variable) -> np.dtype[Any]:
    """The dtype a task builds ``var``'s values in before writing them (:data:`TEXT` for text)."""
    return TEXT if var.dtype == "str" else var.numpy_dtype


def blank(n: int) -> dict[str, np.ndarray]:
    """``n`` rows of every ledger column, at their fill values (to be filled in)."""
    return {v.name: np.full(n, v.fill, dtype=buffer_dtype(v)) for v in COLUMNS}


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
        block = np.empty((n, len(cols)), dtype=buffer_dtype(_COLUMN[cols[0]]))
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
    if sub is None:
        if f"ledger_{names[0]}" not in group:
            raise StoreError(f"{group.store}: has no ledger; is it an esap-dask store?")
        if rows is None:
            found = read_many(group, [f"ledger_{n}" for n in names])
        else:
            found = [np.asarray(array(group, f"ledger_{n}")[rows]) for n in names]
        return dict(zip(names, found, strict=True))
    arrays = sorted({_WHERE[n][0] for n in names})
    if rows is None:
        values = dict(zip(arrays, read_many(sub, arrays), strict=True))
        return _columns(names, values)
    return column_reader(group, names, sub)(rows)


def column_reader(
    group: zarr.Group, names: Sequence[str], sub: zarr.Group | None = None
) -> Callable[[slice], dict[str, np.ndarray]]:
    """A reader of the ledger columns ``names`` of ``group`` at given rows, its arrays opened once.

    For a caller that reads a block of rows at a time (a run's provenance): each array
    looked up again per block read its metadata again (8 blocks at 100,000 observations,
    45 ms of a 0.32 s provenance record, pyinstrument).
    """
    sub = sub if sub is not None else ledger_group(group)
    if sub is None:  # the earlier layout: each column is an array of its own
        return lambda rows: read_columns(group, names, rows)
    opened = {a: array(sub, a) for a in sorted({_WHERE[n][0] for n in names})}

    def read_rows(rows: slice) -> dict[str, np.ndarray]:
        return _columns(names, {a: np.asarray(arr[rows]) for a, arr in opened.items()})

    return read_rows


def _columns(names: Sequence[str], values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns ``names`` out of the packed arrays' ``values``."""
    out = {}
    for n in names:
        name, k = _WHERE[n]
        out[n] = values[name] if k is None else values[name][:, k]
    return out
