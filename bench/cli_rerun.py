"""An unchanged rerun through the CLI against the first run, and the CLI's start-up.

``python -m bench.cli_rerun [--n 10000] [--first 3] [--reruns 5]``

Writes ``--n`` small files, then times (wall clock, each a fresh ``esap-dask`` process,
as cron starts it) ``--first`` first runs of ``esap-dask run helloworld`` into fresh
stores on the default facility (``local``: a LocalCluster started by the run) and
``--reruns`` unchanged reruns of the same command on one of them; and ``--reruns`` starts
of ``esap-dask --version``, ``esap-dask pipelines`` and ``esap-dask status``. The reruns
are answered by the store's receipt (:mod:`esap_dask.engine.receipt`); ``--reruns`` more,
each after deleting the receipt, show the rerun planned from the ledger. Medians;
the ratio rerun / first run is the figure of the issue's "< 5%" goal. Merged into
``bench/results.json`` (case ``cli``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, report, summarize
from esap_dask.engine.receipt import SUFFIX


def _cli(*args: str, cwd: Path) -> float:
    """Seconds of one ``esap-dask`` process (this environment's), checked to exit 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "esap_dask", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"esap-dask {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--first", type=int, default=3)
    parser.add_argument("--reruns", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="esap-cli-rerun-"))
    load = [os.getloadavg()]
    try:
        files = work / "files"
        files.mkdir()
        for i in range(args.n):
            (files / f"obs{i:05d}.dat").write_bytes(b"x" * (100 + i % 50))
        run = ["run", "helloworld", "--observations", "files/*.dat"]
        first = [_cli(*run, "--store", f"s{k}.zarr", cwd=work) for k in range(args.first)]
        rerun = [_cli(*run, "--store", "s0.zarr", cwd=work) for _ in range(args.reruns)]
        planned = []  # the same rerun without the receipt: planned from the ledger
        for _ in range(args.reruns):
            (work / f"s0.zarr{SUFFIX}").unlink()
            planned.append(_cli(*run, "--store", "s0.zarr", cwd=work))
        version = [_cli("--version", cwd=work) for _ in range(args.reruns)]
        pipelines = [_cli("pipelines", cwd=work) for _ in range(args.reruns)]
        status = [_cli("status", "s0.zarr", cwd=work) for _ in range(args.reruns)]
        load.append(os.getloadavg())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    case = f"cli/{args.n} small files"
    ratios = [r / statistics.median(first) for r in rerun]
    records = [
        summarize(case, "first run", "s", first),
        summarize(case, "unchanged rerun", "s", rerun),
        summarize(case, "rerun / first run", "ratio", ratios),
        summarize(case, "unchanged rerun without its receipt", "s", planned),
        summarize("cli", "esap-dask --version", "s", version),
        summarize("cli", "esap-dask pipelines", "s", pipelines),
        summarize("cli", "esap-dask status", "s", status),
    ]
    print(f"load before {load[0]}, after {load[-1]}")
    if args.no_record:
        for r in records:
            print(r)
    else:
        report(records)


if __name__ == "__main__":
    main()
