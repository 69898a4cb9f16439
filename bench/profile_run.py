"""Where a run's time goes: pyinstrument on the driver, cProfile on the workers.

``python -m bench.profile_run [--n 10000] [--files] [--top 25] [--rounds 3]``
``python -m bench.profile_run --pipeline dl3-products --glob 'HESS_DIR/*.fits.gz'``

Starts a LocalCluster of 2 workers x 1 thread, warms it up with one run, then profiles
``--rounds`` runs of ``map_observations("helloworld", ...)`` into fresh stores: the driver
under pyinstrument (the last round's tree is printed), the workers' batch tasks under
cProfile (every batch of every round, summed per worker, the top functions by cumulative
and by own time printed). ``--files`` maps tiny files instead of values. The profiles of
docs/benchmarks/profiles.md come from this command.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

WORKERS = 2


def _install_profiler() -> str:
    """On a worker: wrap the batch task in cProfile (tasks look it up by module and name)."""
    import esap_dask.engine.task as task

    if getattr(task, "_bench_profile", None) is None:
        original = task.run_batch
        prof = cProfile.Profile()

        def profiled(*args: Any, **kwargs: Any) -> Any:
            prof.enable()
            try:
                return original(*args, **kwargs)
            finally:
                prof.disable()

        profiled.__module__, profiled.__qualname__ = original.__module__, original.__qualname__
        task._bench_profile = prof  # type: ignore[attr-defined]
        task.run_batch = profiled  # type: ignore[assignment]
    return "ok"


def _worker_stats(top: int) -> str:
    import esap_dask.engine.task as task

    prof = getattr(task, "_bench_profile", None)
    if prof is None:
        return "(no profile)"
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--files", action="store_true", help="tiny files instead of values")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-workers", action="store_true", help="driver profile only")
    parser.add_argument("--pipeline", default="helloworld", help="a catalog pipeline")
    parser.add_argument("--glob", help="observation files (instead of --n values)")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*filter(None, [os.environ.get("PYTHONPATH")]), str(Path(__file__).parents[1])]
    )
    from distributed import Client, LocalCluster
    from pyinstrument import Profiler

    import esap_dask

    work = Path(tempfile.mkdtemp(prefix="esap-profile-"))
    items: list[Any] = list(range(1, args.n + 1))
    if args.glob:
        import glob

        items = sorted(glob.glob(args.glob))
    elif args.files:
        d = work / "files"
        d.mkdir()
        items = []
        for i in range(args.n):
            f = d / f"obs{i:06d}.dat"
            f.write_bytes(b"x" * (100 + i % 50))
            items.append(str(f))
    try:
        with (
            LocalCluster(n_workers=WORKERS, threads_per_worker=1, dashboard_address=":0") as lc,
            Client(lc) as client,
        ):
            esap_dask.map_observations(args.pipeline, items, work / "warm.zarr", progress=False)
            if not args.no_workers:
                client.run(_install_profiler)
            seconds = []
            for r in range(args.rounds):
                store = work / f"r{r}.zarr"
                profiler = Profiler(interval=0.0005)
                profiler.start()
                t0 = time.perf_counter()
                esap_dask.map_observations(args.pipeline, items, store, progress=False)
                seconds.append(time.perf_counter() - t0)
                profiler.stop()
            t0 = time.perf_counter()
            esap_dask.map_observations(args.pipeline, items, work / "r0.zarr", progress=False)
            rerun = time.perf_counter() - t0
            print(f"load {os.getloadavg()}; runs {[round(s, 3) for s in seconds]} s;")
            print(f"unchanged rerun {rerun:.3f} s")
            print("=== driver (pyinstrument, last round) ===")
            every = bool(os.environ.get("PROFILE_ALL"))  # PROFILE_ALL=1: every frame, none hidden
            print(profiler.output_text(unicode=False, color=False, show_all=every))
            if not args.no_workers:
                for worker, text in client.run(_worker_stats, args.top).items():
                    print(f"=== worker {worker} (cProfile, every batch of {args.rounds} runs) ===")
                    print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
