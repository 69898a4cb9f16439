"""A run that fills its disk ends with a clear error, corrupts nothing, and resumes once freed.

The store lives on a real tmpfs of 2 MiB (mounted by the test: it needs root);
``--chunk 1`` makes every observation a file per array, so the disk fills after a
few dozen observations. ``esap-dask run`` exits 2 naming the store and what to do;
every row the ledger calls done holds its products; after the file system grows
(``mount -o remount,size=64m``), the same command finishes the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from esap_dask import read_ledger
from esap_dask.engine.ledger import DONE
from tests.conftest import ESAP_DASK

N = 200
ARGS = ["helloworld", "-o", f"1..{N}", "--chunk", "1", "--json"]

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at ``tmp_path/disk``, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs at {mount} ({done.stderr.strip()}); "
            "this test needs root (mount -t tmpfs)"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run(store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ESAP_DASK, "run", *ARGS, "-s", str(store)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def expected_checksum(obs: str) -> str:
    return hashlib.sha256(obs.encode()).hexdigest()


def check_done_rows(store: Path) -> int:
    """Each row the ledger calls done holds helloworld's products; how many are done."""
    ds = xr.open_zarr(store, consolidated=False).load()
    done = np.flatnonzero(read_ledger(str(store)).status == DONE)
    for k in done.tolist():
        obs = str(ds["obs"].values[k])
        assert ds["checksum"].values[k] == expected_checksum(obs), obs
        assert int(ds["size"].values[k]) == len(obs.encode()), obs
        assert ds["greeting"].values[k] == f"Hello, {obs}!", obs
    return len(done)


def test_full_disk_is_a_clear_error_and_the_next_run_completes(small_disk: Path) -> None:
    store = small_disk / "hello.zarr"
    full = run(store)
    assert full.returncode == 2, (full.returncode, full.stderr[-3000:])
    # no raw traceback of the OSError: one error line naming the store and what to do
    assert "Traceback (most recent call last)" not in full.stderr, full.stderr[-3000:]
    assert "OSError" not in full.stderr, full.stderr[-3000:]
    message = " ".join(full.stderr.split("error: ")[-1].split())  # the console wraps lines
    assert message.startswith(f"{store}: cannot write the store: no space left on device"), (
        full.stderr[-3000:]
    )
    assert "run the same command again" in message, message
    assert not (small_disk / "hello.zarr.lock").exists(), "the lock was not released"

    before = check_done_rows(store)
    assert before < N, "the disk was not full: make the store bigger than the tmpfs"

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run(store)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["failed"] == 0 and summary["processed"] == N - before, summary

    ds = xr.open_zarr(store).load()
    assert sorted(ds["obs"].values.tolist(), key=int) == [str(i) for i in range(1, N + 1)]
    assert (read_ledger(str(store)).status == DONE).all()
    assert check_done_rows(store) == N
