"""Where the workers' CPU goes, thread by thread: esap-dask against a batched ``client.map``.

``python -m bench.worker_cpu [--case tiny-files|tiny|hess|...] [--rounds 10]``

Starts one LocalCluster of 2 workers x 1 thread (the scheduler in this process, as
``bench.peers`` has it in a process of its own), warms both contenders up, then runs
``--rounds`` rounds, each running the case once with esap-dask (``map_observations``) and
once as ``bench.peers``' batched ``client.map`` (4 tasks a worker, then the driver writes
the store with xarray), in alternating order. Around each run it reads the CPU seconds
(user + system, ``/proc/<pid>/task/<tid>/stat``) of every thread of both workers, and of
this process (the driver and the scheduler). Prints, per worker and run (medians): the
task thread (``Dask-Default-Threads``), the event loop (``MainThread``), zarr's I/O
thread, the threads that ended during the run (a task's commit thread: the process's
CPU less its threads'), the worker's total; and the driver's CPU and the wall time.

On 2 cores, with both busy, a run cannot take less wall time than half its CPU seconds:
this is where the gap between esap-dask and the peers, or the lead, comes from. Nothing
is written to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.ab import CASES, observations
from bench.peers import TASKS_PER_WORKER, WORKERS, _concat, batches, obs_id, run_batch, write_store

_TICK = os.sysconf("SC_CLK_TCK")
ESAP, BATCHED = "esap-dask", "batched client.map"


def _cpu(stat: str) -> float:
    """User + system seconds from a ``/proc/.../stat`` line."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def threads_cpu(pid: int) -> tuple[float, dict[str, float]]:
    """The CPU seconds of process ``pid``, and of each of its live threads by thread id."""
    with open(f"/proc/{pid}/stat") as f:
        total = _cpu(f.read())
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                out[tid] = _cpu(f.read())
        except FileNotFoundError:  # ended meanwhile
            continue
    return total, out


def thread_names() -> dict[int, str]:
    """Run on a worker: its live threads' names by native id, digits dropped."""
    import threading

    return {
        t.native_id or 0: re.sub(r"[-_]?\d+", "", t.name).strip("-_ ") or "unnamed"
        for t in threading.enumerate()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny-files", choices=CASES)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    import esap_dask

    work = Path(tempfile.mkdtemp(prefix="esap-bench-cpu-"))
    pipeline, items = observations(args.case, work)
    items = list(items)
    ids = [obs_id(x) for x in items]
    n_tasks = WORKERS * TASKS_PER_WORKER
    per: dict[str, dict[str, list[float]]] = {ESAP: defaultdict(list), BATCHED: defaultdict(list)}
    try:
        with (
            LocalCluster(
                n_workers=WORKERS, threads_per_worker=1, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):

            def esap(store: Path) -> None:
                esap_dask.map_observations(pipeline, items, store, client=client, progress=False)

            def batched(store: Path) -> None:
                futures = client.map(
                    run_batch, [pipeline] * n_tasks, batches(items, n_tasks), pure=False
                )
                write_store(str(store), pipeline, ids, _concat(client.gather(futures)))

            runs: dict[str, Callable[[Path], None]] = {ESAP: esap, BATCHED: batched}
            for name, run in runs.items():
                run(work / f"warm-{len(name)}.zarr")
            pids: dict[str, int] = client.run(os.getpid)
            me = os.getpid()
            for r in range(args.rounds):
                order = list(runs) if r % 2 == 0 else list(reversed(runs))
                for name in order:
                    before = {w: threads_cpu(p) for w, p in pids.items()}
                    driver0, t0 = threads_cpu(me)[0], time.perf_counter()
                    runs[name](work / f"r{r}-{len(name)}.zarr")
                    wall, driver = time.perf_counter() - t0, threads_cpu(me)[0] - driver0
                    after = {w: threads_cpu(p) for w, p in pids.items()}
                    names = client.run(thread_names)
                    shares: dict[str, float] = defaultdict(float)
                    for w in pids:
                        total = after[w][0] - before[w][0]
                        live = 0.0
                        for tid, sec in after[w][1].items():
                            used = sec - before[w][1].get(tid, 0.0)
                            live += used
                            shares[names[w].get(int(tid), "other")] += used / len(pids)
                        shares["threads that ended"] += max(0.0, total - live) / len(pids)
                        shares["worker total"] += total / len(pids)
                    for key, value in shares.items():
                        per[name][key].append(value)
                    per[name]["driver + scheduler"].append(driver)
                    per[name]["wall"].append(wall)
                    shutil.rmtree(work / f"r{r}-{len(name)}.zarr", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{args.case}: {len(items):,} observations, {pipeline}; CPU ms per worker and run "
        f"(driver and wall: per run), medians of {args.rounds}:"
    )
    keys = sorted(
        {k for p in per.values() for k in p},
        key=lambda k: (k in ("worker total", "driver + scheduler", "wall"), k),
    )
    print(f"  {'':28s} {ESAP:>12s} {BATCHED:>20s}")
    for key in keys:
        row = [statistics.median(per[c][key]) * 1e3 if per[c].get(key) else 0.0 for c in per]
        if not any(row):
            continue
        print(f"  {key:28s} {row[0]:12.1f} {row[1]:20.1f}")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
