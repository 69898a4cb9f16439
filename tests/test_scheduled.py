"""Scheduled reprocessing: the example crontab entry, run night after night as cron would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

import esap_dask
from tests.conftest import ESAP_DASK, ROOT

CRONTAB = ROOT / "docs" / "examples" / "crontab"


def cron_entry() -> tuple[dict[str, str], str]:
    """The example's variable assignments and the command of its one schedule line."""
    variables, command = {}, None
    for line in CRONTAB.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if m := re.match(r"^([A-Z_]+)=(.*)$", line):
            variables[m[1]] = m[2]
        else:
            command = line.split(None, 5)[5]  # after the five time fields
    assert command is not None, "the example crontab has no schedule line"
    return variables, command


def night(env: dict[str, str], command: str) -> dict:
    """Run the entry's command with /bin/sh, as cron does; return that night's summary."""
    log = Path(env["ESAP_STORE"] + ".cron.log")
    before = log.read_text().count("\n") if log.exists() else 0
    subprocess.run(["/bin/sh", "-c", command], env=env, check=False, timeout=300)
    lines = log.read_text().splitlines()
    assert len(lines) > before, f"the night wrote nothing to {log}"
    return json.loads(lines[-1])


def fits_like(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)


def test_example_crontab_does_exactly_the_missing_work(tmp_path):
    variables, command = cron_entry()
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {
        **os.environ,
        "ESAP_DASK": str(Path(sys.executable).parent / "esap-dask"),
        "ESAP_RUNS": str(runs),
        "ESAP_STORE": str(tmp_path / "products.zarr"),
    }
    assert set(variables) == {"ESAP_DASK", "ESAP_RUNS", "ESAP_STORE"}
    # the example runs dl3-products; helloworld reads any file, so the nights are quick
    command = command.replace("run dl3-products", "run helloworld")
    for i in range(5):
        fits_like(runs / f"run{i}.fits.gz", os.urandom(200))
    (runs / "run4.fits.gz").unlink()
    (runs / "run4.fits.gz").mkdir()  # a broken arrival: fails tonight
    first = night(env, command)
    assert (first["processed"], first["failed"]) == (5, 1)

    (runs / "run4.fits.gz").rmdir()
    fits_like(runs / "run4.fits.gz", b"fixed by the operator")  # the failure is repaired
    fits_like(runs / "run5.fits.gz", os.urandom(300))  # new arrivals
    fits_like(runs / "run6.fits.gz", os.urandom(300))
    later = time.time() + 5
    os.utime(runs / "run1.fits.gz", (later, later))  # re-delivered
    second = night(env, command)
    assert second["reasons"] == {"failed": 1, "new": 2, "changed": 1}
    assert (second["processed"], second["skipped"], second["failed"]) == (4, 3, 0)

    third = night(env, command)
    assert (third["processed"], third["skipped"]) == (0, 7)
    ds = xr.open_zarr(env["ESAP_STORE"])
    assert sorted(ds.obs.values) == [f"run{i}.fits.gz" for i in range(7)]
    assert (esap_dask.ledger(env["ESAP_STORE"]).status == "done").all()


def test_an_overlapping_night_is_refused(tmp_path):
    _, command = cron_entry()
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(30):
        (runs / f"run{i}.fits.gz").write_bytes(os.urandom(100))
    store = tmp_path / "products.zarr"
    env = {
        **os.environ,
        "ESAP_DASK": str(Path(sys.executable).parent / "esap-dask"),
        "ESAP_RUNS": str(runs),
        "ESAP_STORE": str(store),
    }
    slow = subprocess.Popen(
        [
            *ESAP_DASK,
            "run",
            "helloworld",
            "-o",
            str(runs / "*.fits.gz"),
            "-s",
            str(store),
            "-p",
            "sleep=0.5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{store}.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = subprocess.run(
            ["/bin/sh", "-c", command.replace("run dl3-products", "run helloworld")],
            env=env,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 3
        log = Path(f"{store}.cron.log").read_text()
        assert "another run holds this store" in log and f"pid {slow.pid}" in log
    finally:
        slow.kill()
        slow.wait()


SCRONTAB = ROOT / "docs" / "examples" / "scrontab"


def scrontab_as_batch_script(text: str, *, partition: str, command_edits: dict[str, str]) -> str:
    """The job scrontab would submit for the example's one entry, as an sbatch script.

    Debian's SLURM packages ship no ``scrontab``, so the test does what scrontab does at
    the scheduled minute: submit the ``#SCRON`` options as ``#SBATCH`` directives and the
    entry's command as the job. ``partition`` and ``command_edits`` replace the
    example's site-specific names with this machine's.
    """
    directives, command = [], None
    for line in text.splitlines():
        if line.startswith("#SCRON"):
            directive = line.replace("#SCRON", "#SBATCH", 1)
            if "--partition=" in directive:
                directive = f"#SBATCH --partition={partition}"
            directives.append(directive)
        elif line.strip() and not line.startswith("#"):
            command = line.split(None, 5)[5]
    assert command is not None, "the example scrontab has no schedule line"
    for old, new in command_edits.items():
        command = command.replace(old, new)
    return "\n".join(["#!/bin/sh", *directives, command, ""])


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_example_scrontab_entry_runs_as_the_batch_job_it_schedules(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(4):
        (runs / f"run{i}.fits.gz").write_bytes(os.urandom(100))
    store = tmp_path / "products.zarr"
    script = (
        scrontab_as_batch_script(
            SCRONTAB.read_text(),
            partition="debug",
            command_edits={
                "/opt/esap-dask/.venv/bin/esap-dask": str(
                    Path(sys.executable).parent / "esap-dask"
                ),
                "run dl3-products": "run helloworld",
                "--facility cluster-a": "--facility local",
                "/data/hess/runs": str(runs),
                "/data/hess/products.zarr": str(store),
            },
        ).replace("/data/hess/products.zarr", str(store))  # in the --output directive too
    )
    (tmp_path / "nightly.sh").write_text(script)
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(tmp_path / "nightly.sh")],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    job = submitted.stdout.strip().split(";")[0]
    log = Path(f"{store}.scron.log")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "--noheader", "--states=all", "-j", job, "-o", "%T"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}:
            break
        time.sleep(1)
    assert state == "COMPLETED", f"job {job} ended {state}: {log.read_text()[-2000:]}"
    summary = json.loads(log.read_text().strip().splitlines()[-1])
    assert (summary["processed"], summary["failed"]) == (4, 0)
    assert xr.open_zarr(store).sizes["obs"] == 4
