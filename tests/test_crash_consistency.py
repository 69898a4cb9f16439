"""A run killed with SIGKILL at any point leaves a store the next run completes, exactly once.

Real ``esap-dask run`` processes (driver and workers, one process group) are killed
at seeded random moments: while the lock is taken, the store created, regions
and ledger rows written, provenance recorded. The next run repairs the store and
finishes; its products equal a clean run's and every observation is done once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from esap_dask.engine.ledger import DONE
from tests.conftest import ESAP_DASK

ARGS = ["helloworld", "-o", "1..60", "-p", "sleep=0.05", "--json"]


def run(store: Path) -> dict[str, object]:
    done = subprocess.run(
        [*ESAP_DASK, "run", *ARGS, "-s", str(store)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def products(store: Path) -> xr.Dataset:
    ds = xr.open_zarr(store).load()
    return ds[[v for v in ds.data_vars if not str(v).startswith("ledger_")]].sortby("obs")


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_is_exactly_once(tmp_path: Path) -> None:
    run(tmp_path / "clean.zarr")
    clean = products(tmp_path / "clean.zarr")
    rng = random.Random(13)
    store = tmp_path / "killed.zarr"
    kills = []
    for _ in range(4):  # several kills of successive runs on one store, then one that finishes
        proc = subprocess.Popen(
            [*ESAP_DASK, "run", *ARGS, "-s", str(store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        delay = rng.uniform(0.2, 6.0)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, at once
        proc.wait()
        kills.append((round(delay, 2), proc.returncode))
    summary = run(store)
    assert summary["failed"] == 0 and summary["succeeded"] == summary["processed"], summary

    ds = xr.open_zarr(store).load()
    ids = ds["obs"].values.tolist()
    assert sorted(ids, key=int) == [str(i) for i in range(1, 61)], "each observation once"
    assert (ds["ledger_status"].values == DONE).all()
    got = products(store)
    for name in clean.data_vars:
        assert np.array_equal(got[name].values, clean[name].values), (name, kills)
    again = run(store)
    assert again["processed"] == 0, "a finished store has nothing left to do"
