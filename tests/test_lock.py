"""The store lock: live holders refuse, dead ones are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esap_dask.store.lock import LockHeld, StoreLock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_holder(path: Path, host: str, pid: int, age: float = 0.0) -> None:
    path.write_text(
        json.dumps({"host": host, "pid": pid, "run": "old-run", "started": "2026-01-01T00:00:00Z"})
    )
    then = time.time() - age
    os.utime(path, (then, then))


def test_live_holder_refuses_with_its_identity(tmp_path):
    store = str(tmp_path / "s.zarr")
    with StoreLock(store, "run-1"), pytest.raises(LockHeld) as err:
        StoreLock(store, "run-2").acquire()
    message = str(err.value)
    assert socket.gethostname() in message and f"pid {os.getpid()}" in message
    assert "run run-1" in message
    assert not Path(store + ".lock").exists()  # released


def test_dead_process_on_this_host_is_stale(tmp_path):
    store = str(tmp_path / "s.zarr")
    write_holder(Path(store + ".lock"), socket.gethostname(), dead_pid())
    lock = StoreLock(store, "run-2")
    with lock:
        assert json.loads(Path(store + ".lock").read_text())["run"] == "run-2"
    assert lock.took_over is not None and lock.took_over["run"] == "old-run"


def test_other_host_is_stale_only_without_heartbeat(tmp_path):
    store = str(tmp_path / "s.zarr")
    path = Path(store + ".lock")
    write_holder(path, "batch-node-7", 12345, age=5)
    with pytest.raises(LockHeld, match="batch-node-7"):
        StoreLock(store, "run-2", stale_after=60).acquire()
    write_holder(path, "batch-node-7", 12345, age=600)
    with StoreLock(store, "run-3", stale_after=60) as lock:
        assert lock.took_over["host"] == "batch-node-7"


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
    store = str(tmp_path / "s.zarr")
    with StoreLock(store, "run-1", heartbeat=0.05):
        path = Path(store + ".lock")
        os.utime(path, (0, 0))
        deadline = time.monotonic() + 10
        while path.stat().st_mtime == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > 0


def test_a_run_says_when_it_took_over_a_dead_runs_lock(tmp_path, client):
    from esap_dask import map_observations

    store = tmp_path / "s.zarr"
    write_holder(Path(f"{store}.lock"), socket.gethostname(), dead_pid())
    summary = map_observations("helloworld", range(3), store, client=client)
    assert summary.succeeded == 3
    assert "took over the lock of a run that is gone" in summary.notes[0]
    assert "run old-run" in summary.notes[0]
