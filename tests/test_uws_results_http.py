"""A completed job's Zarr store, opened with xarray straight from the job service over HTTP.

``xr.open_zarr(f"{job_url}/results/store", storage_options={"headers": ...})`` must
give what opening the store directly gives, for a store on the service's disk and for
one under an S3 store root (``esap-dask serve --store-root s3://...``, on the moto S3
that ``bash scripts/diracx.sh start`` runs). Only the job's owner sees it; keys cannot
leave the store.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest
import requests
import s3fs
import xarray as xr

import esap_dask
from esap_dask.testing.service import ServiceProcess, wait_for_phase, write_tokens

pytestmark = pytest.mark.slow

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
S3_URL = os.environ.get("ESAP_DIRAC_S3_ENDPOINT", "http://127.0.0.1:8721")
S3_START = "bash scripts/diracx.sh start"


def session(headers: dict[str, str]) -> requests.Session:
    s = requests.Session()
    s.headers.update(headers)
    return s


def run_job(svc: ServiceProcess, **params: str) -> str:
    """A helloworld job run to its end as alice; its URL."""
    s = session(ALICE)
    resp = s.post(
        f"{svc.url}/uws/jobs",
        data={"pipeline": "helloworld", "PHASE": "RUN", **params},
        allow_redirects=False,
    )
    assert resp.status_code == 303, resp.text
    url = resp.headers["Location"]
    phase = wait_for_phase(s, url, {"COMPLETED", "ERROR", "ABORTED"})
    assert phase == "COMPLETED", (s.get(f"{url}/error").text, s.get(f"{url}/results/log").text)
    return url


def results(url: str) -> dict[str, str]:
    """The job's results, id -> href, as pyvo parses them."""
    from pyvo.io.uws import parse_job

    job = parse_job(io.BytesIO(session(ALICE).get(url).content), pedantic=True)
    return {r.id_: r.href for r in job.results}


def over_http(url: str, headers: dict[str, str] = ALICE) -> xr.Dataset:
    return xr.open_zarr(f"{url}/results/store", storage_options={"headers": headers}).load()


def raw_get(url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET of ``path`` exactly as written (no client-side removal of dot segments)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The job service with its stores on its own disk (the default)."""
    root = tmp_path_factory.mktemp("results-http")
    tokens = write_tokens(root / "tokens", TOKENS)
    with ServiceProcess(root / "data", tokens) as svc:
        yield svc


@pytest.fixture(scope="module")
def bucket() -> Iterator[tuple[str, s3fs.S3FileSystem]]:
    """A fresh bucket on the moto S3 of the local DiracX."""
    try:
        httpx.get(f"{S3_URL}/moto-api/", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        pytest.fail(f"no S3 (moto) server answers at {S3_URL} ({err}); run `{S3_START}`")
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=S3_URL)
    name = f"esap-results-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    yield name, fs
    fs.rm(name, recursive=True)


def test_local_store_opens_over_http_as_on_disk(service: ServiceProcess) -> None:
    url = run_job(service, observations="1..7", message="Hi")
    job_id = url.rsplit("/", 1)[1]
    found = results(url)
    assert found["store"] == f"{url}/results/store"
    assert "store-url" not in found  # on the service's disk: nothing to point at elsewhere
    remote = over_http(url)
    direct = xr.open_zarr(service.data_dir / "jobs" / job_id / "store.zarr").load()
    xr.testing.assert_identical(remote, direct)
    assert list(remote["obs"].values) == [str(i) for i in range(1, 8)]
    assert list(remote["greeting"].values) == [f"Hi, {i}!" for i in range(1, 8)]
    assert not [v for v in remote.data_vars if str(v).startswith("ledger")]  # products only
    table = esap_dask.ledger(f"{url}/results/store", storage_options={"headers": ALICE})
    local = esap_dask.ledger(service.data_dir / "jobs" / job_id / "store.zarr")
    pd.testing.assert_frame_equal(table, local)  # the ledger group over HTTP as on disk
    assert (table.status == "done").all() and table.index.tolist() == [str(i) for i in range(1, 8)]


def test_store_keys_head_range_and_missing(service: ServiceProcess) -> None:
    url = run_job(service, observations="1..2")
    s = session(ALICE)
    body = s.get(f"{url}/results/store/zarr.json")
    assert body.status_code == 200
    meta = body.json()
    assert meta["node_type"] == "group"
    assert "consolidated_metadata" in meta  # one request gives the whole layout
    head = s.head(f"{url}/results/store/zarr.json")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(body.content)
    tail = s.get(f"{url}/results/store/zarr.json", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206
    assert tail.content == body.content[-10:]
    assert tail.headers["content-range"] == f"bytes {len(body.content) - 10}-" + (
        f"{len(body.content) - 1}/{len(body.content)}"
    )
    middle = s.get(f"{url}/results/store/zarr.json", headers={"Range": "bytes=2-5"})
    assert (middle.status_code, middle.content) == (206, body.content[2:6])
    beyond = s.get(f"{url}/results/store/zarr.json", headers={"Range": "bytes=999999-"})
    assert beyond.status_code == 416
    assert s.get(f"{url}/results/store/greeting/c/999").status_code == 404
    assert s.head(f"{url}/results/store/no-such-array/zarr.json").status_code == 404


def test_another_user_gets_404(service: ServiceProcess) -> None:
    url = run_job(service, observations="1..2")
    bob = session(BOB)
    for path in ("results/store/zarr.json", "results/store/greeting/zarr.json", "results/store"):
        resp = bob.get(f"{url}/{path}")
        assert resp.status_code == 404, path
        assert b"node_type" not in resp.content
    assert bob.head(f"{url}/results/store/zarr.json").status_code == 404
    with pytest.raises((FileNotFoundError, KeyError, OSError)):
        over_http(url, BOB)


def test_keys_cannot_leave_the_store(service: ServiceProcess) -> None:
    url = run_job(service, observations="1..2", message="secret-greeting")
    job_id = url.rsplit("/", 1)[1]
    store = service.data_dir / "jobs" / job_id / "store.zarr"
    log = (service.data_dir / "jobs" / job_id / "run.log").read_bytes()
    base = urlsplit(url).path + "/results/store"
    for key in (
        "../run.log",
        "%2e%2e/run.log",
        "%2E%2E%2Frun.log",
        "greeting/../../run.log",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "./zarr.json",
    ):
        status, body = raw_get(url, f"{base}/{key}", ALICE)
        assert status in (400, 404), (key, status)
        assert log[:40] not in body and b"root:" not in body and b"node_type" not in body, key
    # A symbolic link placed inside the store is not followed, even to a file of the job.
    (store / "escape").symlink_to(store.parent / "run.log")
    (store / "inside").symlink_to(store / "zarr.json")
    for key in ("escape", "inside"):
        status, body = raw_get(url, f"{base}/{key}", ALICE)
        assert status == 404 and not body.startswith(log[:40]), key
    status, _ = raw_get(url, f"{base}/greeting", ALICE)  # a directory is not a key
    assert status == 404


def test_a_shared_nothing_facility_needs_a_store_root(service: ServiceProcess) -> None:
    s = session(ALICE)
    resp = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "1..2", "facility": "dirac"},
        allow_redirects=False,
    )
    assert resp.status_code == 400
    assert "--store-root" in resp.text and "dirac" in resp.text


def test_bad_store_options_exit_2(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "esap_dask.service.cli", "--data", str(tmp_path)]
    done = subprocess.run(
        [*cmd, "--store-root", "s3://b/p", "--store-options", "[1]"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--store-options" in done.stderr and "JSON object" in done.stderr


def test_s3_store_root_opens_over_http_as_in_the_bucket(
    tmp_path: Path, bucket: tuple[str, s3fs.S3FileSystem]
) -> None:
    name, fs = bucket
    tokens = write_tokens(tmp_path / "tokens", TOKENS)
    # The endpoint from --store-options, the credentials completed from the environment.
    extra = [
        "--store-root",
        f"s3://{name}/jobs/",
        "--store-options",
        json.dumps({"client_kwargs": {"endpoint_url": S3_URL}}),
    ]
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with ServiceProcess(tmp_path / "data", tokens, extra=extra, env=env) as svc:
        url = run_job(svc, observations="1..5", message="Salut")
        job_id = url.rsplit("/", 1)[1]
        where = f"s3://{name}/jobs/{job_id}/store.zarr"
        found = results(url)
        assert found["store-url"] == where
        assert found["store"] == f"{url}/results/store"
        keys = fs.find(f"{name}/jobs/{job_id}/store.zarr")
        assert f"{name}/jobs/{job_id}/store.zarr/zarr.json" in keys
        assert any("/greeting/c." in k for k in keys), keys  # the chunks are in the bucket
        assert not (svc.data_dir / "jobs" / job_id / "store.zarr").exists()
        opts: dict[str, Any] = {"key": "testing", "secret": "testing"}
        opts["client_kwargs"] = {"endpoint_url": S3_URL}
        direct = xr.open_zarr(where, storage_options=opts).load()
        remote = over_http(url)
        xr.testing.assert_identical(remote, direct)
        assert list(remote["greeting"].values) == [f"Salut, {i}!" for i in range(1, 6)]
        s = session(ALICE)
        prov = s.get(found["provenance"])
        assert prov.status_code == 200 and "activity" in prov.json()
        assert s.get(found["ledger"]).json()["counts"]["done"] == 5
        archive = s.get(found["store"])
        assert archive.status_code == 200 and archive.content[:2] == b"PK"
        assert session(BOB).get(f"{url}/results/store/zarr.json").status_code == 404
        assert s.delete(url, allow_redirects=False).status_code == 303
        # Destruction runs in a thread of the service: wait for the prefix to go.
        deadline = time.monotonic() + 60
        while fs.find(f"{name}/jobs/{job_id}") and time.monotonic() < deadline:
            time.sleep(0.2)
            fs.invalidate_cache()
        assert fs.find(f"{name}/jobs/{job_id}") == [], "the job's S3 objects outlived it"


def test_the_documented_example_prints_what_the_docs_show(service: ServiceProcess) -> None:
    """docs/examples/uws_results_zarr.py (shown in docs/service.md) against this service."""
    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "uws_results_zarr.py"
    done = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ESAP_DASK_SERVICE": service.url},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "COMPLETED",
        "{'obs': 3}",
        "['Hello, 1!', 'Hello, 2!', 'Hello, 3!']",
    ]


def test_where_job_stores_go(tmp_path: Path) -> None:
    """The placement rule of esap_dask.service.stores.job_store, facility by facility."""
    import dask.config

    from esap_dask.service.config import ServiceConfig
    from esap_dask.service.stores import StoreRootError

    plain = ServiceConfig(data_dir=tmp_path / "data")
    assert plain.job_store("j1", "local") == (str(tmp_path / "data/jobs/j1/store.zarr"), {})
    with pytest.raises(StoreRootError, match="--store-root"):
        plain.job_store("j1", "dirac")
    on_disk = ServiceConfig(data_dir=tmp_path / "data", store_root=str(tmp_path / "shared"))
    assert on_disk.job_store("j1", "slurm-loopback")[0] == str(tmp_path / "shared/j1/store.zarr")
    with pytest.raises(StoreRootError, match="not a URL"):
        on_disk.job_store("j1", "dirac")  # grid workers cannot reach a directory
    s3 = ServiceConfig(
        data_dir=tmp_path / "data",
        store_root="s3://bucket/jobs/",
        store_options={"key": "k", "secret": "s"},
    )
    url, options = s3.job_store("j1", "dirac")
    assert url == "s3://bucket/jobs/j1/store.zarr"
    assert options["key"] == "k" and options["secret"] == "s"
    with (
        dask.config.set({"esap.facilities.local.shared_filesystem": "false"}),
        pytest.raises(StoreRootError, match="'local'"),
    ):
        plain.job_store("j1", "local")
    with dask.config.set({"esap.facilities.dirac.shared_filesystem": True}):
        assert plain.job_store("j1", "dirac")[0].endswith("jobs/j1/store.zarr")
