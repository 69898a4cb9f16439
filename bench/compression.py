"""A task's commit with Zstandard at level 1 (esap-dask's stores) against zarr's default.

``python -m bench.compression [--rounds 9] [--rows 50000] [--chunk 12500]``

One commit of a ``helloworld`` task (its 3 products and the 5 ledger arrays, ``rows``
rows in chunks of ``chunk``: by default what each of 2 workers commits in a run of
100,000 run numbers) into two stores made as a run makes them
(``esap_dask.store.create_store``), one with the arrays' compressor as esap-dask sets
it (``esap_dask.store.COMPRESSORS``, Zstandard level 1), one with zarr-python's default
(Zstandard level 0, which the library reads as its default level 3), in interleaved
rounds. Prints the medians (ms per commit), the bytes of the chunks each wrote, and the
load average; nothing is written to ``bench/results.json``. Both stores must read back
the same values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import esap_dask.store as store_module
from bench.whole_chunks import chunk_files, columns, helloworld_store, patched_store
from esap_dask.store import LEDGER_GROUP, write_rows

#: zarr-python's default compressor of a new array (``zarr.create_array``'s "auto").
ZARR_DEFAULT = ({"name": "zstd", "configuration": {"level": 0, "checksum": False}},)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=12_500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="esap-bench-compression-"))
    ways = {
        "level 1 (esap-dask)": store_module.COMPRESSORS,
        "level 3 (zarr's default)": ZARR_DEFAULT,
    }
    values = columns(args.rows, object)
    rows = np.arange(args.rows)
    times: dict[str, list[float]] = {name: [] for name in ways}
    sizes: dict[str, int] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for k, name in enumerate(ways if r % 2 else reversed(ways)):
            path = work / f"{k}-{r}.zarr"
            with patched_store(COMPRESSORS=ways[name]):
                group, arrays = helloworld_store(path, args.rows, args.chunk)
            t = time.perf_counter()
            write_rows(group, rows, values, arrays=arrays)
            if r:
                times[name].append(time.perf_counter() - t)
            sizes[name] = sum(len(b) for b in chunk_files(path).values())
            if r == args.rounds:
                for key in ("checksum", f"{LEDGER_GROUP}/key"):
                    np.testing.assert_array_equal(group[key][...], values[key])
    print(
        f"a helloworld commit of {args.rows} rows in chunks of {args.chunk} "
        f"(3 products, 5 ledger arrays), medians of {args.rounds}:"
    )
    base = statistics.median(times["level 3 (zarr's default)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"  {name:26s} {med * 1e3:7.2f} ms   {med / base:.2f}x   "
            f"chunks {sizes[name] / 2**10:,.0f} KiB"
        )
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
