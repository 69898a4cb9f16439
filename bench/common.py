"""Shared benchmark helpers: driver processes of their own, peak RSS, medians and ratios."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

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


# ---------------------------------------------------------------- driver processes


def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``) in MiB, since start or the last :func:`reset_peak`."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak() -> None:
    """Reset this process's ``VmHWM`` to its current RSS (``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")


def serve(run: Callable[[dict[str, Any]], dict[str, Any]], tag: str) -> None:
    """The driver side of :class:`DriverProcess`: answer run requests until stdin ends.

    Each request is a JSON line on stdin; ``run(request)`` answers a dict, to which the
    peak RSS of the run (``rss_mib``, VmHWM reset before it) is added, written as one line
    ``"<tag> <json>"`` on stdout. An exception is answered as ``{"error": ...}``. Whatever a
    library prints goes to stderr (the driver's log).
    """
    out: TextIO = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        reset_peak()
        try:
            answer = run(req)
        except Exception as exc:  # reported to the bench
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answer["rss_mib"] = peak_rss_mib()
        out.write(f"{tag} {json.dumps(answer)}\n")
        out.flush()


class DriverProcess:
    """The bench's handle on one contender's driver: a process of its own, kept between runs.

    ``argv`` starts it (``[sys.executable, "-m", module, ...]``, its side is :func:`serve`);
    it runs in a session of its own, so that :meth:`kill` stops it with any pool it started.
    Its stderr goes to ``log``, whose tail is shown when it fails.
    """

    def __init__(self, name: str, argv: Sequence[str], log: Path, tag: str) -> None:
        self.name, self.tag = name, tag
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )

    def request(self, req: dict[str, Any], limit: float | None = None) -> dict[str, Any]:
        """The driver's answer to ``req``; a driver error or exit raises RuntimeError.

        After ``limit`` seconds without an answer the driver is killed and the answer is
        ``{"timed_out": limit}`` (the contender must then be started again).
        """
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"{self.name}'s driver exited:\n{self.log_tail()}") from None
        deadline = None if limit is None else time.monotonic() + limit
        prefix = self.tag + " "
        while True:
            if deadline is not None:
                ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
                if not ready:
                    self.kill()
                    return {"timed_out": limit}
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                answer: dict[str, Any] = json.loads(line[len(prefix) :])
                if "error" in answer:
                    raise RuntimeError(f"{self.name} failed: {answer['error']}\n{self.log_tail()}")
                return answer
        raise RuntimeError(f"{self.name}'s driver exited:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The last 3,000 characters of the driver's log."""
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def kill(self) -> None:
        """Stop the driver and whatever it started (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def close(self) -> None:
        """End the driver (stdin closed: it closes its clients and exits)."""
        if self.log.closed:
            return
        if self.proc.stdin:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self.log.close()
