"""How long the driver takes to plan a run: its batches (numpy over the write units,
against the row-by-row loop it replaced in session 15) and its observations (a list of
paths in one pass, against ``Observation.of`` path by path, session 16).

``python -m bench.planning [--n 100000] [--unit 12500] [--paths 10000] [--rounds 9]``

Times :func:`esap_dask.engine.execute.make_batches` and the loop of a20cf91 (kept here as
the reference: a Python loop over every row) on ``range(n)`` split into write units of
``--unit`` rows, guided over 8 parts as a 4-thread run plans them, checks both give the
same batches, and prints the medians and their ratio with the load average. Then times
:func:`esap_dask.engine.observations.as_observations` of ``--paths`` absolute paths
against the path-by-path way it keeps for other lists (the same observations, checked).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from esap_dask.engine.execute import make_batches
from esap_dask.engine.observations import _observation, as_observations, check_text, check_unique


def row_loop(rows: Sequence[int], unit: int, target: int, parts: int = 0) -> list[list[int]]:
    """The batches as a20cf91 planned them: one step of a Python loop a row."""
    batches: list[list[int]] = []
    current: list[int] = []
    current_unit = None
    want = max(target, math.ceil(len(rows) / parts)) if parts else target
    for pos, row in enumerate(rows):
        u = row // unit
        if u != current_unit and len(current) >= want:
            batches.append(current)
            current = []
            if parts:
                want = max(target, math.ceil((len(rows) - pos) / parts))
        current_unit = u
        current.append(pos)
    if current:
        batches.append(current)
    return batches


def path_by_path(items: Sequence[str]) -> list[Any]:
    """The observations of ``items`` as ``as_observations`` made them up to session 15."""
    observations = list(map(_observation, items))
    check_unique(observations)
    check_text(observations)
    return observations


def _interleaved(ways: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            t = time.perf_counter()
            way()
            seconds[name].append(time.perf_counter() - t)
    return {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--unit", type=int, default=12_500)
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rows = range(args.n)
    ways: dict[str, Callable[[], Any]] = {
        "numpy over units": lambda: make_batches(rows, args.unit, 1, 8),
        "row loop (a20cf91)": lambda: row_loop(rows, args.unit, 1, 8),
    }
    if [list(b) for b in ways["numpy over units"]()] != ways["row loop (a20cf91)"]():
        raise SystemExit("the two plans differ")
    medians = _interleaved(ways, args.rounds)
    print(f"make_batches of {args.n:,} rows, units of {args.unit:,}; medians of {args.rounds}:")
    for name, m in medians.items():
        print(f"  {name:20s} {m * 1e3:8.2f} ms")
    ratio = medians["numpy over units"] / medians["row loop (a20cf91)"]
    print(f"  ratio {ratio:.2f}; load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    paths = [f"/data/hess/run{k:06d}/events_{k:06d}.fits.gz" for k in range(args.paths)]
    if as_observations(paths) != path_by_path(paths):
        raise SystemExit("the two lists of observations differ")
    medians = _interleaved(
        {
            "one pass": lambda: as_observations(paths),
            "path by path": lambda: path_by_path(paths),
        },
        args.rounds,
    )
    print(f"as_observations of {args.paths:,} absolute paths; medians of {args.rounds}:")
    for name, m in medians.items():
        print(f"  {name:20s} {m * 1e3:8.2f} ms")
    ratio = medians["one pass"] / medians["path by path"]
    print(f"  ratio {ratio:.2f}; load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
