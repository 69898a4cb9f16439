"""Per-observation overhead of the mapper (suite case 1) and incremental reruns (case 4).

``python -m bench.mapper_overhead [--repeats 3] [--sizes 100,1000,10000,100000]``

1. N tiny observations (helloworld on run numbers) on one 2-worker LocalCluster:
   esap-dask's ``map_observations`` against the hand-written ``client.map`` + ``gather`` +
   ``xr.concat`` + ``to_zarr`` and against a serial loop; each in a fresh driver
   process, so its peak RSS is its own. Above ``--repeat-handwritten-up-to``
   observations the hand-written way runs once (at 100,000: one task per observation
   and a 100,000-way concat, 3.5 minutes and 1.3 GiB), and its metric says so.
2. Incremental reruns over N small files: nothing changed, and 1% touched, against the
   first run's time, and against the least any change detection must do: list the
   directory and ``stat`` every file (measured in the same run). Over tiny files whose
   processing costs nothing, that floor alone is ~6% of a first run here (2 µs a
   ``stat`` on this VM); with real work per file (``bench.scaling``) a rerun is far
   below 5%.
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

MODES = ("esap", "handwritten", "serial")


def overhead(
    address: str, sizes: list[int], repeats: int, work: Path, repeat_handwritten: int
) -> list[Record]:
    """Case 1: seconds and driver peak RSS per mode and size."""
    records = []
    for n in sizes:
        times: dict[str, list[float]] = {m: [] for m in MODES}
        rss: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(repeats):
            modes = [m for m in MODES if m != "handwritten" or n <= repeat_handwritten or r == 0]
            for mode in modes:
                store = work / f"{mode}-{n}-{r}.zarr"
                out = run_driver("bench.mapper_driver", mode, address, str(n), str(store))
                times[mode].append(out["seconds"])
                rss[mode].append(out["peak_rss_mib"])
                shutil.rmtree(store, ignore_errors=True)
                shutil.rmtree(f"{store}.provenance", ignore_errors=True)
        case = f"overhead/{n}"
        once = "" if len(times["handwritten"]) == repeats else " (client.map once)"
        records.append(
            summarize(
                case, f"vs client.map{once}", "s", times["esap"], baseline=times["handwritten"]
            )
        )
        records.append(summarize(case, "vs serial", "s", times["esap"], baseline=times["serial"]))
        for mode in MODES:
            records.append(summarize(case, f"{mode} RSS", "MiB", rss[mode]))
            records.append(summarize(case, f"{mode} time", "s", times[mode]))
    return records


def stat_floor(directory: Path) -> float:
    """Seconds to list ``directory`` and stat every file: the floor of any rerun."""
    t0 = time.perf_counter()
    prefix = f"{directory}/"
    for name in sorted(os.listdir(directory)):
        os.stat(prefix + name)
    return time.perf_counter() - t0


def incremental(client: Client, sizes: list[int], repeats: int, work: Path) -> list[Record]:
    """Case 4: rerun with nothing changed and with 1% of the files touched."""
    records = []
    for n in sizes:
        inputs = work / f"files-{n}"
        inputs.mkdir()
        for i in range(n):
            (inputs / f"obs{i:06d}.dat").write_bytes(b"x" * (100 + i % 50))
        pattern = str(inputs / "*.dat")
        first, none, some, floor = [], [], [], []
        for r in range(repeats):
            store = work / f"inc-{n}-{r}.zarr"
            first.append(map_observations("helloworld", pattern, store, client=client).seconds)
            none.append(map_observations("helloworld", pattern, store, client=client).seconds)
            floor.append(stat_floor(inputs))
            later = time.time() + 10 + r
            for i in range(0, n, 100):
                os.utime(inputs / f"obs{i:06d}.dat", (later, later))
            s = map_observations("helloworld", pattern, store, client=client)
            assert s.processed == n // 100, s
            some.append(s.seconds)
            shutil.rmtree(store)
        shutil.rmtree(inputs)
        case = f"incremental/{n} tiny files (helloworld)"
        records += [
            summarize(case, "first run", "s", first),
            summarize(case, "rerun unchanged", "s", none, baseline=first),
            summarize(case, "stat floor / rerun unchanged", "s", none, baseline=floor),
            summarize(case, "rerun 1% touched", "s", some, baseline=first),
        ]
    return records


def run(
    repeats: int, sizes: list[int], repeat_handwritten: int, incremental_sizes: list[int]
) -> list[Record]:
    """Both cases on one 2-worker LocalCluster."""
    with (
        tempfile.TemporaryDirectory(prefix="esap-bench-") as tmp,
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        records = overhead(cluster.scheduler_address, sizes, repeats, Path(tmp), repeat_handwritten)
        records += incremental(client, incremental_sizes, repeats, Path(tmp))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--repeat-handwritten-up-to", type=int, default=10_000)
    parser.add_argument("--incremental-sizes", default="10000,100000")
    args = parser.parse_args()
    report(
        run(
            args.repeats,
            [int(s) for s in args.sizes.split(",")],
            args.repeat_handwritten_up_to,
            [int(s) for s in args.incremental_sizes.split(",")],
        )
    )
    print(
        "ratio = baseline median / esap-dask median: above 1, esap-dask is faster; "
        "for reruns, first run / rerun"
    )


if __name__ == "__main__":
    main()
