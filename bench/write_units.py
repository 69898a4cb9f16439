"""Write-unit size on realistic work: the automatic chunk against finer ones.

``python -m bench.write_units [--repeats 3] [--count 2000]``

A run's tasks own whole write units (chunks along ``obs``), so the unit is the finest
grain the last tasks of a run can be cut to. The automatic chunk holds about
``n / (4 x threads)`` observations (at most 8 MiB of products); this times
``dl3-products`` over ``--count`` synthetic GADF files of 20,000 events (as the peers'
realistic case) with that chunk and with ``n / (8 x threads)`` and
``n / (16 x threads)``, on one 2-worker LocalCluster, in rotating order, and prints each
one's median against the automatic one's (ratio above 1: the finer unit is slower).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from pathlib import Path

from distributed import Client, LocalCluster

from bench.common import Record, report, summarize
from esap_dask import map_observations

THREADS = 2
FACTORS = (4, 8, 16)


def run(repeats: int, count: int) -> list[Record]:
    """Seconds per run for each write-unit factor; ratios against the automatic chunk."""
    from esap_dask.iact.synthetic import write_observations

    seconds: dict[int, list[float]] = {f: [] for f in FACTORS}
    with (
        tempfile.TemporaryDirectory(prefix="esap-bench-units-") as tmp,
        LocalCluster(n_workers=THREADS, threads_per_worker=1, dashboard_address=":0") as lc,
        Client(lc) as client,
    ):
        files = [
            str(p) for p in write_observations(Path(tmp) / "gadf", count, seed=7, n_events=20_000)
        ]
        map_observations("dl3-products", files[:100], Path(tmp) / "warm.zarr", client=client)
        for r in range(repeats):
            k = r % len(FACTORS)
            for f in FACTORS[k:] + FACTORS[:k]:
                chunk = None if f == 4 else math.ceil(count / (f * THREADS))
                store = Path(tmp) / f"u{f}-{r}.zarr"
                s = map_observations(
                    "dl3-products", files, store, client=client, chunk=chunk, progress=False
                )
                assert s.succeeded == count, s
                seconds[f].append(s.seconds)
                shutil.rmtree(store)
                shutil.rmtree(f"{store}.provenance")
                print(f"round {r + 1}: n/({f}·threads) {s.seconds:.2f} s", flush=True)
    case = f"write units/{count} realistic GADF files"
    auto = seconds[4]
    records = [summarize(case, "automatic chunk n/(4 threads)", "s", auto)]
    for f in FACTORS[1:]:
        rec = summarize(case, f"chunk n/({f} threads)", "s", seconds[f], auto)
        rec.ratio = rec.value / rec.baseline if rec.baseline else None
        records.append(rec)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    report(run(args.repeats, args.count))
    print(f"load average after: {os.getloadavg()}")
    print("ratio = finer unit's median seconds / automatic chunk's (above 1: finer is slower)")


if __name__ == "__main__":
    main()
