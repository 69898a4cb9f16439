"""Per-observation overhead of the mapper, and incremental reruns.

``python -m bench.mapper_overhead [--repeats 3] [--sizes 100,10000]``

1. N tiny observations (helloworld on run numbers) on one 2-worker LocalCluster:
   esap-dask's ``map_observations`` against the hand-written ``client.map`` +
   ``gather`` + ``xr.concat`` + ``to_zarr``, each in a fresh driver process (so its
   peak RSS is its own), repeated; medians, min, max and the speed-up ratio.
2. Driver peak RSS at the largest N against the smallest.
3. 10,000 small files: a first run, then a rerun with nothing changed and one with
   10 files touched, as a fraction of the first run's time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster

from bench.common import Record, report, run_driver, summarize
from esap_dask import map_observations


def overhead(address: str, sizes: list[int], repeats: int, work: Path) -> list[Record]:
    records = []
    rss: dict[int, list[float]] = {}
    for n in sizes:
        times: dict[str, list[float]] = {"esap": [], "handwritten": []}
        rss[n] = []
        for r in range(repeats):
            for mode in ("esap", "handwritten"):
                store = work / f"{mode}-{n}-{r}.zarr"
                out = run_driver("bench.mapper_driver", mode, address, str(n), str(store))
                times[mode].append(out["seconds"])
                if mode == "esap":
                    rss[n].append(out["peak_rss_mib"])
                shutil.rmtree(store, ignore_errors=True)
                shutil.rmtree(f"{store}.provenance", ignore_errors=True)
        records.append(
            summarize(
                f"overhead/{n} tiny observations",
                "seconds",
                "s",
                times["esap"],
                baseline=times["handwritten"],
            )
        )
        records.append(
            summarize(f"overhead/{n} tiny observations", "driver peak RSS", "MiB", rss[n])
        )
    small, large = min(sizes), max(sizes)
    records.append(
        summarize(
            f"overhead/RSS {large} vs {small}",
            "RSS ratio",
            "x",
            [a / b for a, b in zip(rss[large], rss[small], strict=True)],
        )
    )
    return records


def incremental(client: Client, repeats: int, work: Path, n: int = 10_000) -> list[Record]:
    inputs = work / "files"
    inputs.mkdir()
    for i in range(n):
        (inputs / f"obs{i:05d}.dat").write_bytes(b"x" * (100 + i % 50))
    pattern = str(inputs / "*.dat")
    first, none, ten = [], [], []
    for r in range(repeats):
        store = work / f"inc-{r}.zarr"
        first.append(map_observations("helloworld", pattern, store, client=client).seconds)
        none.append(map_observations("helloworld", pattern, store, client=client).seconds)
        later = time.time() + 10 + r
        for i in range(0, n, n // 10):
            os.utime(inputs / f"obs{i:05d}.dat", (later, later))
        s = map_observations("helloworld", pattern, store, client=client)
        assert s.processed == 10, s
        ten.append(s.seconds)
    case = f"incremental/{n} files"
    return [
        summarize(case, "first run", "s", first),
        summarize(case, "rerun unchanged", "s", none, baseline=first),
        summarize(case, "rerun 10 touched", "s", ten, baseline=first),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="100,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="esap-bench-") as tmp,
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        records = overhead(cluster.scheduler_address, sizes, args.repeats, Path(tmp))
        records += incremental(client, args.repeats, Path(tmp))
    report(records)
    print(
        "ratio = baseline median / esap-dask median (overhead: speed-up over hand-written "
        "client.map; incremental: first run / rerun)"
    )


if __name__ == "__main__":
    main()
