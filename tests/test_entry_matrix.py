"""Every entry point on every facility: the paths a user walks, on the real local services.

Entry points: ``esap-dask run`` (a subprocess, as from a shell or cron),
``map_observations`` (in-process, as from a notebook) and a UWS job driven by pyvo
against ``esap-dask serve``. Facilities: ``local``, ``slurm`` (the local SLURM),
``ssh`` (the loopback sshd) and ``dirac`` (the local DiracX, its site and moto S3).
Each cell runs helloworld over the same six observations and must end with every
observation done and the same products. Grid workers share no filesystem with the
driver or the service, so ``dirac`` stores are ``s3://`` URLs on the moto S3.

Services: ``bash scripts/slurm.sh start``, ``bash scripts/sshd.sh start``,
``bash scripts/diracx.sh start`` (``scripts/test.sh`` starts them all).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import httpx
import numpy as np
import pytest
import requests
import s3fs
import xarray as xr
from pyvo.dal.tap import AsyncTAPJob

from esap_dask import map_observations
from esap_dask.ledger import DONE
from esap_dask.service.testing import ServiceProcess, write_tokens
from tests.conftest import ESAP_DASK, ROOT, SLURM_START

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.dirac]

FACILITIES = ["local", "slurm", "ssh", "dirac"]
OBSERVATIONS = "1..6"
GREETINGS = [f"Hello, {i}!" for i in range(1, 7)]
DIRACX_STATE = Path(os.environ.get("DIRACX_STATE", ROOT / ".diracx"))
DIRACX_URL = f"http://127.0.0.1:{os.environ.get('DIRACX_PORT', '8720')}"
S3_URL = os.environ.get("ESAP_DIRAC_S3_ENDPOINT", "http://127.0.0.1:8721")
S3_OPTIONS = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": S3_URL}}
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


def _require(ok: bool, what: str, command: str) -> None:
    if not ok:
        pytest.fail(f"{what}; run `{command}` (scripts/test.sh starts every service)")


@pytest.fixture(scope="module")
def services() -> dict[str, str]:
    """Check that every service is up (fail, naming the command, when one is not).

    Returns the environment a user of the ``dirac`` facility has after ``dirac login``
    (plus the moto S3's storage options in the Dask configuration).
    """
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    _require(
        sinfo.returncode == 0 and sinfo.stdout.strip().startswith(("idle", "mix", "alloc")),
        f"the local SLURM is not up (sinfo: {sinfo.stdout.strip() or sinfo.stderr.strip()})",
        SLURM_START,
    )
    sshd = subprocess.run(["bash", str(ROOT / "scripts" / "sshd.sh"), "status"], check=False)
    _require(sshd.returncode == 0, "no loopback sshd", "bash scripts/sshd.sh start")
    try:
        httpx.get(f"{DIRACX_URL}/api/health/ready", timeout=5).raise_for_status()
        httpx.get(f"{S3_URL}/moto-api/", timeout=5).raise_for_status()
        up = True
    except httpx.HTTPError:
        up = False
    _require(
        up, f"no DiracX server or S3 at {DIRACX_URL}, {S3_URL}", "bash scripts/diracx.sh start"
    )
    return {
        "DIRACX_URL": DIRACX_URL,
        "DIRACX_CREDENTIALS_PATH": str(DIRACX_STATE / "credentials.json"),
        "DASK_ESAP__FACILITIES__DIRAC__STORAGE_OPTIONS": json.dumps(S3_OPTIONS),
        "DASK_ESAP__FACILITIES__DIRAC__POLL_INTERVAL": "1",
    }


@pytest.fixture(scope="module")
def bucket() -> Iterator[str]:
    """A fresh bucket on the moto S3, removed after the module."""
    fs = s3fs.S3FileSystem(**S3_OPTIONS)
    name = f"esap-matrix-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    yield name
    fs.rm(name, recursive=True)


def store_for(facility: str, entry: str, tmp: Path, bucket: str) -> str:
    if facility == "dirac":
        return f"s3://{bucket}/{entry}.zarr"
    return str(tmp / f"{entry}-{facility}.zarr")


def check_store(store: str, opts: dict[str, Any] | None = None) -> None:
    """What a user checks: six observations, each done, with the greetings helloworld writes."""
    ds = xr.open_zarr(store, storage_options=opts).load()
    assert sorted(ds["obs"].values.tolist(), key=int) == [str(i) for i in range(1, 7)]
    order = np.argsort([int(o) for o in ds["obs"].values])
    assert ds["greeting"].values[order].tolist() == GREETINGS
    assert (ds["ledger_status"].values == DONE).all()


@pytest.mark.parametrize("facility", FACILITIES)
def test_cli_run(
    facility: str, services: dict[str, str], bucket: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    store = store_for(facility, "cli", tmp_path, bucket)
    done = subprocess.run(
        [*ESAP_DASK, "run", "helloworld", "-o", OBSERVATIONS, "--store", store]
        + ["--facility", facility, "--json"],
        capture_output=True,
        text=True,
        env={**cli_env, **services},
        timeout=420,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (6, 6, 0)
    assert summary["facility"] == facility
    check_store(store, S3_OPTIONS if facility == "dirac" else None)


@pytest.mark.parametrize("facility", FACILITIES)
def test_map_observations_in_a_notebook(
    facility: str,
    services: dict[str, str],
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in a notebook: no client of one's own, the facility named, the store opened after."""
    for key, value in services.items():
        if not key.startswith("DASK_"):
            monkeypatch.setenv(key, value)
    store = store_for(facility, "notebook", tmp_path, bucket)
    config = {
        "esap.facilities.dirac.storage_options": S3_OPTIONS,
        "esap.facilities.dirac.poll_interval": 1,
    }
    with dask.config.set(config):
        summary = map_observations("helloworld", OBSERVATIONS, store, facility=facility)
    assert (summary.total, summary.succeeded, summary.failed) == (6, 6, 0), summary.failures
    check_store(store, S3_OPTIONS if facility == "dirac" else None)


@pytest.fixture(scope="module")
def service(
    services: dict[str, str], bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The job service as a platform runs it: every facility, grid stores on the S3 root."""
    root = tmp_path_factory.mktemp("matrix-uws")
    tokens = write_tokens(root / "tokens", TOKENS)
    extra = ["--store-root", f"s3://{bucket}/uws", "--store-options", json.dumps(S3_OPTIONS)]
    with ServiceProcess(root / "data", tokens, extra=extra, env=services) as svc:
        yield svc


def session(token: str = "tok-alice") -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


def submit(svc: ServiceProcess, s: requests.Session, **params: object) -> str:
    resp = s.post(f"{svc.url}/uws/jobs", data=params, allow_redirects=False)
    assert resp.status_code == 303, resp.text
    return str(resp.headers["Location"])


@pytest.mark.parametrize("facility", FACILITIES)
def test_uws_job_driven_by_pyvo(facility: str, service: ServiceProcess) -> None:
    s = session()
    url = submit(service, s, pipeline="helloworld", observations=OBSERVATIONS, facility=facility)
    job = AsyncTAPJob(url, session=s, delete=False)
    job.run()
    job.wait(phases={"COMPLETED", "ERROR", "ABORTED"}, timeout=420)
    assert job.phase == "COMPLETED", s.get(f"{url}/error").text
    ledger = s.get(f"{url}/results/ledger").json()
    assert ledger["counts"] == {"pending": 0, "done": 6, "failed": 0}
    check_store(f"{url}/results/store", {"headers": dict(s.headers)})
