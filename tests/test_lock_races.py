"""The store lock under races: a stampede on a stale lock, reused pids, hung holders.

Every contender is a real process; the lock file is the one ``esap-dask run`` uses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esap_dask.store.lock import LockHeld, StoreLock, process_start

#: A contender: wait for the start file, try the lock, print the outcome, and hold a
#: won lock until the release file appears (so every loser meets a live holder).
CONTENDER = """
import json, os, sys, time
from pathlib import Path
from esap_dask.store.lock import LockHeld, StoreLock
store, go, done = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
lock = StoreLock(store, f"run-{os.getpid()}", heartbeat=0.2, stale_after=30)
try:
    lock.acquire()
except LockHeld as err:
    print(json.dumps({"won": False, "holder": err.holder.get("run")}), flush=True)
    sys.exit(0)
print(json.dumps({"won": True, "took_over": (lock.took_over or {}).get("run")}), flush=True)
while not done.exists():
    time.sleep(0.01)
lock.release()
"""


def stale_record(path: Path, **fields: object) -> None:
    record = {"host": socket.gethostname(), "run": "old-run", "started": "2026-01-01T00:00:00Z"}
    path.write_text(json.dumps({**record, **fields}))


def stampede(tmp_path: Path, n: int) -> list[dict[str, object]]:
    store, go, done = tmp_path / "s.zarr", tmp_path / "go", tmp_path / "done"
    script = tmp_path / "contender.py"
    script.write_text(CONTENDER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(store), str(go), str(done)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        time.sleep(1.0)  # let the interpreters start and wait at the gate
        go.touch()
        outcomes = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    finally:
        done.touch()
        for p in procs:
            p.wait(60)
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_a_stampede_on_a_dead_runs_lock_has_exactly_one_winner(tmp_path, round_):
    lock = tmp_path / "s.zarr.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_record(lock, pid=dead.pid)
    outcomes = stampede(tmp_path, 20)
    winners = [o for o in outcomes if o["won"]]
    assert len(winners) == 1, outcomes
    assert winners[0]["took_over"] == "old-run"
    losers = {o["holder"] for o in outcomes if not o["won"]}
    assert len(losers) == 1 and losers != {"old-run"}, "every loser names the one winner"
    assert not lock.exists(), "the winner released its lock"
    assert not list(tmp_path.glob("s.zarr.lock.*")), "no marker or temporary file is left"


@pytest.mark.slow
def test_a_stampede_on_a_free_store_has_exactly_one_winner(tmp_path):
    outcomes = stampede(tmp_path, 20)
    assert sum(o["won"] for o in outcomes) == 1, outcomes


def test_a_reused_pid_is_a_different_process(tmp_path):
    """The recorded pid is alive (it is this test's), but its start time is another's."""
    store = str(tmp_path / "s.zarr")
    lock = Path(store + ".lock")
    stale_record(lock, pid=os.getpid(), pid_start="another-boot:12345")
    with StoreLock(store, "run-2") as taken:
        assert taken.took_over is not None and taken.took_over["run"] == "old-run"
        assert json.loads(lock.read_text())["run"] == "run-2"


def test_a_live_pid_with_its_own_start_time_holds(tmp_path):
    store = str(tmp_path / "s.zarr")
    lock = Path(store + ".lock")
    stale_record(lock, pid=os.getpid(), pid_start=process_start(os.getpid()))
    with pytest.raises(LockHeld, match="run old-run"):
        StoreLock(store, "run-2").acquire()


def test_a_stale_heartbeat_is_stale_even_when_the_pid_is_alive(tmp_path):
    """A holder that stopped beating (hung, suspended, or a pid reused) is taken over."""
    store = str(tmp_path / "s.zarr")
    lock = Path(store + ".lock")
    stale_record(lock, pid=os.getpid(), pid_start=process_start(os.getpid()))
    old = time.time() - 600
    os.utime(lock, (old, old))
    with StoreLock(store, "run-2", stale_after=60) as taken:
        assert taken.took_over is not None and taken.took_over["run"] == "old-run"


def test_process_start_tells_processes_apart():
    a = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start(a.pid)
        assert start is not None and start == process_start(a.pid)
        assert start != process_start(os.getpid())
    finally:
        a.kill()
        a.wait()
    assert process_start(a.pid) is None


def test_a_holder_that_was_taken_over_stops_beating_and_leaves_the_new_lock(tmp_path):
    """A holder suspended beyond stale_after comes back: it must not refresh or delete the lock."""
    store = str(tmp_path / "s.zarr")
    lock = Path(store + ".lock")
    first = StoreLock(store, "run-1", heartbeat=0.05, stale_after=60)
    first.acquire()
    try:
        record = json.loads(lock.read_text())
        stale_record(lock, pid=os.getpid(), pid_start=record["pid_start"], token="someone-else")
        deadline = time.monotonic() + 10
        while not first.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.lost
    finally:
        first.release()
    assert json.loads(lock.read_text())["token"] == "someone-else", "release left it alone"
