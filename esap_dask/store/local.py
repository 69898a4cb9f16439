"""Small chunks written (and compressed) on zarr's event loop, not in a thread each.

zarr 3.1 hands every chunk's Zstandard compression, and every ``LocalStore`` write, to
a thread of its own (``asyncio.to_thread``) and back: two hops a chunk. A batch of
esap-dask writes one chunk of each of its arrays, and on a store of many products the
chunks are small (the 45 arrays of 14 ``dl3-products`` rows are 32 bytes to 560 kB).
There the hops cost more than the work: one batch's 45 writes took 32-34 ms of wall time
and 36-39 ms of CPU; with the compression on the loop 27-29 and 30-34 ms, with the write
too 19-24 and 19-22 ms (40 writes each, medians, load 0.7-2; the chunks byte for byte the
same). Whole runs, interleaved A/B (``python -m bench.ab``, 6 rounds, load 1.1-2.4, at 256 KiB):
10,000 tiny 0.90x, 10,000 tiny files 0.89x, 105 H.E.S.S. files 0.89x of the time
(10 rounds: 0.89x again). The zarr developers measured the
same (zarr-python#4293 "`to_thread` is slow"; #3885 moved codecs to synchronous calls
in a release after 3.1.6, the newest on PyPI here).

So, for chunks of at most :data:`INLINE_BYTES`:

- :class:`LocalChunkStore` (the store of every local path esap-dask opens) writes the
  key on the loop, as zarr's ``LocalStore`` does it in a thread: a temporary file in
  the key's directory, then renamed over the key (a chunk is never seen half written);
  it reads such keys on the loop too;
- :class:`InlineZstdCodec` (the implementation of the ``zstd`` codec in this process,
  chosen the way zarr documents: registered, and named in ``zarr.config`` under
  ``codecs.zstd``) compresses and decompresses on the loop.

Larger chunks keep zarr's threads: their compression and I/O outweigh a hop, and
threads let them overlap (a worker of several threads shares one loop: 4 MiB took 3-10 ms
to compress, too long to hold it; 1 MiB, 1-2.5 ms). At 100,000 tiny observations the
ledger's text chunks are above 1 MiB: 4 MiB made that case 0.95x, 256 KiB 0.99x.
What is written is what zarr writes; stores stay plain Zarr v3 for every reader.

A task's commit writes whole chunks (a write unit is a chunk), and for those
:func:`write_whole_chunks` goes further: it encodes each chunk through the array's own
codecs (their ``_encode_sync``) and sets the key with the store's ``set_sync``, in the
calling thread, without zarr's indexing, its event loop or a thread hop. Text is then
encoded from ``object`` arrays of Python strings, as the task built them: zarr's
``setitem`` converts text to numpy's ``StringDType`` first, and numcodecs' ``VLenUTF8``
encodes 17,500 strings in 1.1 ms from ``object``, 3.0 ms from ``StringDType``. One
``helloworld`` commit of 5,000 rows (3 products and the 5 ledger arrays, 2 chunks each;
``python -m bench.whole_chunks``, 11 rounds, medians, load 0.5-1.5): 55.7 ms through
zarr's ``setitem`` with ``StringDType`` text (before), 36.0 ms written whole from
``object`` text (now); written whole from ``StringDType`` 49.6, through zarr from
``object`` 66.3 (reruns at load 0.8-1.8: 0.72-0.76x of the time). Partial chunks,
sharded arrays, chunked inner dimensions, numbers in chunks above :data:`INLINE_BYTES`
and stores other than :class:`LocalChunkStore` keep zarr's ``setitem``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr
from zarr.codecs.zstd import ZstdCodec
from zarr.storage import LocalStore

__all__ = [
    "INLINE_BYTES",
    "InlineZstdCodec",
    "LocalChunkStore",
    "use_inline_codecs",
    "write_whole_chunks",
]

#: Chunks (encoded or not) up to this size are compressed and written on zarr's loop.
INLINE_BYTES = 2**20


class LocalChunkStore(LocalStore):
    """zarr's ``LocalStore``; values of at most :data:`INLINE_BYTES` read and written on the loop.

    On the loop through the store's own synchronous methods (``set_sync``, ``get_sync``:
    the same atomic write, a temporary file renamed over the key, and the same read).
    """

    async def set(self, key: str, value: Any) -> None:
        if len(value) > INLINE_BYTES:
            await super().set(key, value)
            return
        if not self._is_open:
            await self._open()
        self.set_sync(key, value)

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        if not self._is_open:
            await self._open()
        try:
            size = os.stat(self.root / key).st_size
        except FileNotFoundError:
            return None
        except OSError:  # zarr's own answer (None for a directory, else the error)
            size = INLINE_BYTES + 1
        if size > INLINE_BYTES:
            return await super().get(key, prototype, byte_range)
        return self.get_sync(key, prototype=prototype, byte_range=byte_range)


class InlineZstdCodec(ZstdCodec):
    """zarr's ``zstd`` codec, run on the loop for chunks of at most :data:`INLINE_BYTES`."""

    async def _encode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        if len(chunk_bytes) > INLINE_BYTES:
            return await super()._encode_single(chunk_bytes, chunk_spec)
        return self._encode_sync(chunk_bytes, chunk_spec)

    async def _decode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        if len(chunk_bytes) > INLINE_BYTES // 4:  # decoded, it may be several times larger
            return await super()._decode_single(chunk_bytes, chunk_spec)
        return self._decode_sync(chunk_bytes, chunk_spec)


def use_inline_codecs() -> None:
    """Make :class:`InlineZstdCodec` this process's ``zstd`` (what zarr's config names)."""
    name = f"{InlineZstdCodec.__module__}.{InlineZstdCodec.__qualname__}"
    if zarr.config.get("codecs.zstd", None) != name:
        zarr.registry.register_codec("zstd", InlineZstdCodec)
        zarr.config.set({"codecs.zstd": name})


def write_whole_chunks(arr: zarr.Array, start: int, values: np.ndarray) -> bool:
    """Write ``values`` at rows ``start...`` of ``arr`` chunk by chunk, here; False if it can't.

    Only whole chunks along the first axis (the last may end at the array's end: it is
    padded with the fill value, as zarr pads it), of an unsharded array of a regular grid
    whose other axes are one chunk, in a :class:`LocalChunkStore`, and numbers only in
    chunks of at most :data:`INLINE_BYTES` (text is encoded holding the GIL either way);
    anything else returns False before writing, for the caller to write with zarr. A chunk
    of nothing but the fill value is deleted instead (zarr's ``write_empty_chunks=False``,
    its default).
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.core.metadata.v3 import ArrayV3Metadata

    a = arr.async_array
    md = a.metadata
    store = a.store_path.store
    if not (
        isinstance(store, LocalChunkStore)
        and isinstance(md, ArrayV3Metadata)
        and isinstance(md.chunk_grid, RegularChunkGrid)
        and not store.read_only
    ):
        return False
    shape, chunks = md.shape, md.chunk_grid.chunk_shape
    c0, end = chunks[0], start + len(values)
    if (
        not shape
        or tuple(chunks[1:]) != tuple(shape[1:])
        or values.shape[1:] != tuple(shape[1:])
        or start % c0
        or (end % c0 and end != shape[0])
        or end > shape[0]
        or not all(hasattr(c, "_encode_sync") for c in md.codecs)
        or any(type(c).__name__ == "ShardingCodec" for c in md.codecs)
    ):
        return False
    native = md.dtype.to_native_dtype()
    text = native.kind in "OT"  # variable-length text (fixed-width "U" is bytes, as numbers)
    dtype = np.dtype(object) if text else native
    if not text and c0 * int(np.prod(chunks[1:], dtype=np.int64)) * dtype.itemsize > INLINE_BYTES:
        return False  # large numbers: zarr's threads compress and write them side by side
    values = np.asarray(values, dtype=dtype) if values.dtype != dtype else values
    prototype = default_buffer_prototype()
    spec0 = md.get_chunk_spec((0,) * len(shape), a.config, prototype)
    fill = spec0.fill_value
    keep_empty = spec0.config.write_empty_chunks
    base = a.store_path.path
    tail = (0,) * (len(shape) - 1)
    for off in range(0, len(values), c0):
        block = values[off : off + c0]
        if len(block) < c0:  # the array's last chunk, padded as zarr pads it
            full = np.full((c0, *block.shape[1:]), fill, dtype=dtype)
            full[: len(block)] = block
            block = full
        key = f"{base}/{md.encode_chunk_key(((start + off) // c0, *tail))}"
        buf: Any = prototype.nd_buffer.from_numpy_array(block)
        if not keep_empty and (
            not any(block.ravel()) if text and fill == "" else buf.all_equal(fill)
        ):
            store.delete_sync(key)
            continue
        spec = spec0
        for codec in md.codecs:  # each has ``_encode_sync`` (checked above)
            buf = codec._encode_sync(buf, spec)  # type: ignore[union-attr]
            spec = codec.resolve_metadata(spec)
        store.set_sync(key, buf)
    return True
