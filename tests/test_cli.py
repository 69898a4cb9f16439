"""The command line as a user runs it: exit codes, JSON summaries, a killed run, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr
from astropy.io import fits

from esap_dask import ledger, read_ledger
from esap_dask.engine.ledger import DONE
from tests.conftest import ESAP_DASK

FITS_ROWS = str(Path(__file__).parent / "pipelines" / "fits_rows.py")


def esap(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [*ESAP_DASK, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def run_json(*args: str) -> tuple[int, dict]:
    proc = esap("run", *args, "--json")
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def write_list(path: Path, files: list[str]) -> str:
    path.write_text("\n".join(files) + "\n")
    return str(path)


def test_catalog_commands():
    proc = esap("pipelines", "--json")
    assert proc.returncode == 0
    names = {p["name"] for p in json.loads(proc.stdout)}
    assert "helloworld" in names
    proc = esap("facilities", "--json")
    local = {f["name"]: f for f in json.loads(proc.stdout)}["local"]
    assert local["facilitytype"] == "local" and local["runtimeengine"] == "none"
    assert esap("--version").stdout.startswith("esap-dask, version ")


def test_bad_parameters_and_lists_exit_2(tmp_path):
    proc = esap("run", "helloworld", "-o", "1..3", "-s", str(tmp_path / "s.zarr"), "-p", "sleep=-1")
    assert proc.returncode == 2
    assert "parameter 'sleep': -1.0 is below the minimum 0" in proc.stderr
    proc = esap(
        "run", "helloworld", "-o", "1..3", "-s", str(tmp_path / "s.zarr"), "-p", "colour=red"
    )
    assert proc.returncode == 2 and "has no parameter 'colour'" in proc.stderr
    proc = esap(
        "run", "helloworld", "-o", str(tmp_path / "none/*.fits"), "-s", str(tmp_path / "s.zarr")
    )
    assert proc.returncode == 2 and "no file matches" in proc.stderr
    proc = esap("run", "nosuch", "-o", "1..3", "-s", str(tmp_path / "s.zarr"))
    assert proc.returncode == 2 and "unknown pipeline 'nosuch'" in proc.stderr
    assert not (tmp_path / "s.zarr").exists()


def make_fits(path: Path, rows: int, livetime: float) -> None:
    events = fits.BinTableHDU.from_columns(
        [fits.Column("ENERGY", "E", array=np.linspace(0.1, 10, rows, dtype="f4"))],
        name="EVENTS",
    )
    events.header["LIVETIME"] = livetime
    fits.HDUList([fits.PrimaryHDU(), events]).writeto(path)


def test_bad_inputs_are_named_and_the_rest_completes(tmp_path):
    good = []
    for i in range(6):
        p = tmp_path / f"run{i}.fits"
        make_fits(p, rows=100 + i, livetime=1000.0 + i)
        good.append(str(p))
    truncated = tmp_path / "truncated.fits"
    make_fits(truncated, rows=5000, livetime=1.0)
    truncated.write_bytes(truncated.read_bytes()[:9000])
    notfits = tmp_path / "notes.fits"
    notfits.write_text("this is not a FITS file\n" * 200)
    missing = tmp_path / "missing.fits"
    directory = tmp_path / "adir.fits"
    directory.mkdir()
    files = [*good[:3], str(truncated), str(notfits), str(missing), str(directory), *good[3:]]
    store = tmp_path / "s.zarr"
    code, summary = run_json(
        FITS_ROWS, "-o", write_list(tmp_path / "runs.txt", files), "-s", str(store)
    )
    assert code == 1
    assert (summary["succeeded"], summary["failed"]) == (6, 4)
    reasons = {f["observation"]: f"{f['error_type']}: {f['message']}" for f in summary["failures"]}
    assert set(reasons) == {"truncated.fits", "notes.fits", "missing.fits", "adir.fits"}
    assert "truncated.fits: not a readable FITS file" in reasons["truncated.fits"]
    assert "notes.fits: not a readable FITS file" in reasons["notes.fits"]
    assert "missing.fits: no such file" in reasons["missing.fits"]
    assert "adir.fits: is a directory" in reasons["adir.fits"]
    ds = xr.open_zarr(store)
    got = dict(zip(ds.obs.values, ds.rows.values, strict=True))
    assert [got[f"run{i}.fits"] for i in range(6)] == [100 + i for i in range(6)]
    status = esap("status", str(store))
    assert status.returncode == 0
    assert "failed: 4" in status.stdout and "truncated.fits" in status.stdout


def test_lock_refuses_a_second_run(tmp_path):
    store = tmp_path / "s.zarr"
    first = subprocess.Popen(
        [
            *ESAP_DASK,
            "run",
            "helloworld",
            "-o",
            "1..40",
            "-s",
            str(store),
            "-p",
            "sleep=0.5",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = Path(f"{store}.lock")
        deadline = time.monotonic() + 60
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        holder = json.loads(lock.read_text())
        second = esap("run", "helloworld", "-o", "1..40", "-s", str(store))
        assert second.returncode == 3
        assert f"pid {first.pid}" in second.stderr and holder["started"] in second.stderr
        assert "another run holds this store" in second.stderr
    finally:
        first.kill()
        first.wait()


def _done_rows(store: Path) -> int:
    try:
        return int((read_ledger(str(store)).status == DONE).sum())
    except Exception:  # not created yet
        return 0


@pytest.mark.slow
def test_killed_run_then_rerun_is_exactly_once(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = []
    for i in range(400):
        p = inputs / f"obs{i:04d}.dat"
        p.write_bytes(os.urandom(64 + i))
        files.append(str(p))
    listing = write_list(tmp_path / "runs.txt", files)
    args = ["helloworld", "-o", listing, "-p", "sleep=0.03"]
    code, reference = run_json(*args, "-s", str(tmp_path / "reference.zarr"))
    assert code == 0 and reference["succeeded"] == 400

    store = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [*ESAP_DASK, "run", *args, "-s", str(store), "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _done_rows(store) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, "worker processes outlived their killed driver"
    done_at_kill = _done_rows(store)
    assert 100 <= done_at_kill < 400, "the run was not killed about halfway"
    assert Path(f"{store}.lock").exists()  # left behind by the killed run

    code, rerun = run_json(*args, "-s", str(store))
    assert code == 0
    assert rerun["processed"] == 400 - done_at_kill
    assert rerun["skipped"] == done_at_kill
    assert set(rerun["reasons"]) <= {"unfinished", "new"}
    ref, got = xr.open_zarr(tmp_path / "reference.zarr"), xr.open_zarr(store)
    table = ledger(store)
    assert (table.status == "done").all()
    for name in ("obs", "size", "checksum", "greeting"):
        np.testing.assert_array_equal(got[name].values, ref[name].values)
    assert (table.attempts == 1).all()  # nothing was written twice


def test_demo_prints_summary_and_a_store_xarray_opens(tmp_path):
    proc = esap("demo", "--directory", str(tmp_path / "demo"), "--count", "6")
    assert proc.returncode == 0, proc.stderr
    store = tmp_path / "demo" / "dl3-products.zarr"
    assert f"store: {store}" in proc.stdout
    assert re.search(r"^succeeded\s+6\s*$", proc.stdout, re.MULTILINE)
    assert re.search(r"^failed\s+0\s*$", proc.stdout, re.MULTILINE)
    ds = xr.open_zarr(store)
    assert ds.sizes["obs"] == 6 and (ledger(store).status == "done").all()
    again = esap("demo", "--directory", str(tmp_path / "demo"), "--count", "6")
    assert again.returncode == 0 and "reusing 6 synthetic observations" in again.stdout
    assert re.search(r"^skipped\s+6\s*$", again.stdout, re.MULTILINE)


def test_demo_into_an_unwritable_directory_exits_2_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = esap("demo", "--directory", str(blocker / "demo"), "--count", "2")
    assert proc.returncode == 2, proc.stderr
    assert f"--directory {blocker / 'demo'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert blocker.read_text() == "not a directory"  # nothing already there is touched


def test_reproduce_identical_then_refused_after_an_input_changes(tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(8):
        (inputs / f"r{i}.dat").write_bytes(os.urandom(100 + i))
    monkeypatch.chdir(tmp_path)  # relative paths in the list, as a user types them
    code, _ = run_json("helloworld", "-o", "in/*.dat", "-s", "a.zarr", "-p", "message=Hoi")
    assert code == 0
    proc = esap("reproduce", "a.zarr", "--store", "b.zarr", "--json")
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert (outcome["observations"], outcome["identical"]) == (8, True)
    assert xr.open_zarr("b.zarr").greeting.values[0] == "Hoi, r0.dat!"
    (inputs / "r3.dat").write_bytes(b"tampered")
    proc = esap("reproduce", "a.zarr", "--store", "c.zarr")
    assert proc.returncode == 2
    assert f"{inputs / 'r3.dat'}: content changed since it was processed" in proc.stderr
    assert not Path("c.zarr").exists()


def test_status_plot_renders_a_png(tmp_path):
    code, _ = run_json("helloworld", "-o", "1..30", "-s", str(tmp_path / "s.zarr"))
    assert code == 0
    proc = esap("status", str(tmp_path / "s.zarr"), "--plot", str(tmp_path / "s.png"))
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "s.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_an_obs_index_is_an_observation_list(hess_dir, tmp_path):
    proc = esap(
        "run",
        "helloworld",
        "-o",
        str(hess_dir / "obs-index.fits.gz"),
        "-s",
        str(tmp_path / "s.zarr"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["succeeded"] == 105
    ids = xr.open_zarr(tmp_path / "s.zarr").obs.values
    assert ids[0] == "hess_dl3_dr1_obs_id_020136.fits.gz"
