"""Real-sized synthetic files (suite case 2) and the speed-up from 1 to 2 workers.

``python -m bench.scaling [--count 1000] [--events 20000] [--repeats 3]``

Synthetic GADF event lists of realistic size (``--events`` per file; 20,000 events give
files of about the size of the H.E.S.S. DR1 ones) through ``dl3-products``: esap-dask on
one worker and on two, the hand-written ``client.map`` + ``gather`` + ``xr.concat`` +
``to_zarr`` on two, and a serial loop that writes one store at the end. Each way runs in
turn, repeated, rotating the order; medians, with the ratios of the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from distributed import Client, LocalCluster

import esap_dask
from bench.common import Record, report, summarize
from bench.dl3_real import HANDWRITTEN, timed, to_dataset
from esap_dask.synthetic import write_observations


def run(count: int, events: int, repeats: int) -> list[Record]:
    """Seconds per way; speed-up of esap-dask from 1 to 2 workers."""
    work = Path(tempfile.mkdtemp(prefix="esap-scaling-"))
    files = [str(f) for f in write_observations(work / "obs", count, seed=7, n_events=events)]
    ids = [Path(f).name for f in files]
    pipeline = esap_dask.get_pipeline("dl3-products")
    params = pipeline.resolve({})
    schema = pipeline.output_schema(params)
    counter = iter(range(10**6))
    try:
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as one, \
                LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as two, \
                Client(one, set_as_default=False) as c1, Client(two, set_as_default=False) as c2:

            def esap(client: Client) -> None:
                s = esap_dask.map_observations(pipeline, files, work / f"e{next(counter)}.zarr",
                                               client=client, progress=False)
                assert s.succeeded == count, s.failures[:3]

            def handwritten() -> None:
                results = c2.gather(c2.map(pipeline.function, files, pure=False, **params))
                to_dataset(results, ids, schema).to_zarr(work / f"h{next(counter)}.zarr")

            def serial() -> None:
                results = [pipeline.function(f, **params) for f in files]
                to_dataset(results, ids, schema).to_zarr(work / f"s{next(counter)}.zarr")

            rows = timed({"esap 2 workers": lambda: esap(c2), "esap 1 worker": lambda: esap(c1),
                          HANDWRITTEN: handwritten, "serial": serial}, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    case = f"dl3/{count} synthetic files of {events} events"
    two_w = rows["esap 2 workers"]
    return [
        summarize(case, "vs client.map", "s", two_w, baseline=rows[HANDWRITTEN]),
        summarize(case, "vs serial", "s", two_w, baseline=rows["serial"]),
        summarize(case, "speed-up 1 -> 2 workers", "s", two_w, baseline=rows["esap 1 worker"]),
        summarize(case, "esap 1 worker time", "s", rows["esap 1 worker"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report(run(args.count, args.events, args.repeats))
    print("ratio = baseline median / esap-dask (2 workers) median; the speed-up is "
          "1-worker time / 2-worker time (2.0 would be linear)")


if __name__ == "__main__":
    main()
