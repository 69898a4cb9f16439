"""The observation mapper on the dirac facility, with its store on the local S3.

Needs ``bash scripts/diracx.sh start`` (DiracX 0.7.0, its moto S3 and the local
site, all on loopback). Grid workers share no filesystem with the driver, so
every store here is an ``s3://`` URL on that moto server, written by the
workers themselves; the storage options reach them with the run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import httpx
import numpy as np
import pytest
import s3fs
import xarray as xr
from distributed import Client

import esap_dask.facilities as facilities
from esap_dask import map_observations
from esap_dask.ledger import DONE
from esap_dask.lock import LockHeld, StoreLock
from esap_dask.workflows import get_pipeline
from tests.conftest import ESAP_DASK
from tests.test_dirac import START, dirac_env, diracx, dx_jobs, submissions, wait_until

pytestmark = [pytest.mark.dirac, pytest.mark.slow]
__all__ = ["dirac_env", "diracx", "submissions"]  # fixtures used here

S3_URL = os.environ.get("ESAP_DIRAC_S3_ENDPOINT", "http://127.0.0.1:8721")


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """A fresh bucket on DiracX's moto S3 and the storage options that reach it."""
    try:
        httpx.get(f"{S3_URL}/moto-api/", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        pytest.fail(f"no S3 (moto) server answers at {S3_URL} ({err}); run `{START}`")
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": S3_URL}}
    bucket = f"esap-test-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir(bucket)
    yield {"bucket": bucket, "options": opts, "fs": fs}
    fs.rm(bucket, recursive=True)


@pytest.fixture
def dirac_s3(dirac_env: str, s3: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The dirac facility configured the Dask way with the S3 storage options."""
    with dask.config.set({"esap.facilities.dirac.storage_options": s3["options"]}):
        yield s3


def products(ds: xr.Dataset) -> list[str]:
    return sorted(v for v in ds.data_vars if not str(v).startswith("ledger_"))


def test_helloworld_and_concordia_on_six_grid_workers_store_on_s3(
    dirac_s3: dict[str, Any], submissions: list[list[str]], client: Any, tmp_path: Path
) -> None:
    """6 workers from one parametric JDL; both pipelines complete; S3 read back; same showers."""
    bucket, opts, fs = dirac_s3["bucket"], dirac_s3["options"], dirac_s3["fs"]
    params = {"nshow": 10}
    cluster = facilities.open_cluster("dirac", poll_interval=1, walltime="00:30:00")
    try:
        with Client(cluster) as grid:
            t0 = time.monotonic()
            cluster.scale(6)
            grid.wait_for_workers(6, timeout=120)
            print(f"6 grid workers connected in {time.monotonic() - t0:.1f} s")
            assert [len(jdls) for jdls in submissions] == [1], "one parametric submission"
            names = {w["name"] for w in grid.scheduler_info()["workers"].values()}

            t0 = time.monotonic()
            hello = map_observations(
                "helloworld", "1..60", f"s3://{bucket}/hello.zarr", client=grid, facility="dirac"
            )
            print(f"helloworld, 60 observations on 6 grid workers: {time.monotonic() - t0:.1f} s")
            assert hello.ok and hello.succeeded == 60, hello.failures

            t0 = time.monotonic()
            showers = map_observations(
                "concordia",
                "1..12",
                f"s3://{bucket}/showers.zarr",
                client=grid,
                facility="dirac",
                params=params,
            )
            print(f"concordia, 12 runs on 6 grid workers: {time.monotonic() - t0:.1f} s")
            assert showers.ok and showers.succeeded == 12, showers.failures
            jobs = [int(r["JobID"]) for r in cluster.job_status().values()]
    finally:
        cluster.close()
    assert {r["Status"] for r in dx_jobs(jobs).values()} == {"Killed"}, "close() kills every job"

    ds = xr.open_zarr(f"s3://{bucket}/hello.zarr", storage_options=opts)
    assert str(ds.greeting.sel(obs="7").values) == "Hello, 7!"
    from click.testing import CliRunner

    from esap_dask.cli import main

    for how in (["--facility", "dirac"], ["--storage-options", json.dumps(opts)]):
        shown = CliRunner().invoke(main, ["status", f"s3://{bucket}/hello.zarr", "--json", *how])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["counts"]["done"] == 60, "status reads an S3 store"
    assert set(ds.ledger_worker.values) <= names and len(set(ds.ledger_worker.values)) > 1
    grid_ds = xr.open_zarr(f"s3://{bucket}/showers.zarr", storage_options=opts)
    assert grid_ds.xmax.shape == (12, 10) and grid_ds.depth.attrs["units"] == "g cm-2"
    assert set(grid_ds.ledger_worker.values) <= names, "rows written by the grid workers"
    run_doc = fs.cat(showers.provenance.removeprefix("s3://"))
    assert showers.provenance.startswith(f"s3://{bucket}/showers.zarr.provenance/")
    assert json.loads(run_doc)["activity"], "provenance written next to the store"
    assert not fs.exists(f"{bucket}/showers.zarr.lock"), "the store lock is released"

    local = map_observations(
        "concordia", "1..12", tmp_path / "local.zarr", client=client, params=params
    )
    assert local.ok
    local_ds = xr.open_zarr(tmp_path / "local.zarr")
    concordia = get_pipeline("concordia")
    schema = concordia.output_schema(concordia.resolve(params))
    assert products(local_ds) == products(grid_ds) == sorted(v.name for v in schema.variables)
    for name in products(local_ds):
        np.testing.assert_array_equal(
            local_ds[name].values, grid_ds[name].values, err_msg=f"{name}: local != dirac"
        )


def _session_leader(worker_name: str) -> int:
    """The pid of the grid job running worker ``worker_name`` (the site's process group)."""
    needle = b"\0--name\0" + worker_name.encode() + b"\0"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes() and os.getpgid(int(proc.name)) == int(
                proc.name
            ):
                return int(proc.name)
        except (OSError, ProcessLookupError):
            continue
    raise AssertionError(f"no process of the grid job of worker {worker_name}")


def test_a_job_the_site_fails_is_reported_and_its_observations_retried(
    dirac_s3: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The job of a worker busy with a batch dies (as under an OOM killer on the node)."""
    caplog.set_level(logging.WARNING, logger="esap_dask.dirac")
    bucket, opts = dirac_s3["bucket"], dirac_s3["options"]
    store = f"s3://{bucket}/retried.zarr"
    params = {"sleep": 0.5}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = facilities.open_cluster("dirac", poll_interval=1)
    try:
        with Client(cluster) as grid:
            cluster.scale(2)
            grid.wait_for_workers(2, timeout=120)
            result: dict[str, Any] = {}
            run = threading.Thread(
                target=lambda: result.update(
                    summary=map_observations(
                        "helloworld", "1..16", store, client=grid, facility="dirac",
                        params=params, chunk=4, batch_size=4,
                    )
                )
            )  # fmt: skip
            run.start()

            def busy() -> bool:
                return any(
                    any(str(k).startswith("esap-batch-") for k in keys)
                    for keys in grid.processing().values()
                )

            wait_until(busy, 60, "a batch running on a grid worker")
            addr, keys = next((a, k) for a, k in grid.processing().items() if k)
            victim = grid.scheduler_info()["workers"][addr]["name"]
            job_id = int(cluster.job_status()[victim]["JobID"])
            os.killpg(_session_leader(victim), signal.SIGKILL)
            # batches of 4 rows (chunk=4, batch_size=4): batch i holds observations 4i+1..4i+4
            on_victim = {int(str(k).split("-")[-1]) for k in keys}
            lost = {str(4 * i + j) for i in on_victim for j in range(1, 5)}
            run.join(timeout=180)
            first = result["summary"]

            def reported() -> bool:
                return cluster.refresh_job_status()[victim]["Status"] == "Failed"

            wait_until(reported, 30, "DiracX to show the job Failed")
            row = cluster.job_status()[victim]
            assert (row["Status"], row["MinorStatus"]) == (
                "Failed",
                "Application Finished With Errors",
            )
            assert row["ApplicationStatus"] == "exit code -9"
            note = (
                f"DIRAC job {job_id} (worker {victim}) ended: Failed, "
                "Application Finished With Errors (exit code -9)"
            )
            assert note in first.notes, "the run's summary says what DiracX said of the job"
            assert f"DIRAC job {job_id} (worker {victim}) ended: Failed" in caplog.text
            failed = {f["observation"] for f in first.failures}
            assert failed <= lost and {f["error_type"] for f in first.failures} <= {"KilledWorker"}
            if failed:  # given up in this run: the next run retries exactly those
                again = map_observations(
                    "helloworld", "1..16", store, client=grid, facility="dirac", params=params
                )
                assert again.ok and again.processed == len(failed)
            others = [int(r["JobID"]) for n, r in cluster.job_status().items() if n != victim]
    finally:
        cluster.close()
    ds = xr.open_zarr(store, storage_options=opts)
    attempts = dict(zip(ds.obs.values, ds.ledger_attempts.values.tolist(), strict=True))
    retried = {o for o, n in attempts.items() if n > 1}
    print(
        f"site failed job {job_id}; batches on it {sorted(on_victim)}; retried: {sorted(retried)}"
    )
    assert (ds.ledger_status.values == DONE).all(), "every observation done in the end"
    assert retried and retried <= lost, (
        f"the observations of the batches on the failed job ({sorted(lost)}) were processed "
        f"again, but ledger_attempts says {attempts}: the retry is not counted"
    )
    assert all(attempts[o] == 2 for o in retried)
    after = dx_jobs([job_id, *others])
    assert after[job_id]["Status"] == "Failed", "a failed job is not overwritten as Killed"
    assert {after[j]["Status"] for j in others} == {"Killed"}


def test_cli_run_on_dirac_with_storage_options(dirac_env: str, s3: dict[str, Any]) -> None:
    """``esap-dask run --facility dirac --store s3://... --storage-options JSON``."""
    store = f"s3://{s3['bucket']}/cli.zarr"
    env = {
        **os.environ,
        "DASK_ESAP__FACILITIES__DIRAC__N_WORKERS": "2",
        "DASK_ESAP__FACILITIES__DIRAC__POLL_INTERVAL": "1",
    }
    args = ["run", "concordia", "-o", "1..4", "-s", store, "-f", "dirac", "-p", "nshow=3"]
    args += ["--storage-options", json.dumps(s3["options"]), "--json"]
    done = subprocess.run([*ESAP_DASK, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["succeeded"] == 4 and summary["facility"] == "dirac"
    ds = xr.open_zarr(store, storage_options=s3["options"])
    assert ds.xmax.shape == (4, 3)


def test_storage_options_from_the_environment_reach_the_run(
    monkeypatch: pytest.MonkeyPatch, s3: dict[str, Any], client: Any
) -> None:
    """AWS_* variables, as s3fs users set them, become the run's options (workers get them)."""
    for var in ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", S3_URL)
    opts = facilities.storage_options_for(f"s3://{s3['bucket']}/env.zarr", "local")
    assert opts == {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": S3_URL},
    }
    assert facilities.storage_options_for("/data/run.zarr", "dirac") == {}
    store = f"s3://{s3['bucket']}/env.zarr"
    summary = map_observations("helloworld", "1..5", store, client=client)
    assert summary.ok and summary.provenance.startswith(f"{store}.provenance/")
    assert xr.open_zarr(store, storage_options=s3["options"]).size.values.tolist() == [1] * 5


def test_store_lock_on_s3_refuses_a_live_holder_and_takes_over_a_dead_one(
    s3: dict[str, Any],
) -> None:
    """The lock object next to an s3:// store: create-if-absent, heartbeat, stale takeover."""
    store, opts, fs = f"s3://{s3['bucket']}/locked.zarr", s3["options"], s3["fs"]
    with StoreLock(store, "run-1", storage_options=opts), pytest.raises(LockHeld) as err:
        StoreLock(store, "run-2", storage_options=opts).acquire()
    assert f"{store}.lock: another run holds this store" in str(err.value)
    assert "run run-1" in str(err.value)
    assert not fs.exists(f"{s3['bucket']}/locked.zarr.lock"), "released on exit"
    dead = {"host": "grid-node-7", "pid": 1, "run": "old", "heartbeat": time.time() - 600}
    fs.pipe_file(f"{s3['bucket']}/locked.zarr.lock", json.dumps(dead).encode())
    with StoreLock(store, "run-3", storage_options=opts, stale_after=60) as lock:
        assert lock.took_over == dead
        holder = json.loads(fs.cat_file(f"{s3['bucket']}/locked.zarr.lock"))
        assert holder["run"] == "run-3"
