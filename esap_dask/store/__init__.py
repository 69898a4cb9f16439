"""The Zarr store layout: products and ledger along ``obs``, readable with ``xr.open_zarr``.

Layout of a store (Zarr v3, a group and its ``ledger`` subgroup)::

    obs                 (obs)        str      observation id: the dimension coordinate
    <product>           (obs, ...)   declared dtype; CF attrs units, long_name
    <coordinate>        (dim)        coordinates of the products' other dimensions
    ledger/             a subgroup:  one row per observation, along the same ``obs``
                                     (its arrays: see esap_dask.engine.ledger)
    attrs["esap"]       pipeline, version, schema, layout, and the runs so far

``xr.open_zarr(store)`` shows the products (subgroups are not variables);
``xr.open_zarr(store, group="ledger")`` or ``esap_dask.ledger(store)`` the ledger.
Stores written before the subgroup (``ledger_<column>`` arrays beside the products)
are read as they are and moved to the subgroup by the next run
(:func:`esap_dask.engine.ledger.migrate`).

Every array is chunked along ``obs`` on one grid (``chunk`` observations a
chunk, optionally ``shard`` observations a shard); the *write unit* is the shard
when sharding, else the chunk. Tasks own whole write units, so no two tasks ever
write the same chunk or shard (concurrent partial writes of one shard corrupt it).

Every write is ordered so that a crash (SIGKILL, power loss, a full disk) at
any point leaves a store the next run repairs and completes:

- creation: the group is made with ``attrs["esap"]["incomplete"]`` set, then the
  arrays, then the attrs without it (the commit point). A store still marked
  incomplete holds no observation yet: :func:`open_for_run` removes it and the
  run creates it afresh.
- appending: data arrays grow first, the ``obs`` coordinate (the commit point)
  last; :func:`repair` brings the others back to its length.
- rows: a batch writes its products, then its ledger rows with ``ledger/status``
  last (:func:`write_rows`); the driver first marks the rows it will redo as
  pending (:func:`esap_dask.engine.ledger.reopen`), so a row reads ``done`` only once its
  products and every ledger column are the new ones.
- consolidated metadata: rewritten after every change of shape or attrs, and by
  :func:`repair` whenever it is missing or differs from the arrays.

Chunk writes are atomic on local disks (zarr writes a temporary file and renames
it) and on object stores (one PUT per key).

Test hook: the environment variable ``ESAP_DASK_CRASH_AT=<step>[:<n>]`` makes a
process SIGKILL itself at the ``n``-th time (default 1) it reaches a named write
step (:data:`CRASH_STEPS`, see :func:`crash_point`). It is read once at import;
when it is unset, each step costs one comparison with ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors

from esap_dask.errors import Remedy, Worded
from esap_dask.pipeline import Schema, SchemaError
from esap_dask.store.local import LocalChunkStore, use_inline_codecs, write_whole_chunks

use_inline_codecs()  # small chunks compressed on zarr's loop (esap_dask.store.local)

__all__ = [
    "CRASH_STEPS",
    "LEDGER_GROUP",
    "StoreError",
    "StoreLayout",
    "append_observations",
    "check_writable",
    "consolidate",
    "contiguous_runs",
    "crash_point",
    "create_store",
    "make_store",
    "open_for_run",
    "open_store",
    "repair",
    "write_rows",
    "zarr_store",
]

TIME_UNITS = "seconds since 1970-01-01T00:00:00"

#: The subgroup that holds the ledger, along the same ``obs`` rows as the products.
LEDGER_GROUP = "ledger"


#: What to do about a store that cannot take the run, in each caller's words.
ANOTHER_STORE = Remedy("give another store", "give another --store")
NEW_STORE = Remedy("write to a new store", "write to a new --store")


class StoreError(Worded, RuntimeError):
    """A store cannot be opened, or does not hold what the run expects."""


#: The write steps ``ESAP_DASK_CRASH_AT`` names (a test hook, see :func:`crash_point`).
CRASH_STEPS = (
    "create",  # a new store: after its group (marked incomplete), and again after its
    # arrays, before the group's final attrs
    "created",  # a new store: after its final attrs (created, no task started)
    "append",  # growing the store for new observations: after each array's resize
    "products",  # a batch on a worker: after its products, before its ledger rows (a
    # batch written in one flush writes both at once: before that write)
    "ledger-column",  # a batch's ledger rows: after each column written
    "consolidate-before",  # before each rewrite of the consolidated metadata
    "consolidate-after",  # after each rewrite of the consolidated metadata
    "provenance",  # in the middle of writing the run's PROV-JSON document
)


def _crash_plan(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    step, _, nth = value.partition(":")
    if step not in CRASH_STEPS or (nth and not nth.isdigit()):
        raise ValueError(
            f"ESAP_DASK_CRASH_AT={value!r}: give <step>[:<n>] with a step among "
            f"{', '.join(CRASH_STEPS)} (a test hook; unset it for real runs)"
        )
    return step, int(nth or 1)


_CRASH_AT = _crash_plan(os.environ.get("ESAP_DASK_CRASH_AT"))
_CRASH_SEEN: dict[str, int] = {}
_CRASH_LOCK = threading.Lock()


def crash_point(step: str) -> None:
    """Test hook: SIGKILL the run here when ``ESAP_DASK_CRASH_AT`` names ``step``.

    ``ESAP_DASK_CRASH_AT=<step>[:<n>]`` (read once, at import) kills at the
    ``n``-th time this process reaches ``step``. When this process leads a session
    of its own (a run started with ``start_new_session=True``, or a worker in such
    a run's process group) the whole process group is killed, driver and local
    workers at once, as a power cut would; else only this process. Unset (every
    real run), it does nothing.
    """
    if _CRASH_AT is None or _CRASH_AT[0] != step:
        return
    with _CRASH_LOCK:
        _CRASH_SEEN[step] = seen = _CRASH_SEEN.get(step, 0) + 1
    if seen != _CRASH_AT[1]:
        return
    group = os.getpgrp()
    if os.getsid(0) == group:
        os.killpg(group, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


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


def read_many(group: zarr.Group, names: Sequence[str]) -> list[np.ndarray]:
    """All values of each array of ``names``, read at once (as a batch's writes are).

    A rerun reads six ledger columns before it knows there is nothing to do; one
    after the other they took 47 ms of a 136 ms unchanged rerun at 10,000
    observations, at once 31 ms of 114 (pyinstrument, one profile each, load 5).
    """
    found: dict[str, np.ndarray] = {}

    def reader(name: str) -> Callable[[], None]:
        def one() -> None:
            found[name] = read(group, name)

        return one

    _all_at_once([reader(name) for name in names])
    return [found[name] for name in names]


def esap_attrs(group: zarr.Group) -> dict[str, Any]:
    """The store's ``esap`` attrs (pipeline, version, schema, layout, runs)."""
    meta = group.attrs.get("esap")
    if not isinstance(meta, dict):
        raise StoreError(f"{group.store}: not an esap-dask store (no 'esap' attrs)", ANOTHER_STORE)
    return dict(meta)


def dims_of(arr: zarr.Array) -> tuple[str, ...]:
    """The array's dimension names (empty when it has none)."""
    return tuple(getattr(arr.metadata, "dimension_names", None) or ())


def zarr_store(
    store: str, storage_options: Mapping[str, Any] | None = None, *, mode: str = "w-"
) -> Any:
    """What zarr opens for ``store`` in ``mode``: a :class:`LocalChunkStore`, or an fsspec store.

    A local store opened to read or update (``r``, ``r+``) must exist: zarr opens such a
    path read-only first, where a writable store makes its directory (a run stopped by a
    bad parameter left an empty ``<store>`` behind).
    """
    if "://" in store and not store.startswith("file://"):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(store, storage_options=dict(storage_options or {}))
    path = store.removeprefix("file://")
    if mode in ("r", "r+") and not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    return LocalChunkStore(path, read_only=mode == "r")


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


#: The chunk keys of a new store's arrays: Zarr v3's ``default`` encoding with ``.`` between
#: the chunk's indices (``greeting/c.3``, ``ledger/record/c.3.0``), not zarr-python's
#: default ``/`` (``greeting/c/3``), which makes a directory ``c`` in every array and one
#: more for each chunk of an array of two or more dimensions. Directories are metadata
#: operations, a round trip to the metadata server on a parallel file system (Lustre,
#: GPFS); on this project's machines a new directory or file costs 0.03-1 ms of CPU with
#: the directory it is made in and the hour, against 20 µs to rewrite an existing file
#: (``python -m bench.files``, session 14). The flat keys save 36 of the 49 directories of
#: a 10,000-observation ``helloworld`` store and 169 of the 224 of the 105 H.E.S.S.
#: files' ``dl3-products`` store. The time to write the 10,000-row store in full varies
#: more than that saves: five runs of ``bench.files`` (7-9 interleaved rounds) gave 0.50
#: to 1.03 times the time with ``/``. Both separators are Zarr v3 (the spec's ``default``
#: encoding); every reader takes the encoding from the array's metadata, and stores made
#: before keep theirs.
CHUNK_KEY_ENCODING: dict[str, str] = {"name": "default", "separator": "."}
#: The compressors of a new store's arrays: Zstandard at level 1, not zarr-python's
#: default level 0 (the library's 3). A worker's commit of 50,000 tiny ``helloworld`` rows
#: (what each of 2 workers commits at 100,000 run numbers) spent about half its time in
#: Zstandard at level 3. ``python -m bench.compression`` (9 interleaved rounds, load
#: 0.8-1.6): that commit took 115 ms against 166 (0.69x), its chunks 2,269 KiB against
#: 2,381; 5,000 rows in chunks of 1,250, 22.6 against 26.0 ms (0.87x). Array by array
#: (a 12,500-row unit), level 1 compressed the SHA-256 column in 4.8 ms against 12.6
#: (412 KiB against 430) and the ledger's ``key`` in 1.8 against 3.9 ms, no array larger
#: by more than a KiB; a 14-row unit of ``dl3-products`` (46 arrays, a 560 kB counts map)
#: in 3.5 against 4.0 ms, 75.8 against 75.0 KiB. Text keeps zarr's ``vlen-utf8``
#: serializer before it. Readers take the level from the arrays' metadata.
COMPRESSORS: tuple[dict[str, Any], ...] = (
    {"name": "zstd", "configuration": {"level": 1, "checksum": False}},
)


def _array_spec(
    dtype: Any,
    dims: Sequence[str],
    shape: tuple[int, ...],
    layout: StoreLayout | None,
    fill: Any,
    attrs: Mapping[str, Any],
) -> dict[str, Any]:
    """The keywords of ``create_array`` for one array (``layout`` None: one chunk)."""
    if layout is None:  # a coordinate of another dimension: one chunk
        chunks: tuple[int, ...] = tuple(max(1, n) for n in shape)
        shards = None
    else:
        rest = tuple(max(1, n) for n in shape[1:])
        chunks = (layout.chunk, *rest)
        shards = (layout.shard, *rest) if layout.shard else None
    return {
        "shape": shape,
        "dtype": str if np.dtype(dtype).kind == "O" else dtype,
        "chunks": chunks,
        "shards": shards,
        "fill_value": fill,
        "dimension_names": list(dims),
        "attributes": dict(attrs),
        "chunk_key_encoding": CHUNK_KEY_ENCODING,
        "compressors": COMPRESSORS,
    }


#: An array to create: its path in the group, ``create_array``'s keywords, and the
#: values to write into it at once (a coordinate's), or None.
_Spec = tuple[str, dict[str, Any], "np.ndarray | None"]


def _array_specs(schema: Schema, layout: StoreLayout, n: int, prefix: str = "") -> list[_Spec]:
    """The arrays of ``schema`` with ``n`` rows: its coordinates, then its variables."""
    specs: list[_Spec] = []
    for coord in schema.coords:
        values = np.asarray(coord.values)
        attrs = cf_attrs(coord.units, coord.description)
        spec = _array_spec(values.dtype, [coord.name], values.shape, None, None, attrs)
        specs.append((prefix + coord.name, spec, values))
    ids = id_coordinate(schema)
    for var in schema.variables:
        attrs = cf_attrs(var.units, var.description, var.attrs)
        if ids and var.name != ids:  # CF: xarray opens it as a coordinate along obs
            attrs.setdefault("coordinates", ids)
        shape = (n, *schema.shape(var))
        spec = _array_spec(var.numpy_dtype, ["obs", *var.dims], shape, layout, var.fill, attrs)
        specs.append((prefix + var.name, spec, None))
    return specs


def store_specs(
    schema: Schema, layout: StoreLayout, ledger: Schema, ids: Sequence[str]
) -> list[_Spec]:
    """Every array of a new store with one row per id of ``ids``: ``obs`` (the ids in it),
    the products and their coordinates, and the ``ledger`` subgroup's arrays."""
    n = len(ids)
    obs = _array_spec(object, ["obs"], (n,), layout, "", cf_attrs("", "observation id"))
    return [
        ("obs", obs, np.asarray(list(ids), dtype=object) if n else None),
        *_array_specs(schema, layout, n),
        *_array_specs(ledger, layout, n, prefix=f"{LEDGER_GROUP}/"),
    ]


#: The attrs of a complete ledger subgroup.
LEDGER_ATTRS: dict[str, Any] = {
    "description": "the ledger: one row per observation of the store's obs"
}


def create_store(
    store: str,
    schema: Schema,
    layout: StoreLayout,
    ledger: Schema,
    attrs: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    ids: Sequence[str] = (),
) -> zarr.Group:
    """Create a store for ``schema`` (see :func:`make_store`); its group."""
    return make_store(
        store, schema, layout, ledger, attrs, storage_options=storage_options, ids=ids
    )[0]


def _encoded(doc: Mapping[str, Any]) -> Any:
    """A metadata document as zarr writes it (its JSON, indented by zarr's setting)."""
    from zarr.core.buffer import default_buffer_prototype

    text = json.dumps(doc, allow_nan=True, indent=zarr.config.get("json_indent")).encode()
    return default_buffer_prototype().buffer.from_bytes(text)


def write_root(target: Any, root: Mapping[str, Any]) -> None:
    """Write ``root`` as the ``zarr.json`` of the zarr store ``target`` (one write)."""
    from zarr.core.sync import sync

    sync(_put(target, {"zarr.json": _encoded(root)}))


def make_store(
    store: str,
    schema: Schema,
    layout: StoreLayout,
    ledger: Schema,
    attrs: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    ids: Sequence[str] = (),
) -> tuple[zarr.Group, dict[str, Any]]:
    """Create a store for ``schema`` with one row per id of ``ids``, ``ledger`` in its subgroup.

    The group is written first with its attrs marked ``incomplete``; then every array's
    metadata (at its full length) and the ledger subgroup's, all at once; then the ``obs``
    ids and the coordinates' values; last the group's final attrs with the consolidated
    metadata, in one write (the commit point). A creation cut short is recognized (and
    redone) by :func:`open_for_run`. Returns the group and the root group's metadata
    document as written (with its consolidated metadata).

    The metadata documents are those zarr writes (:func:`_array_document`: zarr's own
    document for each kind of array, with this array's shape, chunks, attrs and dimension
    names), and the consolidated metadata is what ``zarr.consolidate_metadata`` writes;
    ``tests/test_store_create.py`` checks the stores of every catalog pipeline, sharded or
    not, byte for byte against zarr's. Building the hierarchy with ``create_array`` in a
    ``MemoryStore`` and consolidating it (sessions 10-12) was most of a new store's time:
    ``python -m bench.store_create`` (9 rounds, medians, load 0.4-0.6) measured 0.057 ->
    0.026 s for ``helloworld`` at 10,000 rows and 0.153 -> 0.057 s for the 54 arrays of
    ``dl3-products`` (zarr's ``create_array`` one array at a time: 0.108 and 0.329 s).
    """
    from zarr.core.sync import sync  # zarr's own loop; no public runner of its async API
    from zarr.storage import StorePath

    specs = store_specs(schema, layout, ledger, ids)
    encoded = _encoded
    with warnings.catch_warnings():  # zarr's own documents come from a MemoryStore
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        docs = {path: _array_document(spec) for path, spec, _ in specs}
    group_doc = {"attributes": dict(LEDGER_ATTRS), "zarr_format": 3, "node_type": "group"}
    with disk_errors(store):
        target = zarr.open_group(
            zarr_store(store, storage_options),
            mode="w-",
            zarr_format=3,
            attributes={"esap": {**attrs, "incomplete": True}},
        ).store
        crash_point("create")
        keys = {f"{path}/zarr.json": encoded(doc) for path, doc in docs.items()}
        keys[f"{LEDGER_GROUP}/zarr.json"] = encoded(group_doc)
        sync(_put(target, keys))
        for path, _, values in specs:
            if values is not None:  # the array from its document, not read back
                arr = zarr.Array.from_dict(StorePath(target, path), docs[path])
                if not write_whole_chunks(arr, 0, values):
                    arr[...] = values
        crash_point("create")
        inline = {"kind": "inline", "must_understand": False, "metadata": {}}
        subgroup = {  # as zarr lists a group in its parent's consolidated metadata
            "attributes": group_doc["attributes"],
            "zarr_format": 3,
            "consolidated_metadata": inline,
            "node_type": "group",
        }
        members = {**docs, LEDGER_GROUP: subgroup}
        root = {
            "attributes": {"esap": dict(attrs)},
            "zarr_format": 3,
            "consolidated_metadata": {**inline, "metadata": _consolidated_order(members)},
            "node_type": "group",
        }
        write_root(target, root)  # the commit point
        crash_point("created")
    return zarr.open_group(target, mode="r+", use_consolidated=False), root


def _consolidated_order(members: Mapping[str, Any]) -> dict[str, Any]:
    """``members`` (path -> metadata document) in the order zarr's consolidated metadata
    lists them: by depth, then by name (NFKC, case-folded)."""
    import unicodedata

    def key(path: str) -> tuple[int, str]:
        return path.count("/"), unicodedata.normalize("NFKC", path).casefold()

    return {path: members[path] for path in sorted(members, key=key)}


#: zarr's own metadata document of each kind of array this process created: by
#: (dtype, fill value, dimensions, sharded, chunk key encoding and compressors).
_TEMPLATES: dict[tuple[str, str, int, bool, str], dict[str, Any]] = {}


def _array_document(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``zarr.json`` document zarr writes for ``create_array(**spec)``.

    zarr's document of a 2-element array of the same dtype, fill value, dimensions and
    sharding (made once per process in a ``MemoryStore``: its data type, fill value,
    chunk key encoding and codecs, as zarr chooses them), with this array's shape,
    chunk shape, attrs and dimension names.
    """
    shape, chunks, shards = tuple(spec["shape"]), tuple(spec["chunks"]), spec["shards"]
    dtype, fill = spec["dtype"], spec["fill_value"]
    encoding = spec.get("chunk_key_encoding")
    compressors = spec.get("compressors", "auto")
    kind = (
        str(np.dtype(dtype)) if dtype is not str else "str",
        repr(fill),
        len(shape),
        bool(shards),
        json.dumps([encoding, compressors], sort_keys=True),
    )
    template = _TEMPLATES.get(kind)
    if template is None:
        keys: dict[str, Any] = {}
        ones = (1,) * len(shape)
        zarr.create_array(
            zarr.storage.MemoryStore(keys),
            shape=(2,) * len(shape),
            dtype=dtype,
            chunks=ones,
            shards=(2,) * len(shape) if shards else None,
            fill_value=fill,
            dimension_names=[f"d{i}" for i in range(len(shape))],
            attributes={},
            chunk_key_encoding=encoding,
            compressors=compressors,
        )
        if len(_TEMPLATES) >= 256:  # a long-lived service meets many pipelines
            _TEMPLATES.clear()
        template = _TEMPLATES[kind] = json.loads(keys["zarr.json"].to_bytes())
    doc = {**template}  # zarr's order of members
    codecs = template["codecs"]
    if shards:  # the sharding codec names the inner chunks
        sharding = {**codecs[0], "configuration": {**codecs[0]["configuration"]}}
        sharding["configuration"]["chunk_shape"] = list(chunks)
        codecs = [sharding, *codecs[1:]]
    doc.update(
        shape=list(shape),
        chunk_grid={"name": "regular", "configuration": {"chunk_shape": list(shards or chunks)}},
        codecs=codecs,
        attributes=dict(spec["attributes"]),
        dimension_names=list(spec["dimension_names"]),
    )
    return doc


async def _put(target: Any, keys: Mapping[str, Any]) -> None:
    """Write ``keys`` (key -> zarr buffer) into the store ``target``, all at once."""
    await asyncio.gather(*(target.set(key, value) for key, value in keys.items()))


def cf_attrs(units: str, description: str, extra: Mapping[str, Any] | None = None) -> dict:
    """CF attrs of a variable: ``units`` and ``long_name`` (and ``description``) when given.

    An empty ``units`` is left out (CF: a variable without units has no ``units``
    attribute); a time in :data:`TIME_UNITS` gets its ``calendar``.
    """
    attrs: dict[str, Any] = {}
    if description:
        attrs["long_name"] = attrs["description"] = description
    if units:
        attrs["units"] = units
        if units == TIME_UNITS:
            attrs["calendar"] = "proleptic_gregorian"
    attrs.update(extra or {})
    return attrs


def create_ledger_group(group: zarr.Group, ledger: Schema, layout: StoreLayout, n: int) -> None:
    """Create the ledger subgroup of ``group`` with ``n`` rows of ``ledger``'s arrays.

    The subgroup is created with its attrs marked ``incomplete`` and unmarked last (by
    :func:`complete_ledger_group`), so a move of an old store's ledger cut short is
    recognized and redone.
    """
    sub = group.create_group(LEDGER_GROUP, attributes={"incomplete": True})
    for path, spec, values in _array_specs(ledger, layout, n):
        arr = sub.create_array(path, **spec)
        if values is not None:
            arr[...] = values


def complete_ledger_group(group: zarr.Group) -> None:
    """Mark the ledger subgroup complete (its commit point)."""
    group[LEDGER_GROUP].attrs.put(dict(LEDGER_ATTRS))


def ledger_group(group: zarr.Group) -> zarr.Group | None:
    """The complete ledger subgroup of ``group``; None for a store of the old layout."""
    sub = group.get(LEDGER_GROUP)
    if isinstance(sub, zarr.Group) and not sub.attrs.get("incomplete"):
        return sub
    return None


#: A scalar integer product of this name is the observations' own id (GADF's OBS_ID).
ID_VARIABLE = "obs_id"


def id_coordinate(schema: Schema) -> str | None:
    """``"obs_id"`` when ``schema`` has it as a scalar integer product, else None.

    The other products then name it in their CF ``coordinates`` attribute, so
    ``xr.open_zarr`` opens it as an integer coordinate along ``obs`` (the store's
    index stays the observation's name: ids repeat across data releases, and a row is
    planned before its file is read); ``ds.set_xindex("obs_id").sel(obs_id=23523)``
    or ``ds.swap_dims(obs="obs_id")`` select by it.
    """
    for var in schema.variables:
        if var.name == ID_VARIABLE and not var.dims and var.numpy_dtype.kind in "iu":
            return ID_VARIABLE
    return None


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
            zarr_store(store, storage_options, mode=mode),
            mode=mode,
            use_consolidated=consolidated,
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise StoreError(f"{store}: no Zarr store there") from err


def open_for_run(store: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Group | None:
    """The store's group for a run that writes it; ``None`` when the run must create it.

    A store whose creation was cut short (its attrs still marked ``incomplete`` by
    :func:`create_store`: it holds no observation yet) is removed, so the run
    creates it afresh.
    """
    try:
        group = open_store(store, storage_options=storage_options)
    except StoreError:
        return None
    meta = group.attrs.get("esap")
    if not (isinstance(meta, dict) and meta.get("incomplete")):
        return group
    with disk_errors(store):
        if "://" in store and not store.startswith("file://"):
            import fsspec

            fs, path = fsspec.core.url_to_fs(store, **dict(storage_options or {}))
            fs.rm(path, recursive=True)
        else:
            shutil.rmtree(Path(store.removeprefix("file://")).expanduser())
    return None


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
    """Bring a store interrupted during a write back to its committed state; its length.

    Arrays along ``obs`` are cut (or grown) to the length of the ``obs`` coordinate
    up to its last assigned id (an append cut short), and the consolidated metadata
    is rewritten when it is missing or differs from the arrays (a run cut short
    before it rewrote them: tasks and ``xr.open_zarr`` read shapes from it).
    """
    ids = read(group, "obs")
    n = len(ids)
    while n and not ids[n - 1]:
        n -= 1
    changed = n != len(ids)
    with disk_errors(str(group.store)):
        for _name, arr in obs_arrays(group):
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))
                changed = True
        if changed or _consolidated_differs(group):
            consolidate(group.store)
    return n


def _consolidated_differs(group: zarr.Group) -> bool:
    """True when the store's consolidated metadata is missing or not what its nodes say."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            fresh = zarr.open_group(group.store, mode="r", use_consolidated=True)
    except (ValueError, OSError):  # none there
        return True
    held = fresh.metadata.consolidated_metadata
    if held is None:
        return True
    shapes = {name: arr.shape for name, arr in obs_arrays(group)}
    kept = {  # nested groups (the ledger's) are flattened to "ledger/<array>" keys
        k: getattr(v, "shape", None) for k, v in held.flattened_metadata.items() if k in shapes
    }
    return kept != shapes or fresh.attrs.asdict() != group.attrs.asdict()


def obs_arrays(group: zarr.Group) -> list[tuple[str, zarr.Array]]:
    """Every array along ``obs`` of the store and of its ledger subgroup, by path."""
    found = [(name, arr) for name, arr in group.arrays() if dims_of(arr)[:1] == ("obs",)]
    sub = group.get(LEDGER_GROUP)
    if isinstance(sub, zarr.Group):
        found += [
            (f"{LEDGER_GROUP}/{name}", arr)
            for name, arr in sub.arrays()
            if dims_of(arr)[:1] == ("obs",)
        ]
    return found


def append_observations(group: zarr.Group, ids: Sequence[str]) -> int:
    """Grow every ``obs`` array by ``len(ids)`` rows; return the first new row index."""
    obs = array(group, "obs")
    old = obs.shape[0]
    new = old + len(ids)
    with disk_errors(str(group.store)):
        for name, arr in obs_arrays(group):
            if name != "obs":
                arr.resize((new, *arr.shape[1:]))
                crash_point("append")
        obs.resize((new,))
        obs[old:new] = np.asarray(list(ids), dtype=object)  # the commit point
        consolidate(group.store)
    return old


def consolidate(store: Any) -> None:
    """Rewrite the consolidated metadata of a zarr store object (xarray reads shapes from it)."""
    crash_point("consolidate-before")
    with warnings.catch_warnings():  # "not part of the v3 spec": xarray reads it all the same
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        with disk_errors(str(store)):
            zarr.consolidate_metadata(store)
    crash_point("consolidate-after")


#: ``errno`` values of a store whose disk (or quota) is full.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def disk_errors(store: str) -> Iterator[None]:
    """Turn a full disk or quota (``ENOSPC``, ``EDQUOT``) under the block into a StoreError."""
    try:
        yield
    except OSError as err:
        if err.errno not in _FULL:
            raise
        raise StoreError(full_message(store, err)) from err


def full_message(store: str, err: OSError) -> str:
    """What to say when writing ``store`` met a full disk or quota."""
    where = f" (writing {err.filename})" if err.filename else ""
    return (
        f"{store.removeprefix('file://')}: cannot write the store: "
        f"{os.strerror(err.errno or errno.ENOSPC).lower()}{where}; free space (or raise the "
        "quota) and run the same command again: the observations already written are kept"
    )


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


#: The ledger array :func:`write_rows` writes after all the others (a row's commit point).
COMMIT_COLUMN = f"{LEDGER_GROUP}/status"

#: Largest block, in bytes, that :func:`write_rows` reads back to patch scattered rows.
PATCH_BYTES = 64 * 2**20


def write_rows(
    group: zarr.Group,
    rows: np.ndarray,
    columns: Mapping[str, np.ndarray],
    *,
    arrays: Mapping[str, zarr.Array] | None = None,
) -> None:
    """Write ``columns`` (name -> values, one per row) at sorted ``rows``, all columns at once.

    The caller owns every write unit that ``rows`` touch (no other task writes between
    ``rows[0]`` and ``rows[-1]``). ``ledger/status`` (:data:`COMMIT_COLUMN`), when
    given, is written after every other column. The columns are written concurrently
    (:func:`_on_zarr_loop`: a batch writes 17 and more arrays); writes that must follow
    others (the ledger after the products) are a later call. Contiguous rows are one
    slice assignment each (zarr 3.1 mis-broadcasts orthogonal integer-array writes into
    sharded arrays). Scattered rows (a rerun of some failed or changed observations) are
    patched into the block that covers them, read once and written once: one write per
    row would re-encode the same chunk again and again.

    ``arrays`` are the group's arrays by name, when the caller keeps them (a worker, for
    the tasks of one run: shapes do not change during a run); else each is looked up.
    """
    rows = np.asarray(rows)
    runs = contiguous_runs(rows)
    if not runs:
        return
    lo, hi = runs[0][0], runs[-1][1]

    async def write(name: str, arr: zarr.AsyncArray[Any], values: np.ndarray) -> None:
        row_bytes = values[0].nbytes if values.dtype.kind not in "OT" else 64  # text: ~64
        if len(runs) > 1 and (hi - lo) * max(1, row_bytes) <= PATCH_BYTES:
            block = np.asarray(await arr.getitem(slice(lo, hi)))
            block[rows - lo] = values
            await arr.setitem(slice(lo, hi), block)
        else:
            for r0, r1, p0, p1 in runs:  # in turn: two runs may share a chunk
                await arr.setitem(slice(r0, r1), values[p0:p1])
        if name.startswith(f"{LEDGER_GROUP}/"):
            crash_point("ledger-column")

    # ledger/status is the commit point of a row: written after every other column
    targets = list(columns.items())
    parts = [
        [t for t in targets if t[0] != COMMIT_COLUMN],
        [t for t in targets if t[0] == COMMIT_COLUMN],
    ]
    with disk_errors(str(group.store)):
        for part in parts:
            rest = []
            for name, values in part:
                arr = arrays[name] if arrays is not None else array(group, name)
                # whole chunks of a local store: encoded and written here (store.local)
                if len(runs) == 1 and write_whole_chunks(arr, lo, values):
                    if name.startswith(f"{LEDGER_GROUP}/"):
                        crash_point("ledger-column")
                else:
                    rest.append(write(name, arr.async_array, values))
            if rest:
                _on_zarr_loop(rest)


def _on_zarr_loop(writes: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Await every write at once on zarr's event loop; raise the first error once all ended.

    A batch writes 17 and more arrays (products, then the ledger); one after the
    other, a task of tiny observations spent most of its time waiting on them
    (DESIGN.md, "Fair peers"). Gathered on zarr's own loop (``zarr.core.sync.sync``, the
    runner of zarr's synchronous API; each write is the public ``AsyncArray.setitem``)
    they cost less than the public ``arr[a:b] = v`` from a pool of threads, each of which
    hands its write to that same loop: ``python -m bench.zarr_writes`` (zarr 3.1.6, 17
    one-shard writes of 100 rows, 5 rounds, load 2) 35.6 ms a batch against 45.6 (one
    after the other: 51.5); the 44 arrays of a batch of 14 ``dl3-products`` rows, 53 ms
    and 73 ms of CPU against 76 and 100 ms (15 interleaved rounds, medians). At load
    8-16 (session 4) the two were within noise of each other.
    """
    from zarr.core.sync import sync

    async def every() -> list[Any]:
        return await asyncio.gather(*writes, return_exceptions=True)

    for outcome in sync(every()):
        if isinstance(outcome, BaseException):
            raise outcome


#: (process id, pool): the threads that read arrays at once (:func:`read_many`).
_READERS: tuple[int, ThreadPoolExecutor] | None = None


def _all_at_once(reads: Sequence[Callable[[], None]]) -> None:
    """Run every read at once, one thread each; raise the first error once all ended.

    Each read looks its array up (a metadata read) and reads it with zarr's public API;
    see :func:`read_many` for what it gained. Writes are gathered on zarr's loop instead
    (:func:`_on_zarr_loop`).
    """
    global _READERS
    if len(reads) <= 1:
        for one in reads:
            one()
        return
    if _READERS is None or _READERS[0] != os.getpid():  # a forked process has no threads
        _READERS = (os.getpid(), ThreadPoolExecutor(32, thread_name_prefix="esap-zarr-read"))
    futures = [_READERS[1].submit(one) for one in reads]
    wait(futures)
    for future in futures:
        future.result()


def __getattr__(name: str) -> Any:
    if name == "RunStore":  # defined on top of this module: imported on first use
        from importlib import import_module

        return import_module("esap_dask.store.run").RunStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
