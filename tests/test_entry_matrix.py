"""Every entry point on every facility: the paths a user walks, on the real local services.

Entry points: ``esap-dask run`` (a subprocess, as from a shell or cron),
``map_observations`` (in-process, as from a notebook) and a UWS job driven by pyvo
against ``esap-dask serve``. Facilities: ``local``, ``slurm-loopback`` (the local SLURM),
``ssh`` (the loopback sshd) and ``dirac`` (the local DiracX, its site and moto S3).
Each cell runs helloworld over the same six observations and must end with every
observation done and the same products. Grid workers share no filesystem with the
driver or the service, so ``dirac`` stores are ``s3://`` URLs on the moto S3.

Services: ``bash scripts/slurm.sh start``, ``bash scripts/sshd.sh start``,
``bash scripts/diracx.sh start`` (``scripts/test.sh`` starts them all).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
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

from esap_dask import ledger, map_observations, read_ledger
from esap_dask.deploy.dirac.diracx_client import DiracXClient
from esap_dask.engine.ledger import DONE
from esap_dask.service.runner import job_label
from esap_dask.store import StoreError
from esap_dask.testing.service import ServiceProcess, write_tokens
from tests.conftest import ESAP_DASK, HESS, ROOT, SLURM_START

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.dirac]

FACILITIES = ["local", "slurm-loopback", "ssh", "dirac"]
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
    assert (ledger(store, storage_options=opts).status == "done").all()


@pytest.mark.parametrize("facility", FACILITIES)
def test_cli_run(
    facility: str, services: dict[str, str], bucket: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    store = store_for(facility, "cli", tmp_path, bucket)
    done = subprocess.run(
        [
            *ESAP_DASK,
            "run",
            "helloworld",
            "-o",
            OBSERVATIONS,
            "-s",
            store,
            "-f",
            facility,
            "--json",
        ],
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
    # the same command again, as cron runs it: nothing to do, no job submitted; a local
    # store answers from its receipt, before Dask is imported (an s3:// store is planned)
    again = subprocess.run(
        [sys.executable, "-X", "importtime", *ESAP_DASK[1:], *done.args[len(ESAP_DASK) :]],
        capture_output=True,
        text=True,
        env={**cli_env, **services},
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    assert (rerun["total"], rerun["processed"], rerun["skipped"]) == (6, 0, 6)
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in again.stderr.splitlines() if "|" in ln}
    assert ("dask" in imported) == (facility == "dirac"), facility


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
    extra += ["--data-root", str(HESS)]
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


def wait_phase(s: requests.Session, url: str, phases: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (phase := s.get(f"{url}/phase").text) not in phases:
        assert time.monotonic() < deadline, f"{url} still {phase} after {timeout:.0f} s"
        time.sleep(0.5)
    return phase


def same_products(remote: xr.Dataset, local: xr.Dataset) -> None:
    """Every product of two stores equal, observation by observation."""
    remote, local = remote.sortby("obs"), local.sortby("obs")
    assert remote["obs"].values.tolist() == local["obs"].values.tolist()
    names = [str(v) for v in local.data_vars]
    assert names and sorted(names) == sorted(str(v) for v in remote.data_vars)
    for name in names:
        xr.testing.assert_equal(remote[name].load(), local[name].load())


def test_dl3_products_over_the_hess_runs_through_the_service_on_slurm(
    service: ServiceProcess, client: Any, tmp_path: Path
) -> None:
    """The 105 H.E.S.S. DR1 runs as a UWS job on SLURM: the products equal a local run's."""
    s = session()
    files = f"{HESS}/data/*.fits.gz"
    url = submit(service, s, pipeline="dl3-products", observations=files, facility="slurm-loopback")
    s.post(f"{url}/phase", data={"PHASE": "RUN"})
    assert wait_phase(s, url, {"COMPLETED", "ERROR", "ABORTED"}, 600) == "COMPLETED", s.get(
        f"{url}/error"
    ).text
    assert s.get(f"{url}/results/ledger").json()["counts"]["done"] == 105
    local = tmp_path / "local.zarr"
    assert map_observations("dl3-products", files, local, client=client).ok
    remote = xr.open_zarr(f"{url}/results/store", storage_options={"headers": dict(s.headers)})
    same_products(remote, xr.open_zarr(local))


def test_concordia_through_the_service_on_dirac(
    service: ServiceProcess, client: Any, tmp_path: Path
) -> None:
    """Air-shower runs as a UWS job on grid workers, stored on S3: the showers of a local run."""
    s = session()
    params = {"pipeline": "concordia", "observations": "1..4", "nshow": "5"}
    url = submit(service, s, facility="dirac", **params)
    s.post(f"{url}/phase", data={"PHASE": "RUN"})
    assert wait_phase(s, url, {"COMPLETED", "ERROR", "ABORTED"}, 600) == "COMPLETED", s.get(
        f"{url}/error"
    ).text
    local = tmp_path / "local.zarr"
    assert map_observations("concordia", "1..4", local, client=client, params={"nshow": 5}).ok
    remote = xr.open_zarr(f"{url}/results/store", storage_options={"headers": dict(s.headers)})
    same_products(remote, xr.open_zarr(local))


def slurm_jobs(name: str) -> list[str]:
    """The SLURM jobs (array tasks included) called ``name`` that squeue still lists."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def dirac_jobs(group: str) -> dict[int, str]:
    """DIRAC job id -> status of every job of a job group, as DiracX has them."""

    async def search() -> list[dict[str, Any]]:
        async with DiracXClient(
            DIRACX_URL, credentials_path=DIRACX_STATE / "credentials.json"
        ) as dx:
            where = [{"parameter": "JobGroup", "operator": "eq", "value": group}]
            return await dx.search(parameters=("JobID", "Status"), conditions=where)

    return {int(r["JobID"]): str(r["Status"]) for r in asyncio.run(search())}


@pytest.mark.parametrize("facility", ["slurm-loopback", "dirac"])
def test_abort_ends_every_batch_or_grid_job_and_the_store_resumes(
    facility: str,
    service: ServiceProcess,
    services: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ABORT on SLURM leaves none of the job's jobs in squeue; on DIRAC each ends Killed.

    The store keeps what was done, and a run over it with the same pipeline and
    parameters does only the rest.
    """
    s = session()
    params = {"pipeline": "helloworld", "observations": "1..40", "sleep": "1"}
    url = submit(service, s, facility=facility, **params)
    label = job_label(url.rsplit("/", 1)[1])
    s.post(f"{url}/phase", data={"PHASE": "RUN"})
    wait_phase(s, url, {"EXECUTING"}, 60)
    deadline = time.monotonic() + 180
    if facility == "slurm-loopback":
        while not slurm_jobs(label):
            assert time.monotonic() < deadline, f"no SLURM job named {label}"
            time.sleep(0.5)
    else:
        group = f"esap-dask-{label}"
        while "Running" not in dirac_jobs(group).values():
            assert time.monotonic() < deadline, f"no running DIRAC job of group {group}"
            time.sleep(1)
    store, opts = job_store_of(service, url)
    while done_in(store, opts) < 1:  # some batches finish (the workers write the ledger)
        assert time.monotonic() < deadline, "no observation done before the ABORT"
        time.sleep(1)
    assert s.post(f"{url}/phase", data={"PHASE": "ABORT"}).status_code in (200, 303)
    assert wait_phase(s, url, {"ABORTED"}, 10) == "ABORTED"
    deadline = time.monotonic() + 60
    if facility == "slurm-loopback":
        while left := slurm_jobs(label):
            assert time.monotonic() < deadline, f"SLURM jobs {left} still queued after ABORT"
            time.sleep(0.5)
    else:
        while set((jobs := dirac_jobs(group)).values()) != {"Killed"}:
            assert time.monotonic() < deadline, f"DIRAC jobs after ABORT: {jobs}"
            time.sleep(1)
    while "ledger" not in s.get(f"{url}/results").text:
        assert time.monotonic() < deadline, "no ledger result after ABORT"
        time.sleep(0.5)
    counts = s.get(f"{url}/results/ledger").json()["counts"]
    assert 0 < counts["done"] < 40, counts
    # A batch running at the ABORT may still commit after the job's ledger result was
    # written (a grid kill reaches the worker at its next heartbeat): the store may hold
    # more than the result says, never less. Wait until its count stops moving.
    done, still = done_in(store, opts), 0
    deadline = time.monotonic() + 60
    while still < 5:
        assert time.monotonic() < deadline, "the store kept changing after the ABORT"
        time.sleep(1)
        now = done_in(store, opts)
        done, still = now, (still + 1 if now == done else 0)
    assert counts["done"] <= done < 40, (counts, done)
    # the job's ledger result is read from the store when asked: what a user fetches
    # now counts what the store holds, the late commits too
    again = s.get(f"{url}/results/ledger").json()["counts"]
    assert again["done"] == done, (again, done)
    # the store resumes: the same run over it does exactly the observations left
    for key, value in services.items():
        if not key.startswith("DASK_"):
            monkeypatch.setenv(key, value)
    with dask.config.set({"esap.facilities.dirac.storage_options": S3_OPTIONS}):
        summary = map_observations(
            "helloworld",
            "1..40",
            store,
            facility=facility,
            params={"sleep": 1},
            storage_options=opts,
        )
    assert (summary.skipped, summary.succeeded, summary.failed) == (done, 40 - done, 0), summary
    table = ledger(store, storage_options=opts)
    assert (table.status == "done").all()
    # an observation whose batch was running at the ABORT counts that start too
    assert set(table.attempts) <= {1, 2}


def done_in(store: str, opts: dict[str, Any]) -> int:
    """Observations the store's ledger says are done (0 while it does not exist yet)."""
    try:
        status = read_ledger(store, storage_options=opts).status
    except (FileNotFoundError, KeyError, ValueError, StoreError):
        return 0
    return int((status == DONE).sum())


def job_store_of(service: ServiceProcess, url: str) -> tuple[str, dict[str, Any]]:
    """Where the service keeps a job's store: under its S3 store root."""
    root = service.extra[service.extra.index("--store-root") + 1]
    return f"{root}/{url.rsplit('/', 1)[1]}/store.zarr", S3_OPTIONS
