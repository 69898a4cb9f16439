"""A run's timeline: when the driver's phases and the workers' batch tasks start and end.

``python -m bench.timeline [--case tiny|tiny-files|tiny-100k|hess|realistic]
[--rounds 9] [--show]``

Starts a LocalCluster of 2 workers x 1 thread, warms it up with one run, then times
``--rounds`` runs into fresh stores. Every event is a wall-clock time (one machine, one
clock) relative to the run's start: on the driver the entry and exit of the store's
creation (``RunStore.create``), ``execute``, the submissions (``Client.map``) and the
run's record; on the workers the start and end of each batch task (``run_batch``).
Prints the medians of: the first task's start after the first submission (start
latency), the last task's end to ``execute``'s return (end latency), and the whole run;
with ``--show``, the events of the median run. Session 15's figures (the store created
while the first tasks run, the reports fetched as each task ends) come from this command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.ab import CASES, observations
from bench.phases import runs as each_run

EVENTS: dict[str, list[float]] = {}


def _stamped(owner: Any, name: str, label: str) -> None:
    """Wrap ``owner.name`` so that its entry and exit are stamped in :data:`EVENTS`."""
    original: Callable[..., Any] = getattr(owner, name)

    def stamped(*args: Any, **kwargs: Any) -> Any:
        EVENTS.setdefault(f"{label}>", []).append(time.time())
        try:
            return original(*args, **kwargs)
        finally:
            EVENTS.setdefault(f"{label}<", []).append(time.time())

    setattr(owner, name, stamped)


def _worker_install() -> str:
    """On a worker: stamp each batch task's start and end (installed once), cleared."""
    import esap_dask.engine.task as task

    spans = getattr(task, "_bench_timeline", None)
    if spans is None:
        spans = task._bench_timeline = []  # type: ignore[attr-defined]
        original = task.run_batch

        def run_batch(*args: Any, **kwargs: Any) -> Any:
            t = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((t, time.time()))

        task.run_batch = run_batch  # type: ignore[assignment]
    spans.clear()
    return "ok"


def _worker_spans() -> list[tuple[float, float]]:
    import esap_dask.engine.task as task

    return list(getattr(task, "_bench_timeline", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny", choices=CASES)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--show", action="store_true", help="the events of the median run")
    args = parser.parse_args()
    from esap_dask.engine import mapper, provenance
    from esap_dask.store import run as run_module

    work = Path(tempfile.mkdtemp(prefix="esap-bench-timeline-"))
    _stamped(run_module.RunStore, "create", "create")
    _stamped(mapper, "execute", "execute")
    _stamped(provenance, "record_run", "record")
    runs: list[list[tuple[float, str]]] = []

    stamped: list[Any] = []  # the client whose submissions are stamped (one, all runs)

    def before(client: Any) -> None:
        if not stamped:
            _stamped(client, "map", "submit")
            stamped.append(client)
        EVENTS.clear()

    try:
        pipeline, items = observations(args.case, work)
        for client, t0, end in each_run(
            pipeline, items, work, args.rounds, _worker_install, before
        ):
            spans = [s for v in client.run(_worker_spans).values() for s in v]
            events = [(t - t0, k) for k, v in EVENTS.items() for t in v]
            events += [(a - t0, "task>") for a, _ in spans] + [(b - t0, "task<") for _, b in spans]
            events.append((end - t0, "end"))
            runs.append(sorted(events))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def first(ev: list[tuple[float, str]], key: str) -> float:
        return min(t for t, k in ev if k == key)

    def last(ev: list[tuple[float, str]], key: str) -> float:
        return max(t for t, k in ev if k == key)

    rows = {
        "start latency (first submission to first task)": [
            first(ev, "task>") - first(ev, "submit>") for ev in runs
        ],
        "end latency (last task's end to execute's return)": [
            last(ev, "execute<") - last(ev, "task<") for ev in runs
        ],
        "run": [last(ev, "end") for ev in runs],
    }
    print(f"{args.case}: {pipeline}; ms, medians of {args.rounds} runs:")
    for label, values in rows.items():
        print(f"  {label:52s} {statistics.median(values) * 1e3:8.1f}")
    if args.show:
        median = sorted(runs, key=lambda ev: last(ev, "end"))[len(runs) // 2]
        for t, k in median:
            print(f"  {t * 1e3:8.1f} ms  {k}")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
