"""One service, many users: nobody's stuck or numerous jobs hold up another user's job.

The service runs as a real process on loopback; jobs run on its shared LocalCluster
(two workers of one thread on these machines).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from esap_dask.testing.service import ServiceProcess, write_tokens

pytestmark = pytest.mark.slow

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
TERMINAL = {"COMPLETED", "ERROR", "ABORTED"}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    tokens = write_tokens(tmp_path / "tokens", TOKENS)
    with ServiceProcess(tmp_path / "data", tokens, extra=["--concurrency", "4"]) as svc:
        yield svc


def session(token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


def run_job(svc: ServiceProcess, s: requests.Session, **params: object) -> str:
    resp = s.post(f"{svc.url}/uws/jobs", data={**params, "PHASE": "RUN"}, allow_redirects=False)
    assert resp.status_code == 303, resp.text
    return str(resp.headers["Location"])


def phase(s: requests.Session, url: str) -> str:
    return s.get(f"{url}/phase").text


def wait_for(s: requests.Session, url: str, phases: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (now := phase(s, url)) not in phases:
        assert time.monotonic() < deadline, f"{url} still {now} after {timeout:.0f} s"
        time.sleep(0.3)
    return now


def test_abort_of_stuck_tasks_frees_their_workers(service: ServiceProcess) -> None:
    """Alice's two observations would hold both workers for ten minutes; ABORT frees them."""
    alice, bob = session("tok-alice"), session("tok-bob")
    stuck = run_job(service, alice, pipeline="helloworld", observations="1..2", sleep="600")
    wait_for(alice, stuck, {"EXECUTING"}, 60)
    time.sleep(8)  # both observations now sleep on the two workers
    assert alice.post(f"{stuck}/phase", data={"PHASE": "ABORT"}).status_code in (200, 303)
    # the service restarts the workers still running the aborted tasks, within 10 s (as its
    # own log's time stamps say: the machine may be too loaded for the test's clock)
    deadline = time.monotonic() + 60
    while "restarting 2 worker(s)" not in (log := alice.get(f"{stuck}/results/log").text):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    stamps = {
        kind: datetime.fromisoformat(line.split(" ", 1)[0])
        for line in log.splitlines()
        for kind in ("aborted:", "restarting")
        if kind in line
    }
    assert (stamps["restarting"] - stamps["aborted:"]).total_seconds() < 10, log
    quick = run_job(service, bob, pipeline="helloworld", observations="1..4")
    assert wait_for(bob, quick, TERMINAL, 60) == "COMPLETED", bob.get(f"{quick}/error").text
    assert bob.get(f"{quick}/results/ledger").json()["counts"]["done"] == 4


def test_many_jobs_of_one_user_do_not_queue_another_users_job_behind_them(
    service: ServiceProcess,
) -> None:
    """Bob's job, sent after eight of Alice's, ends while most of hers are still to do."""
    alice, bob = session("tok-alice"), session("tok-bob")
    hers = [
        run_job(service, alice, pipeline="helloworld", observations="1..8", sleep="1")
        for _ in range(8)
    ]
    wait_for(alice, hers[0], {"EXECUTING"}, 60)
    his = run_job(service, bob, pipeline="helloworld", observations="1..2")
    assert wait_for(bob, his, TERMINAL, 300) == "COMPLETED", bob.get(f"{his}/error").text
    unfinished = [url for url in hers if phase(alice, url) not in TERMINAL]
    # first in, first out would have run Bob's job ninth, after at least five of hers
    assert len(unfinished) >= 5, [phase(alice, url) for url in hers]
    for url in hers:
        assert wait_for(alice, url, TERMINAL, 300) == "COMPLETED"
