"""DiracX credentials shared by many processes of one user, against the real local DiracX.

DiracX rotates the refresh token on every refresh and, when a spent one comes back,
revokes all of the user's tokens. Processes sharing one credentials file must
therefore refresh one at a time and reuse what another wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from esap_dask.deploy.dirac.diracx_client import DiracXClient

pytestmark = pytest.mark.dirac

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("DIRACX_STATE", ROOT / ".diracx"))
URL = f"http://127.0.0.1:{os.environ.get('DIRACX_PORT', '8720')}"
START = "bash scripts/diracx.sh start"

#: One job of the user: wait at the gate, make an authenticated request (refreshing
#: the nearly expired token), then another from a fresh client reading the file.
JOB = """
import asyncio, json, sys, time
from pathlib import Path
from esap_dask.deploy.dirac.diracx_client import DiracXClient
url, creds, gate = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
while not gate.exists():
    time.sleep(0.001)

async def request() -> str:
    async with DiracXClient(url, credentials_path=creds) as dx:
        await dx.search([1])
        return await dx.access_token()

first = asyncio.run(request())
second = asyncio.run(request())
print(json.dumps({"first": first[-12:], "second": second[-12:]}), flush=True)
"""


#: Run in DiracX's own environment: a refresh token as an interactive login (device or
#: authorization-code flow) leaves it, by DiracX's own functions; unlike the legacy
#: exchange's, it rotates on every refresh, and a spent one coming back revokes them all.
MINT = """
import asyncio, os
from datetime import timedelta
from diracx.core.models import RefreshTokenPayload
from diracx.core.settings import AuthSettings
from diracx.db.sql import AuthDB
from diracx.db.sql.utils import uuid7_to_datetime
from diracx.logic.auth.token import create_token, insert_refresh_token

async def main() -> None:
    db = AuthDB(os.environ["DIRACX_DB_URL_AUTHDB"])
    async with db.engine_context(), db:
        jti = await insert_refresh_token(db, "esap:esap-user-0001", "vo:esap group:esap_user")
    exp = uuid7_to_datetime(jti) + timedelta(minutes=60)
    payload = RefreshTokenPayload(jti=str(jti), exp=exp, legacy_exchange=False, dirac_policies={})
    print(create_token(payload, AuthSettings()))

asyncio.run(main())
"""


def login(tmp_path: Path) -> Path:
    """Credentials as after ``dirac login``: a rotating refresh token, an expired access token."""
    try:
        httpx.get(f"{URL}/api/health/ready", timeout=5).raise_for_status()
        env = dict(os.environ)
        for line in (STATE / "server.env").read_text().splitlines():
            name, _, value = line.partition("=")
            env[name] = value.strip("'")
        refresh = subprocess.run(
            [str(STATE / "venv" / "bin" / "python"), "-c", MINT],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, httpx.HTTPError, subprocess.CalledProcessError) as err:
        pytest.fail(f"no DiracX server or state at {URL}, {STATE} ({err}); run `{START}`")
    path = tmp_path / "credentials.json"
    record = {
        "access_token": "not-yet",  # expired: every process must refresh before a request
        "refresh_token": refresh,
        "expires_on": int(time.time()) - 1,
    }
    path.write_text(json.dumps(record))
    return path


def run_jobs(tmp_path: Path, creds: Path, n: int) -> list[subprocess.CompletedProcess[str]]:
    script, gate = tmp_path / "job.py", tmp_path / f"gate-{time.time_ns()}"
    script.write_text(JOB)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), URL, str(creds), str(gate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    time.sleep(1.5)  # both interpreters wait at the gate with the module imported
    gate.touch()
    done = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_two_processes_refreshing_at_once_both_keep_working(tmp_path: Path, round_: int) -> None:
    creds = login(tmp_path)
    before = json.loads(creds.read_text())
    jobs = run_jobs(tmp_path, creds, 2)
    for job in jobs:
        assert job.returncode == 0, job.stderr[-2000:]
    tokens = [json.loads(job.stdout) for job in jobs]
    after = json.loads(creds.read_text())
    assert after["refresh_token"] != before["refresh_token"], "the token was refreshed"
    assert {t["first"] for t in tokens} == {after["access_token"][-12:]}, (
        "one refresh, used by both processes"
    )
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob(".credentials.json.*.tmp")), "no temporary file left"

    # the rotated refresh token in the file is still good: DiracX revoked nothing
    record = {**after, "expires_on": int(time.time()) - 1}
    creds.write_text(json.dumps(record))

    async def refresh_again() -> None:
        async with DiracXClient(URL, credentials_path=creds) as dx:
            await dx.search([1])

    asyncio.run(refresh_again())
    assert json.loads(creds.read_text())["refresh_token"] != after["refresh_token"]


def test_the_grid_sandbox_carries_a_worker_certificate_only(tmp_path: Path) -> None:
    """The sandbox, read back from DiracX's store: the worker's own key, not the scheduler's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from esap_dask.deploy.dirac.cluster import DiracCluster
    from esap_dask.deploy.dirac.diracx_client import DiracXClient
    from esap_dask.deploy.tls import security_directory

    creds = STATE / "credentials.json"
    if not creds.is_file():
        pytest.fail(f"no DiracX credentials in {STATE}; run `{START}`")
    cluster = DiracCluster(url=URL, credentials_path=str(creds), poll_interval=1)
    try:
        folder = security_directory(cluster.security)
        assert folder is not None
        scheduler_key = (folder / "member-key.pem").read_text()
        assert cluster._grid is not None and cluster._grid.sandbox_pfn

        async def download() -> bytes:
            async with DiracXClient(URL, credentials_path=creds) as dx:
                return await dx.download_sandbox(str(cluster._grid.sandbox_pfn))

        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(asyncio.run(download())), mode="r:bz2") as tar:
            files = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]
    finally:
        cluster.close()
    assert sorted(files) == ["ca.pem", "worker-key.pem", "worker.pem"]
    assert files["worker-key.pem"] != scheduler_key, "the scheduler's key stays home"
    assert "PRIVATE KEY" not in files["ca.pem"] + files["worker.pem"], "no CA key"
    ca = x509.load_pem_x509_certificate(files["ca.pem"].encode())
    worker = x509.load_pem_x509_certificate(files["worker.pem"].encode())
    worker.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(files["worker-key.pem"].encode(), None)
    assert key.public_key() == worker.public_key()
    ou = worker.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["worker"]
    assert not folder.exists(), "close() removed the cluster's credentials"


RUN_UNTIL_KILLED = [sys.executable, "-m", "esap_dask", "run", "helloworld", "-o", "1..200"]


@pytest.mark.slow
def test_sigterm_removes_the_cli_runs_credential_directory(tmp_path: Path) -> None:
    """``esap-dask run`` on the local facility (TLS), killed with SIGTERM mid-run."""
    import signal

    env = {**os.environ, "HOME": str(tmp_path)}
    tls_root = tmp_path / ".esap-dask" / "tls"
    proc = subprocess.Popen(
        [*RUN_UNTIL_KILLED, "-s", str(tmp_path / "s.zarr"), "-p", "sleep=0.5"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tls_root.glob("cluster-*/member-key.pem")):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run made no credential directory"
            time.sleep(0.1)
        time.sleep(2)  # the cluster is up and working
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(tls_root.iterdir()) == [], "no credential directory is left behind"
