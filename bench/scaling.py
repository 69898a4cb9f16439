"""Real-sized synthetic files (suite cases 2 and 4): 1 and 2 workers, peers, and reruns.

``python -m bench.scaling [--count 10000] [--events 20000] [--repeats 3]
[--incremental-count 100000] [--incremental-events 1000]``

1. Synthetic GADF event lists of realistic size (``--events`` per file; 20,000 events
   give files of about the size of the H.E.S.S. DR1 ones) through ``dl3-products``:
   esap-dask on one worker and on two, the hand-written ``client.map`` + ``gather`` +
   ``xr.concat`` + ``to_zarr`` on two, and a serial loop that writes one store at the
   end. Each way runs in turn, repeated, rotating the order; medians, with the ratios of
   the same run. Each way is warmed up first on 100 of the files; every way's time
   includes writing its store.
2. Incremental reruns with real work per file: every store of the 2-worker runs above
   is rerun with nothing changed, then with 1% of the files touched, against its first
   run; and the same at ``--incremental-count`` smaller files (one first run each).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from distributed import Client, LocalCluster

import esap_dask
from bench.common import Record, report, summarize
from bench.dl3_real import HANDWRITTEN, timed, to_dataset
from esap_dask.iact.synthetic import write_observations

PIPELINE = "dl3-products"


def touch_one_percent(files: Sequence[str], shift: float) -> int:
    """Give every 100th file a new modification time; return how many."""
    later = time.time() + shift
    for f in files[::100]:
        os.utime(f, (later, later))
    return len(files[::100])


def reruns(
    client: Client,
    files: Sequence[str],
    stores: Sequence[Path],
    first: Sequence[float],
    case: str,
) -> list[Record]:
    """Rerun every store unchanged, then with 1% touched; seconds against its first run."""
    unchanged = []
    for store in stores:
        s = esap_dask.map_observations(PIPELINE, files, store, client=client, progress=False)
        assert s.processed == 0, s
        unchanged.append(s.seconds)
    touched = touch_one_percent(files, 10)
    some = []
    for store in stores:
        s = esap_dask.map_observations(PIPELINE, files, store, client=client, progress=False)
        assert s.processed == touched and s.ok, s
        some.append(s.seconds)
    return [
        summarize(case, "first run", "s", first),
        summarize(case, "rerun unchanged", "s", unchanged, baseline=first),
        summarize(case, "rerun 1% touched", "s", some, baseline=first),
    ]


def run(count: int, events: int, repeats: int) -> list[Record]:
    """Seconds per way; speed-up of esap-dask from 1 to 2 workers; reruns."""
    work = Path(tempfile.mkdtemp(prefix="esap-scaling-"))
    files = [str(f) for f in write_observations(work / "obs", count, seed=7, n_events=events)]
    ids = [Path(f).name for f in files]
    pipeline = esap_dask.get_pipeline(PIPELINE)
    params = pipeline.resolve({})
    schema = pipeline.output_schema(params)
    counter = iter(range(10**6))
    two_worker_stores: list[Path] = []
    try:
        with (
            LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as one,
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as two,
            Client(one, set_as_default=False) as c1,
            Client(two, set_as_default=False) as c2,
        ):

            def esap(client: Client, subset: Sequence[str] = files) -> None:
                store = work / f"e{next(counter)}.zarr"
                s = esap_dask.map_observations(
                    pipeline, subset, store, client=client, progress=False
                )
                assert s.succeeded == len(subset), s.failures[:3]
                if client is c2 and subset is files:
                    two_worker_stores.append(store)

            def handwritten(subset: Sequence[str] = files) -> None:
                results = c2.gather(c2.map(pipeline.function, subset, pure=False, **params))
                store = work / f"h{next(counter)}.zarr"
                to_dataset(results, ids[: len(subset)], schema).to_zarr(store)

            def serial(subset: Sequence[str] = files) -> None:
                results = [pipeline.function(f, **params) for f in subset]
                store = work / f"s{next(counter)}.zarr"
                to_dataset(results, ids[: len(subset)], schema).to_zarr(store)

            few = files[:100]
            for warm in (
                lambda: esap(c2, few),
                lambda: esap(c1, few),
                lambda: handwritten(few),
                lambda: serial(few),
            ):
                warm()  # imports on the workers; the page cache is warm from writing
            rows = timed(
                {
                    "esap 2 workers": lambda: esap(c2),
                    "esap 1 worker": lambda: esap(c1),
                    HANDWRITTEN: handwritten,
                    "serial": serial,
                },
                repeats,
                warm_up=False,
            )
            case = f"dl3/{count} synthetic files of {events} events"
            two_w = rows["esap 2 workers"]
            records = [
                summarize(case, "vs client.map", "s", two_w, baseline=rows[HANDWRITTEN]),
                summarize(case, "vs serial", "s", two_w, baseline=rows["serial"]),
                summarize(
                    case, "speed-up 1 -> 2 workers", "s", two_w, baseline=rows["esap 1 worker"]
                ),
                summarize(case, "esap 1 worker time", "s", rows["esap 1 worker"]),
            ]
            assert len(two_worker_stores) == len(two_w)  # made in the order of their timings
            records += reruns(
                c2, files, two_worker_stores, two_w, f"incremental/{count} GADF files ({PIPELINE})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return records


def incremental(count: int, events: int) -> list[Record]:
    """Reruns over ``count`` real files with one first run (a 100,000-file run takes minutes)."""
    work = Path(tempfile.mkdtemp(prefix="esap-incremental-"))
    try:
        files = [str(f) for f in write_observations(work / "obs", count, seed=3, n_events=events)]
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cl,
            Client(cl, set_as_default=False) as client,
        ):
            store = work / "run.zarr"
            s = esap_dask.map_observations(PIPELINE, files, store, client=client, progress=False)
            assert s.ok and s.succeeded == count, s.failures[:3]
            return reruns(
                client, files, [store], [s.seconds], f"incremental/{count} GADF files ({PIPELINE})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--incremental-count",
        type=int,
        default=100_000,
        help="files of the one-first-run rerun case (0: leave it out)",
    )
    parser.add_argument("--incremental-events", type=int, default=1000)
    args = parser.parse_args()
    records = run(args.count, args.events, args.repeats)
    if args.incremental_count:
        records += incremental(args.incremental_count, args.incremental_events)
    report(records)
    print(
        "ratio = baseline median / esap-dask (2 workers) median; the speed-up is "
        "1-worker time / 2-worker time (2.0 would be linear); for reruns, first run / rerun"
    )


if __name__ == "__main__":
    main()
