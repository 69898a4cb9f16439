"""Scheduler load (suite case 6): observations per second as the batch size varies.

``python -m bench.batch_size [--repeats 9] [--count 20000]``

For each batch size b, a new store with b observations a chunk and tasks of b
observations (helloworld on run numbers, 2-worker LocalCluster); then the automatic
choice (chunk and batch size left to esap-dask), which must sit within 10% of the best.
A run takes half a second and run-to-run noise on a shared 2-core machine is ±10%, so
the contenders (1,000 observations a task and more, and the automatic choice) run
``--repeats`` times in a rotating order; the small sizes, far from the best (one of them
takes 25 s a run), run 3 times to draw the curve.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from distributed import Client, LocalCluster

from bench.common import Record, report, summarize
from esap_dask import map_observations

SMALL = (10, 100)
CONTENDERS = (1000, 2500, 5000, 10_000)


def run(repeats: int, count: int) -> list[Record]:
    """Observations per second per batch size, and the automatic choice against the best."""
    keys = [str(b) for b in (*SMALL, *CONTENDERS)] + ["auto"]
    rates: dict[str, list[float]] = {key: [] for key in keys}
    contenders = [str(b) for b in CONTENDERS] + ["auto"]
    with (
        tempfile.TemporaryDirectory(prefix="esap-bench-") as tmp,
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):

        def once(key: str, r: int) -> None:
            b = None if key == "auto" else int(key)
            store = Path(tmp) / f"b{key}-{r}.zarr"
            s = map_observations(
                "helloworld",
                range(count),
                store,
                client=client,
                chunk=b,
                batch_size=b,
                progress=False,
            )
            assert s.succeeded == count, s
            rates[key].append(count / s.seconds)
            shutil.rmtree(store)
            shutil.rmtree(f"{store}.provenance")

        for r in range(repeats):
            k = r % len(contenders)
            for key in contenders[k:] + contenders[:k]:
                once(key, r)
            if r < 3:
                for key in map(str, SMALL):
                    once(key, r)
    case = f"batch size/{count} tiny observations"
    records = [summarize(case, f"batch {key}", "obs/s", rates[key]) for key in keys]
    best = max(records[:-1], key=lambda rec: rec.value)
    auto = records[-1]
    auto.baseline, auto.ratio = best.value, auto.value / best.value
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    report(run(args.repeats, args.count))
    print("auto ratio = automatic obs/s / best fixed batch size's obs/s (target >= 0.9)")


if __name__ == "__main__":
    main()
