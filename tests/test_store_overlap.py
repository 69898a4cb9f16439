"""A run into a new store: the workers start their rows while the driver creates the store.

The store's creation (22-42 ms of a 0.2 s run of 10,000 tiny observations, more for a
pipeline of many arrays) no longer delays the first task: the tasks run their first rows
meanwhile and wait for the store only before they write. These tests slow the creation
down (the driver's ``make_store`` sleeps first) so that the order is certain.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import xarray as xr

import esap_dask.store.run as run_module
from esap_dask import ledger, map_observations
from esap_dask.store import StoreError

SEEN = str(Path(__file__).parent / "pipelines" / "store_seen.py")


def _slow_create(monkeypatch: pytest.MonkeyPatch, seconds: float, fail: bool = False) -> None:
    real = run_module.make_store

    def slow(store: str, *args: object, **kwargs: object) -> object:
        time.sleep(seconds)
        if fail:
            raise StoreError(f"{store}: cannot create the store (the test's failure)")
        return real(store, *args, **kwargs)

    monkeypatch.setattr(run_module, "make_store", slow)


def test_the_first_rows_run_while_the_store_is_created(tmp_path, client, monkeypatch):
    _slow_create(monkeypatch, 2.0)
    store = tmp_path / "seen.zarr"
    summary = map_observations(SEEN, range(40), store, client=client, params={"store": str(store)})
    assert (summary.processed, summary.succeeded, summary.failed) == (40, 40, 0)
    ds = xr.open_zarr(store)
    assert ds.sizes["obs"] == 40
    assert (ds.saw_store.values == 0).any(), "every row waited for the store to exist"
    assert (ledger(store).status == "done").all()  # and every row was written after it


def test_a_store_that_cannot_be_created_fails_the_run_and_frees_the_workers(
    tmp_path, client, monkeypatch
):
    _slow_create(monkeypatch, 0.5, fail=True)
    store = tmp_path / "broken.zarr"
    with pytest.raises(StoreError, match="cannot create the store"):
        map_observations("helloworld", range(30), store, client=client)
    assert not store.exists()  # nothing half-made
    monkeypatch.undo()
    # the tasks that waited for that store gave up: the next run has the workers
    summary = map_observations("helloworld", range(30), tmp_path / "ok.zarr", client=client)
    assert summary.succeeded == 30
    again = map_observations("helloworld", range(30), store, client=client)
    assert again.succeeded == 30 and xr.open_zarr(store).sizes["obs"] == 30
