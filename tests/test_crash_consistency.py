"""A run killed with SIGKILL at each write step leaves a store the next run completes, exactly once.

Real ``esap-dask run`` processes (driver and workers, one process group) are killed
at named write steps by the test hook ``ESAP_DASK_CRASH_AT=<step>[:<n>]``
(:func:`esap_dask.store.crash_point`): the store's creation, the append of new
observations, a batch's products before its ledger rows, between ledger columns,
around consolidation, while provenance is written. After the kill, what the
ledger calls done holds a clean run's products, and :func:`esap_dask.store.repair`
leaves a store whose arrays and consolidated metadata agree; the next run finishes
with every observation done once and a clean run's products.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from esap_dask import ledger
from esap_dask.store import obs_arrays, open_store, repair
from tests.conftest import ESAP_DASK

N = 24
ARGS = ["helloworld", "-o", f"1..{N}", "--chunk", "2", "--json"]

pytestmark = pytest.mark.slow


def run(store: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [*ESAP_DASK, "run", *args, "-s", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def killed_run(store: Path, step: str, *args: str) -> None:
    """Run with the crash hook set to ``step``; the run must die there (SIGKILL)."""
    proc = subprocess.run(
        [*ESAP_DASK, "run", *args, "-s", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # the hook kills the run's whole process group
        env={**os.environ, "ESAP_DASK_CRASH_AT": step},
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was not killed at {step} (exit {proc.returncode}): {proc.stderr[-2000:]}"
    )


def products(store: Path) -> xr.Dataset:
    ds = xr.open_zarr(store).load()
    return ds.sortby("obs")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    store = tmp_path_factory.mktemp("clean") / "clean.zarr"
    run(store, *ARGS)
    return products(store)


def check_after_kill(store: Path, clean: xr.Dataset) -> None:
    """What a killed run left: rows the ledger calls done hold a clean run's products."""
    if not (store / "zarr.json").exists():
        return
    group = open_store(str(store))
    meta = group.attrs.get("esap")
    if not isinstance(meta, dict) or meta.get("incomplete"):
        return  # a creation cut short: the next run makes the store afresh
    n = repair(group)
    lengths = {name: arr.shape[0] for name, arr in obs_arrays(group) if name not in ("obs",)}
    lengths = {k: v for k, v in lengths.items() if k not in clean.coords or k == "obs"}
    assert set(lengths.values()) <= {n}, lengths
    ds = xr.open_zarr(store).load()  # the consolidated metadata agrees with the arrays
    assert ds.sizes.get("obs", 0) == n
    done = ds.isel(obs=np.flatnonzero(ledger(store).status == "done"))
    for name in clean.data_vars:
        want = clean[name].sel(obs=done["obs"].values).values
        assert np.array_equal(done[name].values, want), (name, done["obs"].values)


def check_complete(store: Path, clean: xr.Dataset) -> None:
    ds = xr.open_zarr(store).load()
    ids = ds["obs"].values.tolist()
    assert sorted(ids, key=int) == [str(i) for i in range(1, N + 1)], "each observation once"
    table = ledger(store)
    assert (table.status == "done").all()
    assert (table.run != "").all() and (table.worker != "").all()
    got = products(store)
    for name in clean.data_vars:
        assert np.array_equal(got[name].values, clean[name].values), name
    group = zarr.open_group(str(store), mode="r", use_consolidated=True)
    assert group.metadata.consolidated_metadata is not None


#: (step, observations a first, clean run wrote before the killed one: 0 = a new store)
STEPS = [
    ("create", 0),  # the group is there, its arrays are not
    ("create:2", 0),  # every array and the ids written, the group still marked incomplete
    ("created", 0),  # created and consolidated, no task started
    ("append:3", N // 2),  # a run that extends the store: three arrays grown, the others not
    ("consolidate-before:1", N // 2),  # the ids appended, the consolidated metadata not rewritten
    ("products", 0),  # a batch's products written, its ledger rows not
    ("ledger-column:3", 0),  # three ledger columns of a batch written, the others not
    ("provenance", 0),  # the PROV-JSON document half written, the attrs not updated
]


@pytest.mark.parametrize(("step", "before"), STEPS, ids=[f"{s}-{b}" for s, b in STEPS])
def test_killed_at_a_write_step_then_rerun_is_exactly_once(
    tmp_path: Path, clean: xr.Dataset, step: str, before: int
) -> None:
    store = tmp_path / "killed.zarr"
    if before:
        first = run(store, "helloworld", "-o", f"1..{before}", "--chunk", "2", "--json")
        assert first["succeeded"] == before, first
    killed_run(store, step, *ARGS)
    check_after_kill(store, clean)
    summary = run(store, *ARGS)
    assert summary["failed"] == 0, summary
    check_complete(store, clean)
    again = run(store, *ARGS)
    assert again["processed"] == 0, "a finished store has nothing left to do"


@pytest.mark.parametrize("step", ["products", "ledger-column:2"])
def test_forced_rerun_killed_keeps_ledger_and_products_together(tmp_path: Path, step: str) -> None:
    """A forced rerun of changed content (same size and mtime) killed mid-batch is redone.

    The rerun rewrites products before ledger rows; the rows it will redo read pending
    from its start, so the next (unforced) run redoes what the killed one left, and every
    row's ledger checksum is that of the file its products come from.
    """
    files = tmp_path / "obs"
    files.mkdir()
    for i in range(8):
        (files / f"o{i}.dat").write_bytes(bytes([i]) * 100)
    args = ["helloworld", "-o", str(files / "*.dat"), "--chunk", "2", "--json"]
    store = tmp_path / "s.zarr"
    run(store, *args)
    for i in range(8):  # new content, same size and mtime: the fingerprint is unchanged
        path = files / f"o{i}.dat"
        st = path.stat()
        path.write_bytes(bytes([100 + i]) * 100)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    killed_run(store, step, *args, "--force")
    run(store, *args)
    ds = xr.open_zarr(store).load()
    table = ledger(store)
    assert (table.status == "done").all()
    for k, source in enumerate(table.source):
        data = Path(source).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        assert ds["checksum"].values[k] == sha, f"products of {source} are not its content's"
        assert table.checksum.iloc[k] == sha, f"the ledger of {source} is stale"
