"""Where a run's time goes, without a profiler: the driver's phases and the workers' calls.

``python -m bench.phases [--case tiny|tiny-files|tiny-100k|hess|realistic] [--rounds 9]``

Starts a LocalCluster of 2 workers x 1 thread, runs ``map_observations`` once to warm it
up, then ``--rounds`` runs into fresh stores, each timed in parts: on the driver the
store's creation (``RunStore.create``; from session 15 inside ``execute``, while the first
tasks run), ``execute`` (the tasks, from the first submission to the last report) and the
run's record (``provenance.record_run``); on each
worker the seconds inside the batch task (``run_batch``) and, within it, the pipeline's
loop (``_run_rows``), the commit (``write_rows``), the provenance part (``_write_part``,
which runs beside the commit, in the task's own thread), the store's opening
(``_run_group``), the start's record (``_record_start``) and each input file's check
and checksum (``open_input``, inside the pipeline's loop), summed over the worker's
tasks and averaged over the workers. Prints the medians and the load average; the tables
of ``docs/benchmarks/profiles.md`` (session 14 on) come from this command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.ab import CASES, observations

WORKER_CALLS = (
    "run_batch",
    "_run_rows",
    "write_rows",
    "_write_part",
    "_run_group",
    "_record_start",
    "open_input",
)


def _timed(owner: Any, name: str, into: dict[str, float], label: str) -> None:
    """Wrap ``owner.name`` so that its seconds add up in ``into[label]``."""
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into[label] = into.get(label, 0.0) + time.perf_counter() - t

    setattr(owner, name, timed)


def _worker_install() -> str:
    """On a worker: time the task's calls (once), or clear what they added up to."""
    import esap_dask.engine.task as task

    seconds = getattr(task, "_bench_phases", None)
    if seconds is None:
        seconds = task._bench_phases = {}  # type: ignore[attr-defined]
        for name in WORKER_CALLS:
            _timed(task, name, seconds, name)
    seconds.clear()
    return "ok"


def _worker_seconds() -> dict[str, float]:
    import esap_dask.engine.task as task

    return dict(getattr(task, "_bench_phases", {}))


def runs(
    pipeline: str,
    items: Sequence[Any],
    work: Path,
    rounds: int,
    install: Callable[[], str],
    before: Callable[[Any], None],
) -> Iterator[tuple[Any, float, float]]:
    """``rounds`` runs of ``pipeline`` over ``items`` on a LocalCluster of 2 workers x 1
    thread, each into a fresh store under ``work``, after a warm-up run: before each run
    ``install`` runs on the workers, then ``before`` gets the client. Yields the client and
    the run's start and end (wall clock, ``time.time``); the run's store is removed after."""
    from distributed import Client, LocalCluster

    import esap_dask

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        warm = items[: max(4, len(items) // 50)]
        esap_dask.map_observations(
            pipeline, warm, str(work / "warm.zarr"), client=client, progress=False
        )
        for r in range(rounds):
            client.run(install)
            before(client)
            store = work / f"r{r}.zarr"
            start = time.time()
            esap_dask.map_observations(pipeline, items, str(store), client=client, progress=False)
            yield client, start, time.time()
            shutil.rmtree(store)
            shutil.rmtree(f"{store}.provenance", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny", choices=CASES)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    from esap_dask.engine import mapper, provenance
    from esap_dask.store import run as run_module

    driver: dict[str, float] = {}
    _timed(run_module.RunStore, "create", driver, "store created")
    _timed(mapper, "execute", driver, "execute")
    _timed(provenance, "record_run", driver, "record")
    work = Path(tempfile.mkdtemp(prefix="esap-bench-phases-"))
    rows: list[dict[str, float]] = []
    try:
        pipeline, items = observations(args.case, work)
        for client, start, end in runs(
            pipeline, items, work, args.rounds, _worker_install, lambda _: driver.clear()
        ):
            row = {"run": end - start, **driver}
            found = client.run(_worker_seconds).values()
            for name in WORKER_CALLS:
                row[f"worker {name}"] = sum(s.get(name, 0.0) for s in found) / len(found)
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.case}: {len(items):,} observations, {pipeline}; seconds, medians of {args.rounds}:"
    )
    for key in rows[0]:
        print(f"  {key:26s} {statistics.median(r[key] for r in rows):8.3f}")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
