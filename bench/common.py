"""Shared benchmark helpers: repeated runs in fresh driver processes, medians and ratios."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"


@dataclass
class Record:
    """One measured figure: median of ``runs`` repeats, with min and max, and its baseline."""

    case: str
    metric: str
    unit: str
    value: float
    min: float
    max: float
    runs: int
    baseline: float | None = None
    ratio: float | None = None


def summarize(
    case: str,
    metric: str,
    unit: str,
    values: Sequence[float],
    baseline: Sequence[float] | None = None,
) -> Record:
    """A record of the median of ``values``; ``ratio`` is baseline median / value median."""
    med = statistics.median(values)
    base = statistics.median(baseline) if baseline else None
    return Record(
        case,
        metric,
        unit,
        med,
        min(values),
        max(values),
        len(values),
        base,
        (base / med) if base and med else None,
    )


def run_driver(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh process; return the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(records: Sequence[Record], results: Path = RESULTS) -> None:
    """Print a table and merge ``records`` into ``bench/results.json`` (by case and metric)."""
    print(
        f"{'case':44} {'metric':16} {'median':>10} {'min':>10} {'max':>10} "
        f"{'baseline':>10} {'ratio':>7}"
    )
    for r in records:
        base = f"{r.baseline:10.3f}" if r.baseline is not None else " " * 10
        ratio = f"{r.ratio:7.2f}" if r.ratio is not None else ""
        print(
            f"{r.case:44} {r.metric:16} {r.value:10.3f} {r.min:10.3f} {r.max:10.3f} "
            f"{base} {ratio}  {r.unit}"
        )
    old = json.loads(results.read_text()) if results.exists() else []
    keys = {(r.case, r.metric) for r in records}
    merged = [o for o in old if (o["case"], o["metric"]) not in keys]
    merged += [asdict(r) for r in records]
    results.write_text(json.dumps(merged, indent=1) + "\n")
