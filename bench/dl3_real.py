"""Benchmark: the 105 H.E.S.S. DL3 DR1 files through dl3-products, three ways, one run.

1. ``esap_dask.map_observations`` into a new Zarr store (ledger, provenance included);
2. a serial loop over the same per-file function in this process (compute only, and
   compute + ``xr.concat`` + ``to_zarr`` for the same end product);
3. hand-written ``client.map`` + ``gather`` + ``xr.concat`` + ``to_zarr``.

Both parallel ways share one ``LocalCluster`` (default: 2 worker processes, 1 thread
each). Each way is warmed up once, then timed ``--repeats`` times, the ways interleaved
in rotating order so that changes of the machine's load hit all of them alike; medians
are printed with their ratios. Also timed: an esap-dask rerun on a complete store (nothing to do).

    .venv/bin/python -m bench.dl3_real --repeats 5 [--no-record]

The figures are merged into ``bench/results.json`` (``bench.suite`` runs this module as
its ``dl3`` case) unless ``--no-record`` is given.

Data: HESS DL3 DR1, H.E.S.S. collaboration (read in place from ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import esap_dask
from esap_dask.pipeline import Schema

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hess-dl3-dr1"
HANDWRITTEN = "hand-written client.map + concat + to_zarr"


def to_dataset(results: Sequence[Mapping[str, Any]], ids: Sequence[str], schema: Schema) -> Any:
    """One xarray Dataset (``obs`` first) from per-observation result dicts."""
    per_obs = []
    for oid, result in zip(ids, results, strict=True):
        data = {v.name: (v.dims, np.asarray(result[v.name])) for v in schema.variables}
        per_obs.append(xr.Dataset(data).expand_dims(obs=[oid]))
    ds = xr.concat(per_obs, dim="obs")
    return ds.assign_coords({c.name: np.asarray(c.values) for c in schema.coords})


def timed(
    ways: Mapping[str, Callable[[], Any]], repeats: int, *, warm_up: bool = True
) -> dict[str, list[float]]:
    """Seconds of each way, ``repeats`` times, interleaved (load changes hit every way alike)."""
    for fn in ways.values() if warm_up else ():
        fn()  # warm-up: imports on the workers, file cache
    out: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            ways[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--no-record", action="store_true", help="do not merge the figures into bench/results.json"
    )
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    files = sorted(str(p) for p in (args.data / "data").glob("*.fits.gz"))
    ids = [Path(f).name for f in files]
    pipeline = esap_dask.get_pipeline("dl3-products")
    params = pipeline.resolve({})
    schema = pipeline.output_schema(params)
    fn = pipeline.function
    work = Path(tempfile.mkdtemp(prefix="dl3-bench-"))
    counter = iter(range(10**6))

    def fresh(name: str) -> Path:
        return work / f"{name}-{next(counter)}.zarr"

    def serial_compute() -> None:
        for f in files:
            fn(f, **params)

    def serial_store() -> None:
        to_dataset([fn(f, **params) for f in files], ids, schema).to_zarr(fresh("serial"))

    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as lc,
        Client(lc) as client,
    ):

        def esap() -> None:
            summary = esap_dask.map_observations(
                pipeline, files, fresh("esap"), client=client, progress=False
            )
            assert summary.succeeded == len(files), summary.failures

        complete = fresh("esap-complete")
        esap_dask.map_observations(pipeline, files, complete, client=client, progress=False)

        def esap_rerun() -> None:
            summary = esap_dask.map_observations(
                pipeline, files, complete, client=client, progress=False
            )
            assert summary.processed == 0

        def client_map() -> None:
            futures = client.map(fn, files, pure=False, **params)
            results = client.gather(futures)
            to_dataset(results, ids, schema).to_zarr(fresh("clientmap"))

        rows = timed(
            {
                "esap-dask map_observations": esap,
                HANDWRITTEN: client_map,
                "serial loop, compute only": serial_compute,
                "serial loop + concat + to_zarr": serial_store,
                "esap-dask rerun, nothing to do": esap_rerun,
            },
            args.repeats,
        )
    shutil.rmtree(work, ignore_errors=True)

    medians = {k: statistics.median(v) for k, v in rows.items()}
    base = medians["esap-dask map_observations"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{len(files)} H.E.S.S. DL3 DR1 files, {args.workers} workers x 1 thread, "
        f"median of {args.repeats} interleaved (after one warm-up); {os.cpu_count()} cores, "
        f"load average {load} at the end"
    )
    print(
        f"{'way':45s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'files/s':>8s} {'vs esap':>8s}"
    )
    for name, values in rows.items():
        m = medians[name]
        print(
            f"{name:45s} {m:9.3f} {min(values):7.3f} {max(values):7.3f} "
            f"{len(files) / m:8.1f} {m / base:7.2f}x"
        )
    if not args.no_record:
        record(rows, len(files))


def record(rows: Mapping[str, list[float]], n: int) -> None:
    """Merge the figures into ``bench/results.json`` (the suite's table; ratio = baseline/value)."""
    if not __package__:  # run as a script, not as ``python -m bench.dl3_real``
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import report, summarize

    case = f"dl3/hess-dr1-{n}"
    esap = rows["esap-dask map_observations"]
    hand, serial = rows[HANDWRITTEN], rows["serial loop + concat + to_zarr"]
    report(
        [
            summarize(case, "vs client.map", "s", esap, baseline=hand),
            summarize(case, "vs serial", "s", esap, baseline=serial),
            summarize(
                case, "vs serial compute", "s", esap, baseline=rows["serial loop, compute only"]
            ),
            summarize(case, "esap time", "s", esap),
            summarize(case, "handwritten time", "s", hand),
            summarize(case, "serial time", "s", serial),
            summarize(
                case, "rerun unchanged", "s", rows["esap-dask rerun, nothing to do"], baseline=esap
            ),
        ]
    )
    print("ratio = baseline median / esap-dask median (above 1: esap-dask is faster)")


if __name__ == "__main__":
    main()
