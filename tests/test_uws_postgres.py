"""The job service on a real PostgreSQL server (Debian packages, started by scripts/postgres.sh).

Fails, naming the command to run, when the server is not up.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from pyvo.dal.tap import AsyncTAPJob

from esap_dask import read_ledger
from esap_dask.testing.service import ServiceProcess, wait_for_phase, write_tokens

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "postgres.sh"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def database() -> str:
    """The SQLAlchemy URL of the test database, emptied of job records."""
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        pytest.fail("PostgreSQL is not running: start it with `bash scripts/postgres.sh start`")
    url = subprocess.run(
        ["bash", str(SCRIPT), "url"], capture_output=True, text=True, check=True
    ).stdout.strip()
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS esap_uws_jobs"))
    engine.dispose()
    return url


def _s(token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


def test_lifecycle_concurrency_and_restart_on_postgresql(database: str, tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens", {"tok-p1": "p1", "tok-p2": "p2"})
    extra = ["--database", database, "--max-queued-per-user", "1000"]
    svc = ServiceProcess(tmp_path / "data", tokens, extra=extra).start()
    try:
        s = _s("tok-p1")
        created = s.post(
            f"{svc.url}/uws/jobs",
            allow_redirects=False,
            data={"pipeline": "helloworld", "observations": "1..3"},
        )
        job = AsyncTAPJob(created.headers["Location"], session=s, delete=False)
        job.run().wait(phases={"COMPLETED", "ERROR"}, timeout=60)
        assert job.phase == "COMPLETED"
        assert {"store", "provenance", "log", "ledger"} <= {r.id_ for r in job.results}
        assert _s("tok-p2").get(job.url).status_code == 404

        def submit(i: int) -> str:
            token = ("tok-p1", "tok-p2")[i % 2]
            resp = _s(token).post(
                f"{svc.url}/uws/jobs",
                allow_redirects=False,
                data={"pipeline": "helloworld", "observations": "1..3", "PHASE": "RUN"},
            )
            assert resp.status_code == 303, resp.text
            return resp.headers["Location"]

        with ThreadPoolExecutor(10) as pool:
            urls = list(pool.map(submit, range(20)))
        for i, url in enumerate(urls):
            assert (
                wait_for_phase(_s(("tok-p1", "tok-p2")[i % 2]), url, {"COMPLETED", "ERROR"})
                == "COMPLETED"
            )
        assert _s("tok-p2").get(f"{svc.url}/uws/jobs").text.count("<uws:jobref") == 10

        long = s.post(
            f"{svc.url}/uws/jobs",
            allow_redirects=False,
            data={
                "pipeline": "helloworld",
                "observations": "1..30",
                "sleep": "0.3",
                "PHASE": "RUN",
            },
        ).headers["Location"]
        wait_for_phase(s, long, {"EXECUTING"})
        time.sleep(2)
        svc.kill()
        svc = ServiceProcess(tmp_path / "data", tokens, port=svc.port, extra=extra).start()
        assert wait_for_phase(s, long, {"COMPLETED", "ERROR", "ABORTED"}) == "COMPLETED"
        assert job.phase == "COMPLETED", "records survive a restart"
        url = job.url
        job.delete()
        assert s.get(url).status_code == 404
    finally:
        svc.stop()


def _wait_done(store: Path, n: int, timeout: float = 60) -> None:
    """Wait until ``n`` observations of a running job are done in its store."""

    deadline = time.monotonic() + timeout
    while True:
        try:
            status = read_ledger(str(store)).status
            if (status == 1).sum() >= n:
                return
        except Exception:  # the store is being created
            pass
        assert time.monotonic() < deadline, f"{store}: fewer than {n} observations done"
        time.sleep(0.2)


def test_two_instances_share_the_database(database: str, tmp_path: Path) -> None:
    """Abort through one instance stops the work on the other; a dead one's job is adopted."""
    tokens = write_tokens(tmp_path / "tokens", {"tok-p1": "p1"})
    extra = ["--database", database, "--max-queued-per-user", "1000"]
    a = ServiceProcess(tmp_path / "data", tokens, extra=extra).start()
    b = ServiceProcess(tmp_path / "data", tokens, extra=extra).start()
    s = _s("tok-p1")
    slow = {"pipeline": "helloworld", "observations": "1..60", "sleep": "0.3", "PHASE": "RUN"}
    try:
        on_a = s.post(f"{a.url}/uws/jobs", data=slow, allow_redirects=False).headers["Location"]
        via_b = on_a.replace(a.url, b.url)
        wait_for_phase(s, via_b, {"EXECUTING"})
        _wait_done(tmp_path / "data" / "jobs" / on_a.rsplit("/", 1)[1] / "store.zarr", 3)
        assert s.post(f"{via_b}/phase", data={"PHASE": "ABORT"}).status_code == 200
        assert s.get(f"{on_a}/phase").text == "ABORTED"
        deadline = time.monotonic() + 30
        while "stopped (the job is ABORTED)" not in s.get(f"{on_a}/results/log").text:
            assert time.monotonic() < deadline, "instance A kept running an aborted job"
            time.sleep(0.5)
        time.sleep(1)
        done = s.get(f"{on_a}/results/ledger").json()["counts"]["done"]
        assert 0 < done < 60

        second = s.post(f"{a.url}/uws/jobs", data=slow, allow_redirects=False)
        job = second.headers["Location"].replace(a.url, b.url)
        wait_for_phase(s, job, {"EXECUTING"})
        _wait_done(tmp_path / "data" / "jobs" / job.rsplit("/", 1)[1] / "store.zarr", 3)
        a.kill()
        assert wait_for_phase(s, job, {"COMPLETED", "ERROR", "ABORTED"}) == "COMPLETED"
        log = s.get(f"{job}/results/log").text
        assert "which is gone: resuming in" in log, log
    finally:
        a.stop()
        b.stop()
