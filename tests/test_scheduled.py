"""Scheduled reprocessing: the example crontab entry, run night after night as cron would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import xarray as xr

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
    assert (ds.ledger_status.values == 1).all()


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
