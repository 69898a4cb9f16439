"""Write throughput for large products (suite case 3): esap-dask's store vs raw numpy -> zarr.

``python -m bench.write_throughput [--repeats 3] [--count 16] [--size-mb 32]``

Both sides generate the same pseudo-random float32 images (incompressible, so the disk and
the codec pipeline are measured, not zstd's luck) and write them with the same codec and one
observation a chunk. Raw is a loop in one process writing a zarr array; esap-dask maps the
``bench-large`` pipeline with one worker (the same CPU as raw) and with two.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from distributed import Client, LocalCluster

from bench.common import Record, report, summarize
from esap_dask import map_observations

PIPELINE = str(Path(__file__).parent / "pipelines" / "large.py")


def raw(path: Path, count: int, size_mb: int) -> float:
    """Seconds to generate and write ``count`` images into a plain zarr array."""
    from bench.pipelines.large import ROWS, columns, image

    t0 = time.perf_counter()
    arr = zarr.create_array(
        str(path),
        shape=(count, ROWS, columns(size_mb)),
        dtype="float32",
        chunks=(1, ROWS, columns(size_mb)),
        zarr_format=3,
    )
    for run in range(count):
        arr[run] = image(run, size_mb=size_mb)["image"]
    return time.perf_counter() - t0


def esap(path: Path, count: int, size_mb: int, workers: int) -> float:
    """Seconds for map_observations of the same images on ``workers`` workers."""
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, dashboard_address=":0", memory_limit=None
        ) as cluster,
        Client(cluster) as client,
    ):
        t0 = time.perf_counter()
        s = map_observations(
            PIPELINE, range(count), path, client=client, params={"size_mb": size_mb}, progress=False
        )
        seconds = time.perf_counter() - t0
    assert s.succeeded == count, s
    return seconds


def run(repeats: int, count: int, size_mb: int) -> list[Record]:
    """MB/s of raw, esap-dask on 1 worker and on 2, with ratios against raw."""
    total_mb = count * size_mb
    t_raw, t_one, t_two = [], [], []
    with tempfile.TemporaryDirectory(prefix="esap-bench-") as tmp:
        for r in range(repeats):
            for times, fn in (
                (t_raw, lambda p: raw(p, count, size_mb)),
                (t_one, lambda p: esap(p, count, size_mb, 1)),
                (t_two, lambda p: esap(p, count, size_mb, 2)),
            ):
                path = Path(tmp) / f"w{r}-{len(times)}.zarr"
                times.append(fn(path))
                shutil.rmtree(path, ignore_errors=True)
                shutil.rmtree(f"{path}.provenance", ignore_errors=True)
    rate = [total_mb / t for t in t_raw]
    case = f"write/{count} x {size_mb} MiB"
    # ratio = esap MB/s / raw MB/s (higher is better; the target is >= 0.7)
    one = summarize(case, "esap 1 worker", "MiB/s", [total_mb / t for t in t_one])
    two = summarize(case, "esap 2 workers", "MiB/s", [total_mb / t for t in t_two])
    base = float(np.median(rate))
    for rec in (one, two):
        rec.baseline, rec.ratio = base, rec.value / base
    return [summarize(case, "raw numpy->zarr", "MiB/s", rate), one, two]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size-mb", type=int, default=32)
    args = parser.parse_args()
    report(run(args.repeats, args.count, args.size_mb))
    print("ratio = esap-dask MiB/s / raw MiB/s (target >= 0.7)")


if __name__ == "__main__":
    main()
