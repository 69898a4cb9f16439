"""One batch task of a real run, run again alone in this process and timed in its parts.

``python -m bench.task_alone [--case tiny|tiny-files|tiny-100k|hess|realistic] [--rounds 7]
[--profile 25]``

Runs ``map_observations`` once on a cluster whose one worker thread lives in this process
(``Client(processes=False)``), keeps the largest batch task it ran (its run context and
batch), then runs that task again ``--rounds`` times in this thread, rewriting the same
rows: no scheduler, no other worker and no driver compete for the CPU, so what it prints
is the task's own cost per row, and within it the pipeline's loop (``_run_rows``), each
input file's check and checksum (``open_input``), the commit (``write_rows``) and the
provenance part (``_write_part``, beside the commit). Medians of µs per row, with the
load average. In a run on 2 cores, the same parts take longer: compare with
``python -m bench.phases``. With ``--profile N``, one more round under cProfile, its top
``N`` functions by own time (the commit's thread is not profiled).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ab import CASES, observations
from bench.phases import _timed

PARTS = ("_run_rows", "open_input", "write_rows", "_write_part")


def _keep(ctx: Any, batch: Any) -> Any:
    """The batch task, as the worker thread runs it: kept, then run."""
    import esap_dask.engine.task as task

    if isinstance(ctx, task.SharedContext):
        ctx = ctx.ctx
    if isinstance(batch, task.PackedBatch):
        batch = batch.unpack()
    task._bench_kept.append((ctx, batch))  # type: ignore[attr-defined]
    return task._bench_run_batch(ctx, batch)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny-files", choices=CASES)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="top N, cProfile")
    args = parser.parse_args()
    from distributed import Client

    import esap_dask
    import esap_dask.engine.execute as execute
    import esap_dask.engine.task as task

    run_batch = task.run_batch
    task._bench_kept, task._bench_run_batch = [], run_batch  # type: ignore[attr-defined]
    execute.run_batch = _keep  # type: ignore[assignment]  # what execute submits
    work = Path(tempfile.mkdtemp(prefix="esap-bench-task-"))
    try:
        pipeline, items = observations(args.case, work)
        with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0"):
            esap_dask.map_observations(pipeline, items, str(work / "s.zarr"), progress=False)
        execute.run_batch = run_batch
        kept: list[tuple[Any, Any]] = task._bench_kept  # type: ignore[attr-defined]
        ctx, batch = max(kept, key=lambda kb: len(kb[1].rows))
        # alone: the store exists, and no scheduler keeps the starts
        ctx = dataclasses.replace(ctx, store_pending=False, track_starts=False)
        # every row of it: with a probe, a task of work that is not tiny stops after its
        # first write unit, and its time a row would be counted over rows it did not run
        batch = dataclasses.replace(batch, probe=0)
        if ctx.provenance_parts:
            os.makedirs(ctx.provenance_parts, exist_ok=True)
        seconds: dict[str, float] = {}
        for name in PARTS:
            _timed(task, name, seconds, name)
        whole = []
        n = len(batch.rows)
        for _ in range(args.rounds):
            t = time.perf_counter()
            run_batch(ctx, batch)
            whole.append(time.perf_counter() - t)
        seconds = dict(seconds)  # the timed rounds only: not the profiled one
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.runcall(run_batch, ctx, batch)
            pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.case}: {pipeline}, one task of {n:,} rows run alone {args.rounds} times")
    print(f"  {'run_batch (median)':22s} {statistics.median(whole) / n * 1e6:8.1f} µs a row")
    for name in PARTS:
        if name in seconds:
            print(f"  {name + ' (mean)':22s} {seconds[name] / args.rounds / n * 1e6:8.1f} µs a row")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
