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
import re
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

import esap_dask.catalogs.facilities as facilities
from esap_dask import ledger, map_observations
from esap_dask.catalogs.workflows import get_pipeline
from esap_dask.engine.execute import batch_starts
from esap_dask.store.lock import LockHeld, StoreLock
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
    return sorted(str(v) for v in ds.data_vars)


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
    made_by = set(ledger(f"s3://{bucket}/hello.zarr", storage_options=opts).worker)
    assert made_by <= names and len(made_by) > 1
    grid_ds = xr.open_zarr(f"s3://{bucket}/showers.zarr", storage_options=opts)
    assert grid_ds.xmax.shape == (12, 10) and grid_ds.depth.attrs["units"] == "g cm-2"
    grid_ledger = ledger(f"s3://{bucket}/showers.zarr", storage_options=opts)
    assert set(grid_ledger.worker) <= names, "rows written by the grid workers"
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


def _batch_index(key: str) -> int:
    """The batch of a task key: ``esap-batch-<run>-<index>[-alone][-requeue<n>]``."""
    match = re.fullmatch(r"esap-batch-.*-(\d+)(-alone)?(-requeue\d+)?", key)
    assert match, f"not a batch task key: {key}"
    return int(match.group(1))


def test_a_job_the_site_fails_is_reported_and_its_observations_retried(
    dirac_s3: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The job of a worker busy with a batch dies (as under an OOM killer on the node).

    Distributed fails every task assigned to the dead worker, the batch queued behind
    the running one too: only the batch it was running counts a second attempt, and the
    run's notes name its observations; every other observation ran exactly once.
    """
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
            started: dict[str, tuple[str, ...]] = {}

            def busy() -> bool:  # a worker runs the pipeline on a batch (it told the scheduler)
                running = grid.run(
                    lambda dask_worker: [str(t.key) for t in dask_worker.state.executing]
                )
                keys = [k for ks in running.values() for k in ks if k.startswith("esap-batch-")]
                started.update((k, w) for k, w in batch_starts(grid, keys).items() if w)
                return bool(started)

            wait_until(busy, 60, "a batch running on a grid worker")
            (victim,) = next(iter(started.values()))
            addr = next(
                a for a, w in grid.scheduler_info()["workers"].items() if w["name"] == victim
            )
            job_id = int(cluster.job_status()[victim]["JobID"])
            os.killpg(_session_leader(victim), signal.SIGKILL)
            run.join(timeout=180)
            assert not run.is_alive(), "the run ends after its worker is lost"
            first = result["summary"]
            # distributed's own record of the loss: the tasks assigned to the worker (running
            # or queued on it) and the results that died with it
            (removal,) = [
                msg for _, msg in grid.get_events(addr) if msg.get("action") == "remove-worker"
            ]
            on_victim = {
                _batch_index(str(k))
                for k in {*removal["processing-tasks"], *removal["lost-computed-tasks"]}
            }

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
            assert first.ok and first.succeeded == 16, first.failures
            others = [int(r["JobID"]) for n, r in cluster.job_status().items() if n != victim]
    finally:
        cluster.close()
    # batches of 4 rows (chunk=4, batch_size=4): batch i holds observations 4i+1..4i+4
    interrupted = {
        i
        for i in range(4)
        if f"observations {4 * i + 1} … {4 * i + 4} (4 observation(s)) were running on "
        f"worker {victim} when it was lost; they run again, alone" in first.notes
    }
    print(
        f"site failed job {job_id}; batches on it {sorted(on_victim)}; running on it "
        f"{sorted(interrupted)}; notes: {first.notes}"
    )
    assert interrupted, f"the notes name the batch that was running on {victim}: {first.notes}"
    assert interrupted <= on_victim, "only batches the failed job had were interrupted"
    table = ledger(store, storage_options=opts)
    assert (table.status == "done").all(), "every observation done in the end"
    attempts = {str(k): int(v) for k, v in table.attempts.items()}
    twice = {str(4 * i + j) for i in interrupted for j in range(1, 5)}
    assert attempts == {o: 2 if o in twice else 1 for o in attempts}, (
        f"observations {sorted(twice, key=int)} ran twice (on the failed job, then again), "
        f"every other one once; the ledger's attempts say {attempts}"
    )
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
