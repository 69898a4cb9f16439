"""SIGKILL of the service mid-job, then a restart: the job resumes through the ledger.

No job stays EXECUTING, and the resumed job's store equals an uninterrupted one's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

from esap_dask import ledger, read_ledger
from esap_dask.testing.service import ServiceProcess, wait_for_phase, write_tokens

pytestmark = pytest.mark.slow
PARAMS = {"pipeline": "helloworld", "observations": "1..40", "sleep": "0.25", "PHASE": "RUN"}


def _session() -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = "Bearer tok-carol"
    return s


def _done_rows(store: Path) -> int:
    try:
        return int((read_ledger(str(store)).status == 1).sum())
    except Exception:  # the store is being created
        return 0


def test_sigkill_mid_job_then_restart_resumes(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens", {"tok-carol": "carol"})
    data = tmp_path / "data"
    s = _session()
    first = ServiceProcess(data, tokens).start()
    url = s.post(f"{first.url}/uws/jobs", data=PARAMS, allow_redirects=False).headers["Location"]
    job_id = url.rsplit("/", 1)[1]
    store = data / "jobs" / job_id / "store.zarr"
    wait_for_phase(s, url, {"EXECUTING"})
    deadline = time.monotonic() + 60
    while _done_rows(store) < 6:
        assert time.monotonic() < deadline, "no observation done before the kill"
        time.sleep(0.2)
    first.kill()
    done_at_kill = _done_rows(store)
    assert done_at_kill < 40, "the job finished before the kill; make it longer"

    second = ServiceProcess(data, tokens, port=first.port).start()
    try:
        listing = s.get(f"{second.url}/uws/jobs", params={"PHASE": "EXECUTING"}).text
        assert wait_for_phase(s, url, {"COMPLETED", "ERROR", "ABORTED"}) == "COMPLETED", s.get(
            f"{url}/error"
        ).text
        summary = s.get(f"{url}/results/summary").json()
        assert summary["skipped"] >= done_at_kill - 2 and summary["processed"] < 40, summary
        assert "resuming" in s.get(f"{url}/results/log").text
        ref = s.post(f"{second.url}/uws/jobs", data=PARAMS, allow_redirects=False)
        ref_url = ref.headers["Location"]
        assert wait_for_phase(s, ref_url, {"COMPLETED", "ERROR"}) == "COMPLETED"
        stuck = s.get(f"{second.url}/uws/jobs", params={"PHASE": "EXECUTING"}).text
        assert "<uws:jobref" not in stuck, stuck
        del listing
    finally:
        second.stop()
    ref_store = data / "jobs" / ref_url.rsplit("/", 1)[1] / "store.zarr"
    a, b = xr.open_zarr(store), xr.open_zarr(ref_store)
    assert list(a["obs"].values) == list(b["obs"].values) == [str(i) for i in range(1, 41)]
    for name in ("size", "checksum", "greeting"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    la, lb = ledger(store), ledger(ref_store)
    for name in ("status", "fingerprint", "params", "version", "source"):
        assert la[name].tolist() == lb[name].tolist(), name
    assert set(la.status) == {"done"}


def test_graceful_stop_queues_running_jobs_for_the_next_start(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens", {"tok-carol": "carol"})
    data = tmp_path / "data"
    s = _session()
    first = ServiceProcess(data, tokens).start()
    url = s.post(f"{first.url}/uws/jobs", data=PARAMS, allow_redirects=False).headers["Location"]
    wait_for_phase(s, url, {"EXECUTING"})
    time.sleep(2)
    first.stop()
    second = ServiceProcess(data, tokens, port=first.port).start()
    try:
        assert wait_for_phase(s, url, {"COMPLETED", "ERROR", "ABORTED"}) == "COMPLETED"
        log = s.get(f"{url}/results/log").text
        assert "service shutdown" in log
    finally:
        second.stop()


def test_a_cluster_that_cannot_start_is_retried_then_reported(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens", {"tok-carol": "carol"})
    broken = {"DASK_ESAP__FACILITIES__LOCAL__MEMORY_LIMIT": "lots"}
    s = _session()
    with ServiceProcess(tmp_path / "data", tokens, env=broken) as svc:
        url = s.post(
            f"{svc.url}/uws/jobs",
            data={"pipeline": "helloworld", "observations": "1..2", "PHASE": "RUN"},
            allow_redirects=False,
        ).headers["Location"]
        assert wait_for_phase(s, url, {"COMPLETED", "ERROR", "ABORTED"}, timeout=60) == "ERROR"
        assert "did not start" in s.get(f"{url}/error").text
        log = s.get(f"{url}/results/log").text
        assert log.count("trying again") == 2 and "giving up after 3 attempts" in log
