"""Per-user quotas, bounds and hygiene of the job service, over real HTTP.

A user at a cap is refused (429 for job counts, 400 for values out of bounds) with the
limit named, and another user is not affected; DESTRUCTION is moved to the service's
bound; control characters are refused and the job list stays valid; every response
carries the security headers; the data directory and database are private.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from esap_dask.testing.service import ServiceProcess, write_tokens

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base = tmp_path_factory.mktemp("quotas")
    root = base / "inputs"
    root.mkdir()
    for i in range(6):
        (root / f"r{i}.dat").write_bytes(b"x" * i)
    tokens = write_tokens(base / "tokens", {"tok-a": "alice", "tok-b": "bob", "tok-c": "carol"})
    extra = [
        "--data-root", str(root),
        "--max-jobs-per-user", "3",
        "--max-queued-per-user", "1",
        "--max-observations", "5",
        "--max-destruction-days", "10",
        "--max-execution-duration", "100",
        "--max-parameter", "helloworld.sleep=2",
    ]  # fmt: skip
    with ServiceProcess(base / "data", tokens, extra=extra) as svc:
        yield svc


def _session(token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


def _post(svc: ServiceProcess, s: requests.Session, **data: str) -> requests.Response:
    return s.post(f"{svc.url}/uws/jobs", data=data, allow_redirects=False)


def test_job_caps_refuse_one_user_only(service: ServiceProcess) -> None:
    alice, bob = _session("tok-a"), _session("tok-b")
    urls = [_post(service, alice, pipeline="helloworld", observations="1") for _ in range(3)]
    assert [r.status_code for r in urls] == [303, 303, 303]
    over = _post(service, alice, pipeline="helloworld", observations="1")
    assert over.status_code == 429 and "max-jobs-per-user" in over.text, over.text
    assert _post(service, bob, pipeline="helloworld", observations="1").status_code == 303
    listed = alice.get(f"{service.url}/uws/jobs").text
    assert listed.count("<uws:jobref") == 3, "the refused job must not exist"
    for r in urls[1:]:
        assert alice.delete(r.headers["Location"]).status_code == 200
    slow = _post(service, alice, pipeline="helloworld", observations="1..3", sleep="2", PHASE="RUN")
    assert slow.status_code == 303, slow.text
    queued = _post(service, alice, pipeline="helloworld", observations="1", PHASE="RUN")
    assert queued.status_code == 429 and "max-queued-per-user" in queued.text, queued.text
    pending = urls[0].headers["Location"]
    refused = alice.post(f"{pending}/phase", data={"PHASE": "RUN"})
    assert refused.status_code == 429, refused.text
    other = _post(service, bob, pipeline="helloworld", observations="1", PHASE="RUN")
    assert other.status_code == 303, other.text
    deadline = time.monotonic() + 60
    url = other.headers["Location"]
    while bob.get(f"{url}/phase").text != "COMPLETED":
        assert time.monotonic() < deadline, "bob's job did not run while alice is capped"
        bob.get(url, params={"WAIT": "5"})


def test_values_out_of_bounds_name_the_limit(service: ServiceProcess) -> None:
    carol = _session("tok-c")
    cases = {
        "observations": {"observations": "1..6"},
        "sleep": {"observations": "1", "sleep": "5"},
    }
    for name, data in cases.items():
        resp = _post(service, carol, pipeline="helloworld", **data)
        assert resp.status_code == 400 and f"'{name}'" in resp.text, resp.text
    glob = _post(service, carol, pipeline="helloworld", observations="*.dat")
    assert glob.status_code == 400 and "max-observations" in glob.text, glob.text
    five = _post(service, carol, pipeline="helloworld", observations="r[1-5].dat")
    assert five.status_code == 303, five.text
    carol.delete(five.headers["Location"])


def test_destruction_and_duration_are_bounded(service: ServiceProcess) -> None:
    carol = _session("tok-c")
    resp = _post(
        service,
        carol,
        pipeline="helloworld",
        observations="1",
        DESTRUCTION="9999-12-31T00:00:00Z",
        EXECUTIONDURATION="999999",
    )
    assert resp.status_code == 303, resp.text
    url = resp.headers["Location"]
    destruction = datetime.fromisoformat(carol.get(f"{url}/destruction").text.replace("Z", ""))
    bound = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=10)
    assert destruction <= bound + timedelta(seconds=5)
    assert destruction >= bound - timedelta(minutes=1)
    assert carol.get(f"{url}/executionduration").text == "100"
    carol.post(f"{url}/destruction", data={"DESTRUCTION": "9999-01-01T00:00:00Z"})
    later = datetime.fromisoformat(carol.get(f"{url}/destruction").text.replace("Z", ""))
    assert later <= bound + timedelta(seconds=30)
    carol.delete(url)


def test_control_characters_are_refused_and_the_list_stays_valid(service: ServiceProcess) -> None:
    carol = _session("tok-c")
    for data in (
        {"RUNID": "run\x01one"},
        {"message": "hi\x1b[31m"},
        {"message": "nul\x00"},
        {"mess\x07age": "x"},
    ):
        resp = _post(service, carol, pipeline="helloworld", observations="1", **data)
        assert resp.status_code == 400, (data, resp.status_code, resp.text)
        assert "control character" in resp.text
    listing = carol.get(f"{service.url}/uws/jobs")
    assert listing.status_code == 200
    from lxml import etree

    etree.fromstring(listing.content)


def test_security_headers_on_every_response(service: ServiceProcess) -> None:
    carol = _session("tok-c")
    responses = {
        "page": carol.get(f"{service.url}/"),
        "list": carol.get(f"{service.url}/uws/jobs"),
        "401": requests.get(f"{service.url}/uws/jobs"),
        "404": carol.get(f"{service.url}/uws/jobs/nope"),
        "400": _post(service, carol, pipeline="nope", observations="1"),
    }
    for what, resp in responses.items():
        assert resp.headers.get("X-Frame-Options") == "DENY", what
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", what
        assert resp.headers.get("Referrer-Policy") == "same-origin", what
    csp = responses["page"].headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp and "unsafe-inline" not in csp


def test_data_directory_and_database_are_private(service: ServiceProcess) -> None:
    data = Path(service.data_dir)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "jobs").stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "jobs.sqlite").stat().st_mode) == 0o600
    for job in (data / "jobs").iterdir():
        assert stat.S_IMODE(job.stat().st_mode) & 0o077 == 0, job
