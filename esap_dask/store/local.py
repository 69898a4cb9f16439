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
"""

from __future__ import annotations

import os
from typing import Any

import zarr
from zarr.codecs.zstd import ZstdCodec
from zarr.storage import LocalStore

__all__ = ["INLINE_BYTES", "InlineZstdCodec", "LocalChunkStore", "use_inline_codecs"]

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
