"""The Zarr store layout: products and ledger along ``obs``, readable with ``xr.open_zarr``.

Layout of a store (Zarr v3, one group)::

    obs                 (obs)        str      observation id: the dimension coordinate
    <product>           (obs, ...)   declared dtype, units and description in attrs
    <coordinate>        (dim)        coordinates of the products' other dimensions
    ledger_<column>     (obs)        one row per observation (see esap_dask.engine.ledger)
    attrs["esap"]       pipeline, version, schema, layout, and the runs so far

Every array is chunked along ``obs`` on one grid (``chunk`` observations a
chunk, optionally ``shard`` observations a shard); the *write unit* is the shard
when sharding, else the chunk. Tasks own whole write units, so no two tasks ever
write the same chunk or shard (concurrent partial writes of one shard corrupt it).

Appending is ordered so that a crash at any point leaves a store that
:func:`repair` brings back to its last consistent length: data arrays grow
first, the ``obs`` coordinate (the commit point) last.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors
from zarr.core.sync import sync as zarr_sync

from esap_dask.errors import Remedy, Worded
from esap_dask.pipeline import Schema, SchemaError, Variable

__all__ = [
    "StoreError",
    "StoreLayout",
    "append_observations",
    "check_writable",
    "consolidate",
    "contiguous_runs",
    "create_store",
    "open_store",
    "repair",
    "write_rows",
    "zarr_store",
]

TIME_UNITS = "seconds since 1970-01-01T00:00:00"


#: What to do about a store that cannot take the run, in each caller's words.
ANOTHER_STORE = Remedy("give another store", "give another --store")
NEW_STORE = Remedy("write to a new store", "write to a new --store")


class StoreError(Worded, RuntimeError):
    """A store cannot be opened, or does not hold what the run expects."""


@dataclass(frozen=True)
class StoreLayout:
    """Chunking along ``obs``: ``chunk`` observations a chunk, ``shard`` a shard (or None)."""

    chunk: int
    shard: int | None = None

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {self.chunk}")
        if self.shard is not None and (self.shard < self.chunk or self.shard % self.chunk):
            raise ValueError(
                f"shard ({self.shard}) must be a multiple of chunk ({self.chunk}) observations"
            )

    @property
    def unit(self) -> int:
        """Observations per write unit: the shard when sharding, else the chunk."""
        return self.shard or self.chunk


def array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group`` (a StoreError when it is missing or a group)."""
    node = group.get(name)
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.store}: has no array {name!r}; is it an esap-dask store?")
    return node


def read(group: zarr.Group, name: str) -> np.ndarray:
    """All values of the array ``name``."""
    return np.asarray(array(group, name)[...])


def esap_attrs(group: zarr.Group) -> dict[str, Any]:
    """The store's ``esap`` attrs (pipeline, version, schema, layout, runs)."""
    meta = group.attrs.get("esap")
    if not isinstance(meta, dict):
        raise StoreError(f"{group.store}: not an esap-dask store (no 'esap' attrs)", ANOTHER_STORE)
    return dict(meta)


def dims_of(arr: zarr.Array) -> tuple[str, ...]:
    """The array's dimension names (empty when it has none)."""
    return tuple(getattr(arr.metadata, "dimension_names", None) or ())


def zarr_store(store: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """What zarr opens for ``store``: the path itself, or an fsspec store for a URL."""
    if "://" in store and not store.startswith("file://"):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(store, storage_options=dict(storage_options or {}))
    return store.removeprefix("file://")


def check_writable(store: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise StoreError when a run cannot write ``store`` and its lock; nothing is written.

    A local store needs a writable directory for itself and for its lock file
    (``<store>.lock``, beside it): the store's parent (or the nearest existing
    ancestor, where a new store's directories would be made), and the store itself
    when it exists. The check asks the kernel (``access(2)``), so it sees what a
    write would meet: file modes and ACLs, a read-only file system (``EROFS``, also
    for root), an immutable directory. A URL store needs its fsspec implementation
    (``s3://``: the optional extra ``s3``); whether the bucket takes writes is known
    only when the lock is written.
    """
    if "://" in store and not store.startswith("file://"):
        import fsspec

        protocol = store.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as err:
            from esap_dask.extras import extra_of, install_hint

            found = extra_of(err)
            todo = install_hint(found[0]) if found else str(err)
            raise StoreError(f"{store}: {protocol}:// stores need {todo}") from err
        except ValueError as err:
            raise StoreError(f"{store}: unknown protocol {protocol!r} ({err})") from err
        return
    path = Path(store.removeprefix("file://")).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise StoreError(f"{store}: is a file, not a Zarr store (a directory)", ANOTHER_STORE)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    for directory in ([path] if path.exists() else []) + [parent]:
        if os.access(directory, os.W_OK | os.X_OK):
            continue
        try:
            read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "on a read-only file system" if read_only else "not writable by you"
        what = "the store" if directory == path else f"its directory {directory}"
        raise StoreError(
            f"{store}: cannot write {what} ({why}; the store and its lock file "
            f"{path.name}.lock need it)",
            Remedy(
                "give a store in a directory you can write",
                "give a --store in a directory you can write",
            ),
        )


def _create(
    group: zarr.Group,
    name: str,
    *,
    dtype: Any,
    dims: Sequence[str],
    shape: tuple[int, ...],
    layout: StoreLayout | None,
    fill: Any,
    attrs: Mapping[str, Any],
) -> None:
    if layout is None:  # a coordinate of another dimension: one chunk
        chunks: tuple[int, ...] = tuple(max(1, n) for n in shape)
        shards = None
    else:
        rest = tuple(max(1, n) for n in shape[1:])
        chunks = (layout.chunk, *rest)
        shards = (layout.shard, *rest) if layout.shard else None
    dtype = str if np.dtype(dtype).kind == "O" else dtype
    group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        fill_value=fill,
        dimension_names=list(dims),
        attributes=dict(attrs),
    )


def create_store(
    store: str,
    schema: Schema,
    layout: StoreLayout,
    ledger: Sequence[Variable],
    attrs: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> zarr.Group:
    """Create an empty store (``obs`` of length 0) for ``schema`` plus the ``ledger`` columns."""
    group = zarr.open_group(zarr_store(store, storage_options), mode="w-", zarr_format=3)
    group.attrs["esap"] = dict(attrs)
    _create(
        group,
        "obs",
        dtype=object,
        dims=["obs"],
        shape=(0,),
        layout=layout,
        fill="",
        attrs={"description": "observation id"},
    )
    for coord in schema.coords:
        values = np.asarray(coord.values)
        _create(
            group,
            coord.name,
            dtype=values.dtype,
            dims=[coord.name],
            shape=values.shape,
            layout=None,
            fill=None,
            attrs={"units": coord.units, "description": coord.description},
        )
        array(group, coord.name)[...] = values
    for var in [*schema.variables, *ledger]:
        shape = (0, *schema.shape(var))
        attrs_v = {"units": var.units, "description": var.description}
        if var.units == TIME_UNITS:
            attrs_v["calendar"] = "proleptic_gregorian"
        _create(
            group,
            var.name,
            dtype=var.numpy_dtype,
            dims=["obs", *var.dims],
            shape=shape,
            layout=layout,
            fill=var.fill,
            attrs=attrs_v,
        )
    consolidate(group.store)
    return group


def open_store(
    store: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    mode: Literal["r", "r+"] = "r+",
    consolidated: bool = False,
) -> zarr.Group:
    """Open an existing store's group.

    By default array metadata is read afresh, one array at a time (the driver, which
    changes shapes). Tasks pass ``consolidated=True``: the driver rewrites the
    consolidated metadata after every change and before any task starts, and one read
    of it replaces a read per array.
    """
    try:
        return zarr.open_group(
            zarr_store(store, storage_options), mode=mode, use_consolidated=consolidated
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise StoreError(f"{store}: no Zarr store there") from err


def store_layout(group: zarr.Group) -> StoreLayout:
    """The layout recorded in the store's attrs."""
    lay = esap_attrs(group)["layout"]
    return StoreLayout(chunk=int(lay["chunk"]), shard=lay.get("shard"))


def check_schema(group: zarr.Group, schema: Schema) -> None:
    """Raise SchemaError when the store's products differ from ``schema`` (name, dtype, shape)."""
    for var in schema.variables:
        if var.name not in group:
            raise SchemaError(
                f"{group.store}: has no variable {var.name!r}; the pipeline's products changed",
                NEW_STORE,
            )
        arr = array(group, var.name)
        want = schema.shape(var)
        if tuple(arr.shape[1:]) != want:
            raise SchemaError(
                f"{group.store}: variable {var.name!r} has per-observation shape "
                f"{tuple(arr.shape[1:])}, the pipeline now gives {want} (a parameter changed a "
                "shape)",
                NEW_STORE,
            )
    _check_coords(group, schema)


def _check_coords(group: zarr.Group, schema: Schema) -> None:
    for coord in schema.coords:
        want = np.asarray(coord.values)
        have = read(group, coord.name) if coord.name in group else None
        if have is None or have.shape != want.shape or not np.array_equal(have, want):
            raise SchemaError(
                f"{group.store}: coordinate {coord.name!r} differs from what the pipeline "
                "gives now (a parameter changed it)",
                NEW_STORE,
            )


def repair(group: zarr.Group) -> int:
    """Bring a store interrupted during an append back to its committed length; return it."""
    ids = read(group, "obs")
    n = len(ids)
    while n and not ids[n - 1]:
        n -= 1
    changed = n != len(ids)
    for _name, arr in group.arrays():
        dims = dims_of(arr)
        if dims and dims[0] == "obs" and arr.shape[0] != n:
            arr.resize((n, *arr.shape[1:]))
            changed = True
    if changed:
        consolidate(group.store)
    return n


def append_observations(group: zarr.Group, ids: Sequence[str]) -> int:
    """Grow every ``obs`` array by ``len(ids)`` rows; return the first new row index."""
    obs = array(group, "obs")
    old = obs.shape[0]
    new = old + len(ids)
    for name, arr in group.arrays():
        dims = dims_of(arr)
        if name != "obs" and dims and dims[0] == "obs":
            arr.resize((new, *arr.shape[1:]))
    obs.resize((new,))
    obs[old:new] = np.asarray(list(ids), dtype=object)
    consolidate(group.store)
    return old


def consolidate(store: Any) -> None:
    """Rewrite the consolidated metadata of a zarr store object (xarray reads shapes from it)."""
    with warnings.catch_warnings():  # "not part of the v3 spec": xarray reads it all the same
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(store)


def contiguous_runs(rows: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split sorted row indices into runs: ``(row_start, row_stop, pos_start, pos_stop)``."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [
        (int(rows[a]), int(rows[b - 1]) + 1, int(a), int(b))
        for a, b in zip(starts, stops, strict=False)
    ]


#: Largest block, in bytes, that :func:`write_rows` reads back to patch scattered rows.
PATCH_BYTES = 64 * 2**20


def write_rows(group: zarr.Group, rows: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
    """Write ``columns`` (name -> values, one per row) at sorted ``rows``, all columns at once.

    The caller owns every write unit that ``rows`` touch (no other task writes between
    ``rows[0]`` and ``rows[-1]``). The columns are written concurrently, on zarr's event
    loop (a batch writes 17 and more arrays: one after the other, a task of tiny
    observations spent most of its time waiting on them); writes that must follow
    others (the ledger after the products) are a later call. Contiguous rows are one
    slice assignment each (zarr 3.1 mis-broadcasts orthogonal integer-array writes into
    sharded arrays). Scattered rows (a rerun of some failed or changed observations) are
    patched into the block that covers them, read once and written once: one write per
    row would re-encode the same chunk again and again.
    """
    rows = np.asarray(rows)
    runs = contiguous_runs(rows)
    if not runs:
        return
    lo, hi = runs[0][0], runs[-1][1]

    async def write(arr: zarr.AsyncArray[Any], values: np.ndarray) -> None:
        row_bytes = values[0].nbytes if values.dtype.kind != "O" else 64
        if len(runs) > 1 and (hi - lo) * max(1, row_bytes) <= PATCH_BYTES:
            block = np.asarray(await arr.getitem(slice(lo, hi)))
            block[rows - lo] = values
            await arr.setitem(slice(lo, hi), block)
            return
        for r0, r1, p0, p1 in runs:  # in turn: two runs may share a chunk
            await arr.setitem(slice(r0, r1), values[p0:p1])

    _on_zarr_loop([(array(group, name), values) for name, values in columns.items()], write)


def _on_zarr_loop(
    targets: Sequence[tuple[zarr.Array, np.ndarray]],
    write: Callable[[zarr.AsyncArray[Any], np.ndarray], Awaitable[None]],
) -> None:
    """Run ``write`` for every (array, values) concurrently on zarr's own event loop.

    The one place esap-dask uses zarr's private API (``Array._async_array`` and
    ``zarr.core.sync.sync``; zarr 3.1 has no public way to await several arrays'
    writes together). Why: a batch writes 17 and more arrays (products, then the
    ledger); written one after the other, a task of tiny observations spent most of its
    time waiting on them (DESIGN.md, "Fair peers": per-observation validation and 17
    separate array writes per batch were most of the worker overhead). The public
    alternative, one ``arr[a:b] = v`` per array from a thread pool, was timed against
    this (2026-11-26, zarr 3.1.6: 40 batches of 17 one-shard writes of 100 rows, 5
    interleaved rounds), but on the shared 2-core machine under load 16 the medians did
    not separate (85 ms against 75 ms a batch, single rounds from 20 to 145 ms); until a
    quiet measurement says the public path costs nothing, the gather stays, here only.
    """

    async def write_all() -> None:
        await asyncio.gather(*(write(arr._async_array, values) for arr, values in targets))

    zarr_sync(write_all())
