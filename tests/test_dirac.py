"""The dirac facility against a real DiracX server (``bash scripts/diracx.sh start``).

The server, its moto S3 sandbox store and the local site (which plays a grid
site's pilot, see :mod:`esap_dask.testing.dirac_site`) run on loopback. Nothing
of DiracX is mocked: job states are read back from the server, and the JDLs
the site ran are those the server stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from distributed import Client

import esap_dask.catalogs.facilities as facilities
from esap_dask.deploy.dirac.cluster import DiracCluster
from esap_dask.deploy.dirac.diracx_client import ENDPOINTS, DiracXAuthError, DiracXClient
from esap_dask.deploy.dirac.jobs import MAX_REKILLS, Grid
from esap_dask.testing.dirac_site import read_jdls

pytestmark = pytest.mark.dirac

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("DIRACX_STATE", ROOT / ".diracx"))
URL = f"http://127.0.0.1:{os.environ.get('DIRACX_PORT', '8720')}"
START = "bash scripts/diracx.sh start"


@pytest.fixture(scope="module")
def diracx() -> str:
    """The DiracX URL; fails (not skips) when the server or the site is not up."""
    try:
        httpx.get(f"{URL}/api/health/ready", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        pytest.fail(f"no DiracX server answers at {URL} ({err}); run `{START}`")
    pid = STATE / "site.pid"
    if not pid.is_file() or not Path(f"/proc/{pid.read_text().strip()}").exists():
        pytest.fail(f"the local DIRAC site is not running; run `{START}`")
    if not (STATE / "credentials.json").is_file():
        pytest.fail(f"no DiracX credentials in {STATE}; run `{START}`")
    return URL


@pytest.fixture
def dirac_env(diracx: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """DIRACX_URL and DIRACX_CREDENTIALS_PATH as a user who ran ``dirac login`` has them."""
    monkeypatch.setenv("DIRACX_URL", diracx)
    monkeypatch.setenv("DIRACX_CREDENTIALS_PATH", str(STATE / "credentials.json"))
    return diracx


def dx_jobs(job_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The jobs as DiracX has them now (a fresh client, independent of the cluster's)."""

    async def read() -> list[dict[str, Any]]:
        async with DiracXClient(URL, credentials_path=STATE / "credentials.json") as dx:
            params = ("JobID", "JobName", "Status", "MinorStatus", "ApplicationStatus", "Site")
            return await dx.search(job_ids, parameters=params)

    return {int(r["JobID"]): r for r in asyncio.run(read())}


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def submissions(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every JDL list sent to ``POST /api/jobs/jdl`` (the real call still happens)."""
    sent: list[list[str]] = []
    real = DiracXClient.submit_jdl

    async def spy(self: DiracXClient, jdls: list[str]) -> list[dict[str, Any]]:
        sent.append(list(jdls))
        return await real(self, jdls)

    monkeypatch.setattr(DiracXClient, "submit_jdl", spy)
    return sent


def test_scale_six_workers_one_submission_close_kills(
    dirac_env: str, submissions: list[list[str]]
) -> None:
    cluster = facilities.open_cluster("dirac", poll_interval=1, walltime="00:20:00")
    try:
        with Client(cluster) as client:
            t0 = time.monotonic()
            cluster.scale(6)
            client.wait_for_workers(6, timeout=120)
            took = time.monotonic() - t0
            print(f"scale(6) -> 6 workers connected in {took:.1f} s")
            assert len(submissions) == 1 and len(submissions[0]) == 1, submissions
            assert "Parameters = {" in submissions[0][0]
            workers = client.scheduler_info()["workers"]
            assert cluster.scheduler_address.startswith("tls://")
            assert all(addr.startswith("tls://") for addr in workers)
            names = sorted(w["name"] for w in workers.values())
            assert names == sorted(cluster.job_status()), "workers and jobs match by name"
            assert client.gather(client.map(lambda x: x * x, range(60))) == [
                x * x for x in range(60)
            ]
            jobs = {n: int(r["JobID"]) for n, r in cluster.job_status().items()}
            stored = read_jdls(STATE / "db" / "JobDB.db", list(jobs.values()))
            assert sorted(j["ParameterNumber"] for j in stored.values()) == list(range(6)), (
                "DiracX expanded one parametric JDL into the 6 jobs"
            )
            # esap-dask's worker environment, from the JDL's ExecutionEnvironment
            assert {j["ExecutionEnvironment"] for j in stored.values()} == {
                "MALLOC_MMAP_THRESHOLD_=16777216"
            }
            seen = client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_"))
            assert list(seen.values()) == ["16777216"] * 6
            assert {r["Status"] for r in dx_jobs(list(jobs.values())).values()} == {"Running"}

            cluster.scale(2)
            wait_until(
                lambda: len(client.scheduler_info()["workers"]) == len(cluster.workers) == 2,
                60,
                "2 workers",
            )
            gone = [jobs[n] for n in jobs if n not in cluster.workers]
            assert len(gone) == 4
            assert {r["Status"] for r in dx_jobs(gone).values()} == {"Killed"}
    finally:
        cluster.close()
    states = dx_jobs(list(jobs.values()))
    assert {(r["Status"], r["MinorStatus"]) for r in states.values()} == {
        ("Killed", "Marked for termination")
    }, states


def test_failed_job_is_reported_with_status_and_minor_status(
    dirac_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="esap_dask.dirac")
    cluster = facilities.open_cluster("dirac", poll_interval=1, python="/bin/false")
    try:
        cluster.scale(1)
        wait_until(lambda: bool(cluster.job_status()), 30, "the job's submission")
        (name,) = cluster.job_status()

        def failed() -> bool:
            return cluster.job_status()[name]["Status"] == "Failed"

        wait_until(failed, 60, "the site to fail the job")
        row = cluster.job_status()[name]
        assert row["MinorStatus"] == "Application Finished With Errors"
        assert row["ApplicationStatus"] == "exit code 1"
        assert dx_jobs([int(row["JobID"])])[int(row["JobID"])]["Status"] == "Failed"
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert f"DIRAC job {row['JobID']} (worker {name}) ended: Failed, " in logged
        assert "Application Finished With Errors (exit code 1)" in logged
    finally:
        cluster.close()
    # a Failed job is not killed: DiracX would keep Failed but overwrite the minor status
    after = dx_jobs([int(row["JobID"])])[int(row["JobID"])]
    assert (after["Status"], after["MinorStatus"]) == ("Failed", "Application Finished With Errors")


def test_jdl_requirements_as_stored_by_diracx(dirac_env: str) -> None:
    """Site, BannedSites, Tags, CPUTime and the container wrap, in the JDL DiracX stored.

    The job asks for another site, so the local site leaves it Waiting.
    ``Platform`` is checked in the generated JDL only: DiracX 0.7.0 answers
    400 "JDL syntax error" to any JDL with a Platform (its
    ``find_compatible_platforms`` returns a list where DIRACCommon's
    ``checkAndPrepareJob`` expects a result dict).
    """
    cluster = DiracCluster(
        site="LCG.Elsewhere.org",
        banned_sites=["LCG.Local.esap"],
        tags=["esap", "gpu"],
        walltime="02:00:00",
        cores=2,
        runtimeengine="apptainer",
        container={"image": "/cvmfs/esap/worker.sif", "python": "python3"},
        poll_interval=1,
    )
    try:
        cluster.scale(1)
        wait_until(lambda: bool(cluster.job_status()), 30, "the job's submission")
        (row,) = cluster.job_status().values()
        job_id = int(row["JobID"])
        jdl = read_jdls(STATE / "db" / "JobDB.db", [job_id])[job_id]
        assert jdl["Site"] == "LCG.Elsewhere.org"
        assert jdl["BannedSites"] == "LCG.Local.esap"  # a one-item list is stored as its item
        assert jdl["Tags"] == ["esap", "gpu"]
        assert jdl["CPUTime"] == 2 * 7200 and jdl["NumberOfProcessors"] == 2
        assert jdl["Executable"] == "apptainer"
        assert jdl["Arguments"].startswith(
            "exec --cleanenv --env MALLOC_MMAP_THRESHOLD_=16777216 -- "
            "/cvmfs/esap/worker.sif python3 -m "
        )
        assert f"--name {row['JobName']}" in jdl["Arguments"]
        assert "--tls-key worker-key.pem" in jdl["Arguments"]
        assert "BEGIN" not in json.dumps(jdl), "no key material in the JDL"
        assert jdl["InputSandbox"].startswith("SB:SandboxSE|/S3/sandboxes/esap/esap_user/")
        assert jdl["OutputSandbox"] == ["std.out", "std.err"]
        cluster.requirements["Platform"] = ["EL9-x86_64"]
        assert 'Platform = "EL9-x86_64";' in cluster.job_jdl(["w"], "tls://h:1", None)
        time.sleep(3)  # the site polls every second and must leave it alone
        assert dx_jobs([job_id])[job_id]["Status"] == "Waiting"
    finally:
        cluster.close()
    assert dx_jobs([job_id])[job_id]["Status"] == "Killed"


@pytest.fixture
def own_credentials(diracx: str, tmp_path: Path) -> Path:
    """A fresh user login (the server's legacy exchange), so refresh-token rotation is private."""
    key = (STATE / "legacy-api-key").read_text().strip()
    r = httpx.get(
        f"{diracx}/api/auth/legacy-exchange",
        params={"preferred_username": "esap-user", "scope": "vo:esap group:esap_user"},
        headers={"Authorization": f"Bearer diracx:legacy:{key}"},
    )
    r.raise_for_status()
    tok = r.json()
    path = tmp_path / "credentials.json"
    path.write_text(
        json.dumps(
            {
                "access_token": tok["access_token"],
                "refresh_token": tok["refresh_token"],
                "expires_on": int(time.time()) + tok["expires_in"] - 15,
            }
        )
    )
    return path


def test_missing_credentials_name_the_login(diracx: str, tmp_path: Path) -> None:
    with pytest.raises(DiracXAuthError, match=r"no DiracX credentials at .*dirac login"):
        DiracCluster(url=diracx, credentials_path=str(tmp_path / "none.json"))


def test_expired_token_without_refresh_names_the_login(diracx: str, own_credentials: Path) -> None:
    record = json.loads(own_credentials.read_text())
    record.update(expires_on=int(time.time()) - 60, refresh_token=None)
    own_credentials.write_text(json.dumps(record))
    with pytest.raises(DiracXAuthError, match=r"expired at .* `DIRACX_URL=.* dirac login esap`"):
        DiracCluster(url=diracx, credentials_path=str(own_credentials))


def test_revoked_refresh_token_names_the_login(diracx: str, own_credentials: Path) -> None:
    record = json.loads(own_credentials.read_text())
    record.update(expires_on=int(time.time()) - 60, refresh_token=record["access_token"])
    own_credentials.write_text(json.dumps(record))
    with pytest.raises(DiracXAuthError, match=r"refused to refresh .* dirac login esap"):
        DiracCluster(url=diracx, credentials_path=str(own_credentials))


def test_token_is_refreshed_before_expiry(diracx: str, own_credentials: Path) -> None:
    record = json.loads(own_credentials.read_text())
    record["expires_on"] = int(time.time()) + 60  # inside the refresh margin
    own_credentials.write_text(json.dumps(record))

    async def use() -> list[dict[str, Any]]:
        async with DiracXClient(diracx, credentials_path=own_credentials) as dx:
            return await dx.search([1])

    asyncio.run(use())
    new = json.loads(own_credentials.read_text())
    assert new["access_token"] != record["access_token"]
    assert new["refresh_token"], "the refresh token is kept for the next refresh"
    assert new["expires_on"] > time.time() + 600
    assert oct(own_credentials.stat().st_mode & 0o777) == "0o600"


def test_endpoints_match_the_openapi_contract(diracx: str) -> None:
    """Every endpoint the client calls, and the request and response shapes it relies on."""
    doc = httpx.get(f"{diracx}/api/openapi.json").json()
    paths = doc["paths"]
    for method, path in ENDPOINTS:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from OpenAPI"

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def body(method: str, path: str) -> dict[str, Any]:
        content = paths[path][method]["requestBody"]["content"]
        return resolve(next(iter(content.values()))["schema"])

    def reply(method: str, path: str, code: str = "200") -> dict[str, Any]:
        return resolve(
            paths[path][method]["responses"][code]["content"]["application/json"]["schema"]
        )

    def query(method: str, path: str) -> set[str]:
        return {p["name"] for p in paths[path][method].get("parameters", []) if p["in"] == "query"}

    jdl = body("post", "/api/jobs/jdl")
    assert jdl["type"] == "array" and jdl["items"] == {"type": "string"}
    inserted = resolve(reply("post", "/api/jobs/jdl", "201")["items"])
    assert {"JobID", "Status", "MinorStatus"} <= set(inserted["properties"])

    assert {"page", "per_page"} <= query("post", "/api/jobs/search")
    assert {"parameters", "search", "sort"} <= set(body("post", "/api/jobs/search")["properties"])

    status = body("patch", "/api/jobs/status")
    update = resolve(status["additionalProperties"]["additionalProperties"])
    assert {"Status", "MinorStatus", "ApplicationStatus", "Source"} <= set(update["properties"])
    assert {"success", "failed"} <= set(reply("patch", "/api/jobs/status")["properties"])

    beat = resolve(body("patch", "/api/jobs/heartbeat")["additionalProperties"])
    assert "WallClockTime" in beat["properties"]
    command = resolve(reply("patch", "/api/jobs/heartbeat")["items"])
    assert {"job_id", "command"} <= set(command["properties"])

    sandbox = body("post", "/api/jobs/sandbox")
    assert set(sandbox["required"]) == {"checksum_algorithm", "checksum", "size", "format"}
    assert {"pfn", "url", "fields"} <= set(reply("post", "/api/jobs/sandbox")["properties"])
    assert "pfn" in query("get", "/api/jobs/sandbox")
    assert "url" in reply("get", "/api/jobs/sandbox")["properties"]

    token = body("post", "/api/auth/token")
    assert {"grant_type", "client_id", "refresh_token"} <= set(token["properties"])
    assert {"access_token", "expires_in", "refresh_token"} <= set(
        reply("post", "/api/auth/token")["properties"]
    )


def test_contact_address_and_port_ranges(dirac_env: str) -> None:
    """Workers dial the contact address on a port of the scheduler's range; theirs too."""
    cluster = facilities.open_cluster(
        "dirac",
        scheduler_port="48100-48120",
        contact_address="localhost",
        worker_port="48200-48240",
        poll_interval=1,
    )
    try:
        port = int(cluster.scheduler.address.rsplit(":", 1)[1])
        assert 48100 <= port <= 48120
        with Client(cluster) as client:
            cluster.scale(2)
            client.wait_for_workers(2, timeout=60)
            for addr in client.scheduler_info()["workers"]:
                assert addr.startswith("tls://") and 48200 <= int(addr.rsplit(":", 1)[1]) <= 48240
        job_ids = [int(r["JobID"]) for r in cluster.job_status().values()]
        for jdl in read_jdls(STATE / "db" / "JobDB.db", job_ids).values():
            assert f"distributed.cli.dask_worker tls://localhost:{port} " in jdl["Arguments"]
    finally:
        cluster.close()


def test_scale_beyond_the_server_limit_splits_submissions(
    dirac_env: str, submissions: list[list[str]]
) -> None:
    """25 workers: two parametric JDLs (20 + 5, DiracX's per-submission limit), all Killed."""
    cluster = facilities.open_cluster("dirac", site="LCG.Nowhere.org", poll_interval=1)
    try:
        cluster.scale(25)
        wait_until(lambda: len(cluster.job_status()) == 25, 60, "25 submitted jobs")
        assert [len(jdls) for jdls in submissions] == [1, 1]
        sizes = sorted(
            jdl[0].split("Parameters = {")[1].split("}")[0].count(",") + 1 for jdl in submissions
        )
        assert sizes == [5, 20]
        job_ids = [int(r["JobID"]) for r in cluster.job_status().values()]
        assert {r["Status"] for r in dx_jobs(job_ids).values()} <= {"Received", "Waiting"}
    finally:
        cluster.close()
    assert {r["Status"] for r in dx_jobs(job_ids).values()} == {"Killed"}


def force_waiting(job_ids: list[int]) -> None:
    """Bring killed jobs back to ``Waiting`` with DiracX's ``force`` (as a job administrator).

    This is what DiracX's unlocked read-then-write does when another status
    update (an optimizer, a pilot) read the job before the kill and is written after it.
    """

    async def revive() -> None:
        async with DiracXClient(URL, credentials_path=STATE / "pilot-credentials.json") as dx:
            now = datetime.now(tz=UTC).isoformat()
            step = {"Status": "Waiting", "MinorStatus": "Pilot Agent Submission", "Source": "test"}
            await dx.request(
                "PATCH",
                "/api/jobs/status",
                params={"force": "true"},
                json={str(i): {now: step} for i in job_ids},
            )

    asyncio.run(revive())
    assert {r["Status"] for r in dx_jobs(job_ids).values()} == {"Waiting"}


def test_a_killed_job_brought_back_is_killed_again_by_the_next_poll(dirac_env: str) -> None:
    """A scaled-down worker's job back to Waiting after its kill is found and killed again."""
    cluster = facilities.open_cluster("dirac", site="LCG.Nowhere.org", poll_interval=1)
    try:
        cluster.scale(2)
        wait_until(lambda: len(cluster.job_status()) == 2, 60, "2 submitted jobs")
        jobs = {n: int(r["JobID"]) for n, r in cluster.job_status().items()}
        cluster.scale(1)
        wait_until(lambda: len(cluster.workers) == 1, 30, "scale(1)")
        (gone,) = [jobs[n] for n in jobs if n not in cluster.workers]
        assert dx_jobs([gone])[gone]["Status"] == "Killed"
        force_waiting([gone])
        wait_until(
            lambda: dx_jobs([gone])[gone]["Status"] == "Killed", 15, "the poll's second kill"
        )
        kept = [jobs[n] for n in cluster.workers]
        assert {r["Status"] for r in dx_jobs(kept).values()} <= {"Received", "Checking", "Waiting"}
    finally:
        cluster.close()
    assert {r["Status"] for r in dx_jobs(list(jobs.values())).values()} == {"Killed"}


async def killed_job(dx: DiracXClient, grid: Grid, name: str) -> int:
    """A job submitted for a site that does not exist, confirmed, then killed by ``grid``."""
    jdl = f'JobName = "{name}";\nExecutable = "/bin/true";\nSite = "LCG.Nowhere.org";'
    (job,) = await dx.submit_jdl([jdl])
    job_id = int(job["JobID"])
    await dx.set_status({job_id: [{"Status": "Received", "MinorStatus": "Job accepted"}]})
    await grid.kill([job_id])
    return job_id


def test_close_kills_again_the_jobs_brought_back_after_their_kill(
    dirac_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The read a moment after close() finds a revived job, kills it and says so."""

    async def scenario() -> tuple[int, list[int]]:
        async with DiracXClient(URL, credentials_path=STATE / "credentials.json") as dx:
            grid = Grid(dx, cast(Any, None))
            job_id = await killed_job(dx, grid, "revived")
            await asyncio.to_thread(force_waiting, [job_id])
            return job_id, await grid.settle_kills(delay=0.2)

    with caplog.at_level(logging.WARNING, logger="esap_dask.dirac"):
        job_id, alive = asyncio.run(scenario())
    assert alive == []
    assert dx_jobs([job_id])[job_id]["Status"] == "Killed"
    assert f"DIRAC jobs [{job_id}] are ['Waiting'] after their kill" in caplog.text


def test_a_job_that_keeps_coming_back_is_given_up_after_max_rekills(
    dirac_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed again MAX_REKILLS times, then left alive with an error saying what to do."""

    async def scenario() -> tuple[int, list[list[int]], str]:
        async with DiracXClient(URL, credentials_path=STATE / "credentials.json") as dx:
            grid = Grid(dx, cast(Any, None))
            job_id = await killed_job(dx, grid, "undead")
            alive = []
            for _ in range(MAX_REKILLS + 2):
                await asyncio.to_thread(force_waiting, [job_id])
                alive.append(await grid.settle_kills(delay=0.05, rounds=1))
            status = (await dx.search([job_id]))[0]["Status"]
            await dx.set_status({job_id: [{"Status": "Killed", "MinorStatus": "test cleanup"}]})
            return job_id, alive, status

    with caplog.at_level(logging.WARNING, logger="esap_dask.dirac"):
        job_id, alive, status = asyncio.run(scenario())
    assert alive == [[job_id]] * (MAX_REKILLS + 2)  # found alive each time
    assert status == "Waiting", "no kill after the last allowed one"
    again = caplog.text.count(f"DIRAC jobs [{job_id}] are ['Waiting'] after their kill")
    assert again == MAX_REKILLS
    assert caplog.text.count(f"DIRAC job {job_id} is still alive after") == 1
    assert "dirac-wms-job-kill" in caplog.text
