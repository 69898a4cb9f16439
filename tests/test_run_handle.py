"""Runs in the background (``map_observations(..., wait=False)``), progress, HTML reprs.

A handle's result is the run's summary, an error in the run comes out of ``result()``,
and a cancel leaves a store whose next run does exactly the rest: every observation
processed once. The progress reaches the terminal (a bar on a TTY), the service's run
log (lines) and the handle (counts).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

import esap_dask
from esap_dask.engine.handle import RunCancelled, RunHandle
from esap_dask.engine.progress import Progress
from esap_dask.engine.summary import RunSummary
from tests.conftest import ESAP_DASK, ROOT

HOSTILE = "<script>alert('x')</script> & <b>bold</b>"


def _wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def test_handle_result_is_the_runs_summary(tmp_path: Path, client) -> None:
    store = tmp_path / "hello.zarr"
    handle = esap_dask.map_observations(
        "helloworld", "1..12", store, client=client, wait=False, progress=False
    )
    assert isinstance(handle, RunHandle)
    summary = handle.result(timeout=120)
    assert isinstance(summary, RunSummary)
    assert handle.done() and not handle.cancelled()
    assert (summary.succeeded, summary.failed, summary.total) == (12, 0, 12)
    progress = handle.progress
    assert (progress.done, progress.failed, progress.total) == (12, 0, 12)
    assert progress.rate > 0 and progress.eta == 0
    assert handle.run_id == summary.run_id
    assert handle.dashboard_link == client.dashboard_link
    page = handle._repr_html_()
    assert "finished" in page and "12/12 observations" in page
    assert f'href="{client.dashboard_link}"' in page
    assert (esap_dask.ledger(store).status == "done").all()
    assert handle.cancel() is False  # it had ended: nothing to stop


def test_an_error_in_the_run_comes_out_of_result_and_frees_the_store(
    tmp_path: Path, client
) -> None:
    def uneven(x):  # results of different shapes: the schema cannot be inferred
        return {"v": np.zeros(int(x))}

    store = tmp_path / "uneven.zarr"
    handle = esap_dask.map_observations(uneven, [1, 2, 3], store, client=client, wait=False)
    with pytest.raises(esap_dask.SchemaError, match="different shapes"):
        handle.result(timeout=120)
    assert handle.done() and isinstance(handle.exception(), esap_dask.SchemaError)
    assert "SchemaError" in handle._repr_html_()
    # the run released the store's lock: the next run takes it
    summary = esap_dask.map_observations(
        lambda x: {"v": float(x)}, [1, 2, 3], store, client=client, progress=False
    )
    assert summary.succeeded == 3


def test_result_with_a_timeout_leaves_the_run_going(tmp_path: Path, client) -> None:
    gate = tmp_path / "gate"

    def gated(x):
        while not os.path.exists(gate):
            time.sleep(0.02)
        return {"v": float(x)}

    handle = esap_dask.map_observations(
        gated, [1, 2], tmp_path / "gated.zarr", client=client, wait=False, progress=False
    )
    with pytest.raises(TimeoutError, match="goes on"):
        handle.result(timeout=0.2)
    assert not handle.done() and "running" in handle._repr_html_()
    gate.touch()
    assert handle.result(timeout=120).succeeded == 2


@pytest.mark.slow
@pytest.mark.parametrize("tracked", [True, False], ids=["start-record", "no-start-record"])
def test_cancel_leaves_a_store_whose_next_run_does_the_rest(
    tmp_path: Path, client, monkeypatch: pytest.MonkeyPatch, tracked: bool
) -> None:
    """Batches started finish, the others stay pending; the next run processes each once.

    Without the scheduler's record of starts (a scheduler that cannot load esap_dask)
    every task is cancelled, and the run waits for those still running on a worker
    before it releases the store: they commit their rows, and the next run skips them.
    """
    if not tracked:
        monkeypatch.setattr("esap_dask.engine.execute._track_starts", lambda client: False)
    gate, calls = tmp_path / "gate", tmp_path / "calls"
    calls.mkdir()

    def gated(x):
        (calls / f"{x}-{time.time_ns()}").touch()  # one file per call
        while int(x) > 4 and not os.path.exists(gate):
            time.sleep(0.02)
        return {"v": float(x)}

    pipeline = esap_dask.Pipeline(  # a declared schema: no observation runs to infer it
        name="gated", version="1", function=gated, schema=[esap_dask.Variable("v", "float64")]
    )
    store = tmp_path / "gated.zarr"
    n = 40
    handle = esap_dask.map_observations(
        pipeline, list(range(1, n + 1)), store, client=client, chunk=2, batch_size=2,
        wait=False, progress=False,
    )  # fmt: skip
    _wait_until(lambda: handle.progress.done >= 4, "4 observations done")
    assert handle.cancel(timeout=0) is True  # asked, not waited for
    assert not handle.done()  # the batches started finish first, and they wait for the gate
    assert "cancelling" in handle._repr_html_()
    gate.touch()
    assert handle.cancel(timeout=120) is True
    with pytest.raises(RunCancelled) as cancelled:
        handle.result()
    first = cancelled.value.summary
    assert first is not None and first.failed == 0
    assert 4 <= first.succeeded < n
    assert any("cancelled" in note for note in first.notes), first.notes
    status = esap_dask.ledger(store).status
    committed = int((status == "done").sum())
    if tracked:  # every batch that ran reported
        assert committed == first.succeeded
    else:  # the batches running when cancelled committed without a report
        assert committed >= first.succeeded
    assert (status == "pending").sum() == n - committed and committed < n
    # its provenance names as inputs the observations it committed, not those left pending
    assert first.provenance is not None
    assert _inputs(first.provenance) == set(status.index[status == "done"])

    second = esap_dask.map_observations(
        pipeline, list(range(1, n + 1)), store, client=client, progress=False
    )
    assert (second.processed, second.skipped) == (n - committed, committed)
    assert _inputs(second.provenance) == set(status.index[status == "pending"])
    ds, table = xr.open_zarr(store), esap_dask.ledger(store)
    assert (table.status == "done").all() and (table.attempts == 1).all()
    assert sorted(float(v) for v in ds.v.values) == [float(i) for i in range(1, n + 1)]
    ran = sorted(int(p.name.split("-")[0]) for p in calls.iterdir())
    assert ran == list(range(1, n + 1))  # each observation ran once over the two runs


def _inputs(provenance: str | None) -> set[str]:
    """The names of the inputs a run's provenance document lists."""
    assert provenance is not None
    doc = json.loads(Path(provenance).read_text())
    return {e["voprov:name"] for k, e in doc["entity"].items() if k.startswith("esap:input/")}


def test_summary_html_escapes_and_bounds_the_failures(tmp_path: Path, client) -> None:
    def hostile(x):
        if int(x) % 2:
            raise ValueError(f"{HOSTILE} #{x}")
        return {"v": float(x)}

    store = tmp_path / "hostile & <odd>.zarr"
    summary = esap_dask.map_observations(
        hostile, list(range(2, 52)), store, client=client, progress=False
    )
    assert summary.failed == 25
    page = summary._repr_html_()
    assert "<script>" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold" in page
    assert "hostile &amp; &lt;odd&gt;.zarr" in page and "<odd>" not in page
    assert page.count("<td") >= 3 * 20
    assert page.count("ValueError") == 20  # the first 20 failures, then a pointer
    assert "and 5 more" in page and "esap-dask status" in page
    assert "25 failed" in page and "50 total" in page


def test_progress_lines_for_a_log() -> None:
    lines: list[str] = []
    with Progress(10, "p → s.zarr", enabled=lines.append, interval=0) as bar:
        bar.advance(4)
        bar.advance(2, failed=1)
        bar.advance(4)
    assert lines[0] == "p → s.zarr: 0/10 observations"
    assert lines[1].startswith("p → s.zarr: 4/10 observations, ") and "obs/s, ETA 0:00:" in lines[1]
    assert lines[2].startswith("p → s.zarr: 6/10 observations (1 failed), ")
    assert lines[-1].startswith("p → s.zarr: 10/10 observations (1 failed), ")
    assert "ETA" not in lines[-1]
    quiet: list[str] = []
    with Progress(10, "q", enabled=quiet.append) as bar:  # the default interval: 10 s
        for _ in range(10):
            bar.advance(1)
    assert len(quiet) == 2  # the start and the end


def _run_cli(tmp_path: Path, *, tty: bool, cli_env: dict[str, str]) -> str:
    """``esap-dask run helloworld`` with stderr on a pseudo-terminal or a pipe; stderr."""
    args = [*ESAP_DASK, "run", "helloworld", "-o", "1..6", "-s", str(tmp_path / f"{tty}.zarr")]
    if not tty:
        done = subprocess.run(
            args, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(
        args, cwd=ROOT, env=cli_env, stdout=subprocess.DEVNULL, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            pytest.fail("esap-dask run wrote nothing for 300 s")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_cli_shows_a_bar_on_a_terminal_only(tmp_path: Path, cli_env: dict[str, str]) -> None:
    on_tty = _run_cli(tmp_path, tty=True, cli_env=cli_env)
    assert "helloworld → True.zarr" in on_tty and "6/6" in on_tty and "obs/s" in on_tty
    piped = _run_cli(tmp_path, tty=False, cli_env=cli_env)
    assert "obs/s" not in piped and "6/6" not in piped


@pytest.mark.slow
def test_service_run_log_has_progress_lines(tmp_path: Path) -> None:
    from esap_dask.testing.service import ServiceProcess, wait_for_phase, write_tokens

    tokens = write_tokens(tmp_path / "tokens", {"tok-dana": "dana"})
    with ServiceProcess(tmp_path / "data", tokens) as service:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer tok-dana"
        resp = s.post(
            f"{service.url}/uws/jobs",
            data={"pipeline": "helloworld", "observations": "1..5", "PHASE": "RUN"},
            allow_redirects=False,
        )
        assert resp.status_code == 303, resp.text
        url = resp.headers["Location"]
        assert wait_for_phase(s, url, {"COMPLETED", "ERROR", "ABORTED"}) == "COMPLETED"
        log = s.get(f"{url}/results/log").text
    assert "helloworld → store.zarr: 0/5 observations\n" in log, log
    assert "helloworld → store.zarr: 5/5 observations, " in log and " obs/s" in log, log
