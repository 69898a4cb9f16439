"""Observation runs on the real local SLURM (bash scripts/slurm.sh start) against local runs."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest
import xarray as xr
from distributed import Client

from esap_dask import ledger, map_observations, open_cluster, read_ledger
from esap_dask.engine.ledger import DONE
from tests.conftest import ESAP_DASK

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]


def products(store) -> xr.Dataset:
    """The products with their coordinates and attrs; the store's run records differ."""
    ds = xr.open_zarr(store).load()
    ds.attrs = {}
    return ds


def run_cli(*args: str) -> dict:
    proc = subprocess.run(
        [*ESAP_DASK, "run", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_dl3_products_on_slurm_equal_local(hess_dir, tmp_path):
    runs = sorted(hess_dir.glob("data/hess_dl3_dr1_obs_id_02*.fits.gz"))[:6]
    assert len(runs) == 6
    listing = tmp_path / "runs.txt"
    listing.write_text("\n".join(map(str, runs)) + "\n")
    on_slurm = run_cli(
        "dl3-products",
        "--facility",
        "slurm-loopback",
        "-o",
        str(listing),
        "-s",
        str(tmp_path / "slurm.zarr"),
    )
    on_local = run_cli(
        "dl3-products",
        "--facility",
        "local",
        "-o",
        str(listing),
        "-s",
        str(tmp_path / "local.zarr"),
    )
    assert on_slurm["succeeded"] == on_local["succeeded"] == 6
    workers = set(ledger(tmp_path / "slurm.zarr").worker)
    assert all("-" in w for w in workers), workers  # array-task workers, <job>-<index>
    xr.testing.assert_identical(
        products(tmp_path / "slurm.zarr"), products(tmp_path / "local.zarr")
    )


def _done(store) -> int:
    try:
        return int((read_ledger(str(store)).status == DONE).sum())
    except Exception:
        return 0


def test_scancel_of_a_worker_mid_run_loses_nothing_and_reruns_only_its_batch(tmp_path, client):
    values = list(range(60))
    params = {"sleep": 0.25}
    reference = map_observations(
        "helloworld", values, tmp_path / "local.zarr", client=client, params=params
    )
    assert reference.succeeded == 60
    store = tmp_path / "slurm.zarr"
    cancelled: list[str] = []

    def cancel_one_worker(cluster) -> None:
        deadline = time.monotonic() + 120
        while _done(store) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        victim = cluster.workers[sorted(cluster.workers)[0]].job_id  # "<array id>_<task>"
        subprocess.run(["scancel", victim], check=True)
        cancelled.append(victim)

    with open_cluster("slurm-loopback") as cluster, Client(cluster) as c:
        cluster.scale(4)
        c.wait_for_workers(4, timeout=120)
        killer = threading.Thread(target=cancel_one_worker, args=(cluster,))
        killer.start()
        summary = map_observations(
            "helloworld", values, store, client=c, params=params, chunk=5, batch_size=5
        )
        killer.join()
    assert cancelled, "no worker was cancelled"
    assert (summary.succeeded, summary.failed) == (60, 0)
    got, ref = xr.open_zarr(store), xr.open_zarr(tmp_path / "local.zarr")
    np.testing.assert_array_equal(got.obs.values, ref.obs.values)  # each row once, in order
    table = ledger(store)
    assert (table.status == "done").all()
    # The victim's batch may run again on another worker before the victim's thread ends
    # (scancel sends SIGTERM; the scheduler reschedules at once). Such a batch counts two
    # starts and the summary names it; every other observation ran exactly once.
    attempts = {str(k): int(v) for k, v in table.attempts.items()}
    twice = sorted((o for o, a in attempts.items() if a != 1), key=int)
    assert set(attempts.values()) <= {1, 2}, attempts
    for first in range(0, 60, 5):
        batch = [str(i) for i in range(first, first + 5)]
        if set(batch) & set(twice):
            assert set(batch) <= set(twice), attempts
            assert any(
                f"observations {batch[0]} … {batch[-1]} (5 observation(s)) were running on" in note
                for note in summary.notes
            ), summary.notes
    assert len(twice) <= 5 * len(cancelled), twice
    xr.testing.assert_identical(products(store), products(tmp_path / "local.zarr"))


def test_a_run_whose_workers_cannot_start_stops_with_slurms_reason(tmp_path):
    env = {**os.environ, "DASK_ESAP__FACILITIES__SLURM_LOOPBACK__QUEUE": "no-such-partition"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            *ESAP_DASK,
            "run",
            "helloworld",
            "--facility",
            "slurm-loopback",
            "-o",
            "1..5",
            "-s",
            str(tmp_path / "s.zarr"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Invalid partition name specified" in proc.stderr
    assert "unprocessed observations stay pending" in proc.stderr
    assert time.monotonic() - t0 < 120, "the run should stop, not wait for workers"
    status = subprocess.run(
        [*ESAP_DASK, "status", str(tmp_path / "s.zarr"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout)["counts"] == {"pending": 5, "done": 0, "failed": 0}
