"""17 concurrent array writes per batch: gathered on zarr's loop against a thread pool.

``python -m bench.zarr_writes [--rounds 5]``

A batch of esap-dask writes 17 and more arrays (products, then the ledger). This
compares, on one sharded store (chunks of 50 rows, shards of 100), writes of 100 rows
to 17 arrays: gathered on zarr's event loop (``Array.async_array.setitem`` awaited
through ``zarr.core.sync.sync``, the runner of zarr's synchronous API: what
``esap_dask.store.write_rows`` does), one ``arr[a:b] = v`` per array from a thread pool
(what it did in sessions 4-8), and the same one after the other. Rounds are interleaved;
the medians are printed, nothing is written to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr
from zarr.core.sync import sync as zarr_sync

N, K, B = 4000, 17, 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    group = zarr.open_group(tempfile.mkdtemp() + "/s.zarr", mode="w")
    arrays = [
        group.create_array(f"v{i}", shape=(N,), chunks=(50,), shards=(100,), dtype="f8")
        for i in range(K)
    ]
    pool = ThreadPoolExecutor(K)
    values = np.random.default_rng(0).random(B)

    def gathered(b: int) -> None:
        async def write_all() -> None:
            await asyncio.gather(*(a.async_array.setitem(slice(b, b + B), values) for a in arrays))

        zarr_sync(write_all())

    def threads(b: int) -> None:
        def one(a: zarr.Array) -> None:
            a[b : b + B] = values

        list(pool.map(one, arrays))

    def sequential(b: int) -> None:
        for a in arrays:
            a[b : b + B] = values

    ways: dict[str, Callable[[int], None]] = {
        "gathered on zarr's loop": gathered,
        "thread pool": threads,
        "one after the other": sequential,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, write in ways.items():
            t = time.perf_counter()
            for b in range(0, N, B):
                write(b)
            times[name].append((time.perf_counter() - t) / (N / B) * 1e3)
    print(f"zarr {zarr.__version__}: ms per batch of {K} one-shard writes of {B} rows")
    for name, ms in times.items():
        print(f"  {name:30s} median {statistics.median(ms):6.1f}  rounds {[round(x) for x in ms]}")


if __name__ == "__main__":
    main()
