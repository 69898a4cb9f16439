"""200 concurrent submissions by 4 users: all complete, each user lists only their own 50.

Jobs on facility ``local`` share the service's one LocalCluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from esap_dask.testing.service import ServiceProcess, write_tokens

USERS = {f"tok-user{i}": f"user{i}" for i in range(4)}
PER_USER = 50

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("uws-load")
    tokens = write_tokens(root / "tokens", USERS)
    with ServiceProcess(
        root / "data", tokens, extra=["--concurrency", "8", "--max-queued-per-user", "1000"]
    ) as svc:
        yield svc


def _submit(url: str, token: str, n: int) -> str:
    resp = requests.post(
        f"{url}/uws/jobs",
        data={
            "pipeline": "helloworld",
            "observations": "1..3",
            "PHASE": "RUN",
            "RUNID": f"load-{n}",
        },
        headers={"Authorization": f"Bearer {token}"},
        allow_redirects=False,
        timeout=120,
    )
    assert resp.status_code == 303, resp.text
    return resp.headers["Location"]


def test_200_concurrent_jobs_by_4_users(service: ServiceProcess) -> None:
    work = [(token, n) for n in range(PER_USER) for token in USERS]
    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        urls = list(pool.map(lambda tn: (tn[0], _submit(service.url, *tn)), work))
    submitted = time.monotonic() - t0
    deadline = time.monotonic() + 600
    phases: dict[str, str] = {}
    service_process = psutil.Process(service.proc.pid)  # type: ignore[union-attr]
    most = 0
    for token in USERS:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        while True:
            listing = s.get(
                f"{service.url}/uws/jobs", params={"PHASE": ["COMPLETED", "ERROR", "ABORTED"]}
            ).text
            most = max(most, len(service_process.children(recursive=True)))
            if listing.count("<uws:jobref") >= PER_USER:
                break
            assert time.monotonic() < deadline, "jobs did not finish within 10 minutes"
            time.sleep(1)
    elapsed = time.monotonic() - t0
    for token, url in urls:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        phases[url] = s.get(f"{url}/phase").text
    assert set(phases.values()) == {"COMPLETED"}, {p for p in phases.values()}
    for token, user in USERS.items():
        listing = requests.get(
            f"{service.url}/uws/jobs", headers={"Authorization": f"Bearer {token}"}
        ).text
        assert listing.count("<uws:jobref") == PER_USER
        assert listing.count(f"<uws:ownerId>{user}</uws:ownerId>") == PER_USER
    workers = Path(service.data_dir / "service.log").read_text()
    print(
        f"200 jobs: submitted in {submitted:.1f} s, all COMPLETED after {elapsed:.1f} s; "
        f"at most {most} processes under the service"
    )
    # One shared LocalCluster: its 2 worker processes (+ multiprocessing's helper), not
    # one cluster per job (8 jobs execute at a time).
    assert 0 < most <= 4, most
    assert "Traceback" not in workers
