"""The UWS 1.1 job service over HTTP: pyvo drives the lifecycle; every document is checked.

The service runs as a real uvicorn process on loopback (``esap-dask serve``).
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from lxml import etree
from pyvo.dal.tap import AsyncTAPJob
from pyvo.io.uws import parse_job, parse_job_list

from esap_dask.testing.service import ServiceProcess, uws_schema, write_tokens

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"
HESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hess-dl3-dr1"
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The job service on loopback, with two users and a 5 s WAIT bound."""
    root = tmp_path_factory.mktemp("uws")
    tokens = write_tokens(root / "tokens", TOKENS)
    # HESS is the data root; DESTRUCTION far ahead (2099) is allowed here, see test_uws_quotas
    extra = ["--max-wait", "5", "--data-root", str(HESS), "--max-destruction-days", "40000"]
    with ServiceProcess(root / "data", tokens, extra=extra) as svc:
        yield svc


@pytest.fixture(scope="module")
def schema() -> object:
    return uws_schema(SCHEMAS)


def session(token: str = "tok-alice", *, basic: bool = False) -> requests.Session:
    s = requests.Session()
    if basic:
        s.auth = ("anyone", token)
    else:
        s.headers["Authorization"] = f"Bearer {token}"
    return s


def checked(resp: requests.Response, schema: object, kind: str = "job") -> bytes:
    """The body of a UWS XML response, validated against UWS.xsd and pyvo's pedantic parser."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/xml")
    body = resp.content
    root = etree.fromstring(body)
    assert schema.validate(root), schema.error_log  # type: ignore[attr-defined]
    if kind in ("job", "jobs"):
        assert root.get("version") == "1.1"
    if kind == "job":
        parse_job(io.BytesIO(body), pedantic=True)
        for tag in ("creationTime", "startTime", "endTime", "destruction"):
            el = root.find(f"{{http://www.ivoa.net/xml/UWS/v1.0}}{tag}")
            if el is not None and el.text:
                assert el.text.endswith("Z"), (tag, el.text)
    elif kind == "jobs":
        parse_job_list(io.BytesIO(body), pedantic=True)
    return body


def create(svc: ServiceProcess, s: requests.Session, **params: object) -> str:
    resp = s.post(f"{svc.url}/uws/jobs", data=params, allow_redirects=False)
    assert resp.status_code == 303, resp.text
    return resp.headers["Location"]


def wait_phase(s: requests.Session, url: str, phases: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = s.get(f"{url}/phase").text
        if phase in phases:
            return phase
        s.get(url, params={"WAIT": "2"})
    raise AssertionError(f"{url} stayed {phase}, not {phases}")


def test_pyvo_drives_the_whole_lifecycle(service: ServiceProcess, schema: object) -> None:
    s = session()
    url = create(
        service, s, pipeline="helloworld", observations="1..3", message="Hi", RUNID="first"
    )
    job = AsyncTAPJob(url, session=s, delete=False)
    assert job.phase == "PENDING"
    assert job.owner == "alice"
    checked(s.get(url), schema)
    job.execution_duration = 600
    assert float(job.execution_duration.sec) == 600
    later = datetime.now(UTC) + timedelta(days=2)
    job.destruction = later
    assert abs((job.destruction.to_datetime(timezone=UTC) - later).total_seconds()) < 2
    job.run()
    job.wait(phases={"COMPLETED", "ERROR"}, timeout=60)
    assert job.phase == "COMPLETED", s.get(f"{url}/error").text
    body = checked(s.get(url), schema)
    assert b"<uws:runId>first</uws:runId>" in body
    ids = {r.id_: r.href for r in job.results}
    assert set(ids) >= {"store", "provenance", "log", "ledger"}
    checked(s.get(f"{url}/results"), schema, "results")
    checked(s.get(f"{url}/parameters"), schema, "parameters")
    prov = s.get(ids["provenance"]).json()
    assert "activity" in prov and "entity" in prov
    ledger = s.get(ids["ledger"]).json()
    assert ledger["counts"] == {"pending": 0, "done": 3, "failed": 0}
    assert "done: 3 succeeded" in s.get(ids["log"]).text
    archive = zipfile.ZipFile(io.BytesIO(s.get(ids["store"]).content))
    assert "store.zarr/zarr.json" in archive.namelist()
    meta = s.get(f"{ids['store']}/zarr.json").json()
    assert meta["node_type"] == "group"
    job.delete()
    assert s.get(url).status_code == 404
    listing = checked(s.get(f"{service.url}/uws/jobs"), schema, "jobs")
    assert url.rsplit("/", 1)[1].encode() not in listing


def test_store_read_back_through_the_archive(service: ServiceProcess, tmp_path: Path) -> None:
    import xarray as xr

    s = session()
    url = create(service, s, pipeline="helloworld", observations="4,5,6", PHASE="RUN")
    assert wait_phase(s, url, {"COMPLETED", "ERROR"}) == "COMPLETED"
    zipfile.ZipFile(io.BytesIO(s.get(f"{url}/results/store").content)).extractall(tmp_path)
    ds = xr.open_zarr(tmp_path / "store.zarr")
    assert list(ds["obs"].values) == ["4", "5", "6"]
    assert list(ds["greeting"].values) == ["Hello, 4!", "Hello, 5!", "Hello, 6!"]


def test_abort_stops_the_work_and_keeps_results(service: ServiceProcess, schema: object) -> None:
    s = session()
    url = create(
        service, s, pipeline="helloworld", observations="1..200", sleep="0.25", PHASE="RUN"
    )
    job = AsyncTAPJob(url, session=s, delete=False)
    wait_phase(s, url, {"EXECUTING"})
    # abort once the run log says observations are done (a progress line every 10 s)
    deadline = time.monotonic() + 120
    while not re.search(r": [1-9]\d*/200 observations", s.get(f"{url}/results/log").text):
        assert time.monotonic() < deadline, s.get(f"{url}/results/log").text[-2000:]
        time.sleep(0.5)
    job.abort()
    assert job.phase == "ABORTED"
    deadline = time.monotonic() + 30
    while "ledger" not in {r.id_ for r in AsyncTAPJob(url, session=s, delete=False).results}:
        assert time.monotonic() < deadline, "no ledger after abort"
        time.sleep(0.5)
    time.sleep(1)
    counts = s.get(f"{url}/results/ledger").json()["counts"]
    assert 0 < counts["done"] < 200, counts
    assert "stopped" in s.get(f"{url}/results/log").text
    checked(s.get(url), schema)
    assert s.post(f"{url}/phase", data={"PHASE": "RUN"}).status_code == 403


def test_phase_machine_refuses_illegal_transitions(service: ServiceProcess) -> None:
    s = session()
    url = create(service, s, pipeline="helloworld", observations="1..2")
    post = lambda res, **d: s.post(f"{url}/{res}", data=d, allow_redirects=False)  # noqa: E731
    assert post("executionduration", EXECUTIONDURATION="30").status_code == 303
    assert s.get(f"{url}/executionduration").text == "30"
    assert post("parameters", message="Bye").status_code == 303
    assert post("parameters", nope="1").status_code == 400
    assert post("phase", PHASE="SUSPEND").status_code == 400
    assert post("phase", PHASE="RUN").status_code == 303
    assert wait_phase(s, url, {"COMPLETED", "ERROR"}) == "COMPLETED"
    assert post("phase", PHASE="ABORT").status_code == 403
    assert post("phase", PHASE="RUN").status_code == 403
    assert post("parameters", message="late").status_code == 403
    assert post("executionduration", EXECUTIONDURATION="5").status_code == 403
    assert post("destruction", DESTRUCTION="2099-01-01T00:00:00Z").status_code == 303
    assert s.get(f"{url}/destruction").text == "2099-01-01T00:00:00.000Z"
    aborted = create(service, s, pipeline="helloworld", observations="1..2")
    assert s.post(f"{aborted}/phase", data={"PHASE": "ABORT"}).status_code == 200
    assert s.get(f"{aborted}/phase").text == "ABORTED"
    assert s.post(f"{aborted}/phase", data={"PHASE": "RUN"}).status_code == 403
    assert s.get(f"{aborted}/quote").status_code == 200
    assert s.get(f"{aborted}/owner").text == "alice"


def test_wait_blocks_boundedly_and_honours_phase(service: ServiceProcess) -> None:
    s = session()
    url = create(service, s, pipeline="helloworld", observations="1..2")
    t0 = time.monotonic()
    s.get(url, params={"WAIT": "-1"})
    assert 4.5 < time.monotonic() - t0 < 8, "WAIT=-1 must block up to the 5 s bound"
    t0 = time.monotonic()
    s.get(url, params={"WAIT": "30", "PHASE": "EXECUTING"})
    assert time.monotonic() - t0 < 1, "WAIT with another PHASE returns at once"
    assert s.get(url, params={"WAIT": "soon"}).status_code == 400
    s.post(f"{url}/phase", data={"PHASE": "RUN"})
    t0 = time.monotonic()
    phases = []
    while (phase := s.get(f"{url}/phase").text) not in ("COMPLETED", "ERROR"):
        phases.append(phase)
        s.get(url, params={"WAIT": "30"})
        assert time.monotonic() - t0 < 30
    t0 = time.monotonic()
    s.get(url, params={"WAIT": "30"})
    assert time.monotonic() - t0 < 1, "WAIT on a finished job returns at once"


def test_list_filters(service: ServiceProcess, schema: object) -> None:
    s = session("tok-filters-not-a-user")
    assert s.get(f"{service.url}/uws/jobs").status_code == 401
    s = session("tok-bob")
    start = datetime.now(UTC)
    time.sleep(0.01)
    urls = [create(service, s, pipeline="helloworld", observations="1..2") for _ in range(3)]
    ids = [u.rsplit("/", 1)[1] for u in urls]
    s.post(f"{urls[0]}/phase", data={"PHASE": "ABORT"})

    def jobs(**p):
        return parse_job_list(
            io.BytesIO(checked(s.get(f"{service.url}/uws/jobs", params=p), schema, "jobs")),
            pedantic=True,
        )

    after = start.isoformat().replace("+00:00", "Z")
    assert [j.jobid for j in jobs(AFTER=after)] == ids
    assert [j.jobid for j in jobs(AFTER=after, PHASE="PENDING")] == ids[1:]
    both = jobs(AFTER=after, PHASE=["PENDING", "ABORTED"])
    assert sorted(j.jobid for j in both) == sorted(ids)
    assert [j.jobid for j in jobs(LAST="2")] == [ids[2], ids[1]]
    assert s.get(f"{service.url}/uws/jobs", params={"PHASE": "NOPE"}).status_code == 400
    assert s.get(f"{service.url}/uws/jobs", params={"LAST": "0"}).status_code == 400
    assert s.get(f"{service.url}/uws/jobs", params={"AFTER": "yesterday"}).status_code == 400


def test_authentication_and_isolation(service: ServiceProcess) -> None:
    alice, bob = session(), session("tok-bob", basic=True)
    url = create(service, alice, pipeline="helloworld", observations="1..2")
    anonymous = requests.get(url)
    assert anonymous.status_code == 401
    assert "Bearer" in anonymous.headers["WWW-Authenticate"]
    assert requests.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert requests.get(url, headers={"Authorization": "Basic !!"}).status_code == 401
    assert session("tok-alice", basic=True).get(url).status_code == 200
    for method, path in [("get", ""), ("get", "/phase"), ("get", "/results"), ("delete", "")]:
        assert getattr(bob, method)(url + path).status_code == 404, (method, path)
    assert bob.post(f"{url}/phase", data={"PHASE": "RUN"}).status_code == 404
    assert url.rsplit("/", 1)[1] not in bob.get(f"{service.url}/uws/jobs").text


def test_parameter_errors_name_the_parameter(service: ServiceProcess) -> None:
    s = session()
    cases = {
        "pipeline": {"observations": "1..2"},
        "observations": {"pipeline": "helloworld"},
        "sleep": {"pipeline": "helloworld", "observations": "1..2", "sleep": "-1"},
        "fail": {"pipeline": "helloworld", "observations": "1..2", "fail": "maybe"},
        "facility": {"pipeline": "helloworld", "observations": "1..2", "facility": "moon"},
        "colour": {"pipeline": "helloworld", "observations": "1..2", "colour": "red"},
    }
    for name, data in cases.items():
        resp = s.post(f"{service.url}/uws/jobs", data=data, allow_redirects=False)
        assert resp.status_code == 400, (name, resp.text)
        assert f"'{name}'" in resp.text, (name, resp.text)
    resp = s.post(
        f"{service.url}/uws/jobs", data={"pipeline": "/etc/passwd.py", "observations": "1..2"}
    )
    assert resp.status_code == 400
    missing = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "/nowhere/*.fits"},
    )
    assert missing.status_code == 400 and "'observations'" in missing.text


def test_observation_forms(service: ServiceProcess) -> None:
    s = session()
    index = HESS / "obs-index.fits.gz"
    url = create(service, s, pipeline="helloworld", observations=str(index))
    assert s.get(f"{url}/phase").text == "PENDING"
    from esap_dask.service.params import observation_spec
    from esap_dask.service.sandbox import Sandbox

    events = observation_spec(str(index), Sandbox.create([HESS]))
    assert len(events) == 105 and all(Path(p).is_file() for p in events)
    files = sorted((HESS / "data").glob("*.fits.gz"))[:2]
    url = create(
        service, s, pipeline="helloworld", observations="\n".join(map(str, files)), PHASE="RUN"
    )
    assert wait_phase(s, url, {"COMPLETED", "ERROR"}) == "COMPLETED"
    summary = s.get(f"{url}/results/summary").json()
    assert summary["succeeded"] == 2
    glob = create(service, s, pipeline="helloworld", observations=str(HESS / "data" / "*.fits.gz"))
    assert s.get(f"{glob}/phase").text == "PENDING"


def test_destruction_removes_job_and_store(service: ServiceProcess) -> None:
    s = session()
    url = create(service, s, pipeline="helloworld", observations="1..2", PHASE="RUN")
    wait_phase(s, url, {"COMPLETED"})
    job_id = url.rsplit("/", 1)[1]
    job_dir = service.data_dir / "jobs" / job_id
    assert (job_dir / "store.zarr").is_dir()
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    assert (
        s.post(f"{url}/destruction", data={"DESTRUCTION": soon}, allow_redirects=False).status_code
        == 303
    )
    deadline = time.monotonic() + 15
    while s.get(url).status_code != 404 or job_dir.exists():
        assert time.monotonic() < deadline, "job not destroyed at its destruction time"
        time.sleep(0.3)


def test_execution_duration_is_enforced(service: ServiceProcess) -> None:
    s = session()
    url = create(
        service,
        s,
        pipeline="helloworld",
        observations="1..60",
        sleep="0.5",
        EXECUTIONDURATION="2",
        PHASE="RUN",
    )
    assert s.get(f"{url}/executionduration").text == "2"
    assert wait_phase(s, url, {"ABORTED", "COMPLETED", "ERROR"}, timeout=30) == "ABORTED"
    assert "executionDuration of 2 s" in s.get(f"{url}/error").text


def test_delete_answers_303_to_the_job_list(service: ServiceProcess) -> None:
    s = session()
    url = create(service, s, pipeline="helloworld", observations="1..2")
    resp = s.delete(url, allow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["Location"].endswith("/uws/jobs")
    url = create(service, s, pipeline="helloworld", observations="1..2")
    resp = s.post(url, data={"ACTION": "DELETE"}, allow_redirects=False)
    assert resp.status_code == 303 and s.get(url).status_code == 404
    assert json.loads(requests.get(f"{service.url}/openapi.json").text)["paths"]


def test_failed_observations_end_in_error_with_a_message(
    service: ServiceProcess, schema: object
) -> None:
    s = session()
    url = create(service, s, pipeline="helloworld", observations="1..3", fail="true", PHASE="RUN")
    assert wait_phase(s, url, {"COMPLETED", "ERROR"}) == "ERROR"
    body = checked(s.get(url), schema)
    assert b"errorSummary" in body
    error = s.get(f"{url}/error").text
    assert "3 of 3 observations failed" in error and "fail=true" in error
    failures = s.get(f"{url}/results/ledger").json()["failures"]
    assert [f["observation"] for f in failures] == ["1", "2", "3"]


def test_cross_origin_posts_are_refused(service: ServiceProcess) -> None:
    s = session()
    resp = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "1..2"},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    )
    assert resp.status_code == 403
    same = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "1..2"},
        headers={"Origin": service.url},
        allow_redirects=False,
    )
    assert same.status_code == 303
