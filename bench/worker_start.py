"""Benchmark: time from ``scale(16)`` to 16 connected workers, job arrays vs dask-jobqueue.

Runs, in one process and alternating, esap-dask's SLURM array cluster
(``esap_dask.open_cluster("slurm-loopback")``) and dask-jobqueue's own ``SLURMCluster``
with the same resources and the same TLS security, against the local SLURM.
``sbatch`` is counted by a logging wrapper put first on ``PATH`` (the real sbatch runs).

Needs a SLURM with at least 16 free CPUs::

    ESAP_SLURM_CPUS=16 bash scripts/slurm.sh start
    .venv/bin/python -m bench.worker_start --repeats 5
    bash scripts/slurm.sh start        # back to the default 8 CPUs for the tests

Prints one line per run, then the medians, their ratio and a JSON summary, and merges
the figures into ``bench/results.json`` (``--no-record``: not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask_jobqueue

import esap_dask.catalogs.facilities as facilities
from esap_dask.deploy.tls import new_cluster_security, remove_cluster_security

RESOURCES = {"queue": "debug", "cores": 1, "memory": "512MiB", "walltime": "00:30:00"}


def free_cpus() -> int:
    out = subprocess.run(
        ["sinfo", "--noheader", "--format=%C"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0].split("/")[1]) if out else 0  # allocated/idle/other/total


def wrap_sbatch(folder: Path) -> Path:
    log = folder / "sbatch.log"
    real = shutil.which("sbatch")
    wrapper = folder / "sbatch"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"
    return log


def sbatch_calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def wait_queue_empty(job_name: str) -> None:
    for _ in range(600):
        out = subprocess.run(
            ["squeue", "--noheader", f"--name={job_name}"], capture_output=True, text=True
        ).stdout
        if not out.strip():
            return
        time.sleep(0.2)


def open_array(logs: Path) -> Any:
    return facilities.open_cluster(
        "slurm-loopback", **RESOURCES, array_cap=None, log_directory=str(logs), n_workers=0
    )


def open_jobqueue_slurm(logs: Path, name: str) -> Any:
    return dask_jobqueue.SLURMCluster(
        **RESOURCES,
        job_name=name,
        log_directory=str(logs / name),
        security=new_cluster_security(),
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    )


def one_run(kind: str, n: int, log: Path, logs: Path, i: int) -> dict[str, Any]:
    if kind == "arrays":
        cluster = open_array(logs)
        job_name = cluster.array.job_name
    else:
        job_name = f"jq-bench-{os.getpid()}-{i}"
        cluster = open_jobqueue_slurm(logs, job_name)
    before = sbatch_calls(log)
    try:
        t0 = time.perf_counter()
        cluster.scale(n)
        cluster.wait_for_workers(n, timeout=600)
        seconds = time.perf_counter() - t0
        submissions = sbatch_calls(log) - before
    finally:
        security = cluster.security
        cluster.close()
        remove_cluster_security(security)
    wait_queue_empty(job_name)
    return {"kind": kind, "seconds": seconds, "sbatch": submissions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-record", action="store_true", help="do not merge the figures into bench/results.json"
    )
    args = parser.parse_args(argv)

    if shutil.which("sbatch") is None or free_cpus() < args.workers:
        print(
            f"need a running SLURM with {args.workers} idle CPUs; run: "
            f"ESAP_SLURM_CPUS={max(16, args.workers)} bash scripts/slurm.sh start",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="esap-bench-") as tmp:
        folder = Path(tmp)
        log = wrap_sbatch(folder)
        runs = []
        for i in range(args.repeats):
            for kind in ("arrays", "dask-jobqueue"):
                run = one_run(kind, args.workers, log, folder / "logs", i)
                runs.append(run)
                print(f"{kind:14s} run {i + 1}: {run['seconds']:6.2f} s, {run['sbatch']} sbatch")

    summary: dict[str, Any] = {"workers": args.workers, "repeats": args.repeats}
    for kind in ("arrays", "dask-jobqueue"):
        mine = [r for r in runs if r["kind"] == kind]
        summary[kind] = {
            "median_seconds": round(statistics.median(r["seconds"] for r in mine), 2),
            "median_sbatch": statistics.median(r["sbatch"] for r in mine),
        }
    ratio = summary["dask-jobqueue"]["median_seconds"] / summary["arrays"]["median_seconds"]
    summary["ratio_jobqueue_over_arrays"] = round(ratio, 2)
    print(
        f"median time to {args.workers} workers: arrays {summary['arrays']['median_seconds']} s "
        f"({summary['arrays']['median_sbatch']:g} sbatch), dask-jobqueue "
        f"{summary['dask-jobqueue']['median_seconds']} s "
        f"({summary['dask-jobqueue']['median_sbatch']:g} sbatch); ratio {ratio:.2f}"
    )
    print(json.dumps(summary))
    if not args.no_record:
        from bench.common import report, summarize

        case = f"workers/{args.workers} on the local SLURM"
        kinds = ("arrays", "dask-jobqueue")
        seconds = {k: [r["seconds"] for r in runs if r["kind"] == k] for k in kinds}
        calls = {k: [float(r["sbatch"]) for r in runs if r["kind"] == k] for k in kinds}
        report(
            [
                summarize(
                    case,
                    "arrays vs dask-jobqueue",
                    "s",
                    seconds["arrays"],
                    baseline=seconds["dask-jobqueue"],
                ),
                summarize(case, "arrays sbatch calls", "calls", calls["arrays"]),
                summarize(case, "dask-jobqueue sbatch calls", "calls", calls["dask-jobqueue"]),
            ]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
