"""The ledger's attempts after a worker dies mid-run, on a local cluster: starts, not assignments.

Distributed blames a dying worker for every task assigned to it, the ones queued
behind the running batch too. Only the batch that was running counts a second
attempt, whether the scheduler gives up on it (``allowed-failures: 0``, the driver
retries it alone) or reschedules it itself (the default); the run's notes name it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster

from esap_dask import ledger, map_observations
from esap_dask.catalogs.workflows import get_pipeline
from esap_dask.engine.execute import batch_starts
from esap_dask.engine.observations import Observation
from esap_dask.engine.task import Batch, BatchStarts, RunContext, run_batch
from esap_dask.store import open_store, store_layout
from tests.test_dirac import wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("allowed_failures", "note"),
    [
        (0, "were running on worker {w} when it was lost; they run again, alone"),
        (3, "were running on worker {w} when it was lost; they ran again on worker"),
    ],
)
def test_only_the_batch_running_on_a_lost_worker_counts_two_attempts(
    tmp_path: Path, allowed_failures: int, note: str
) -> None:
    store = tmp_path / "s.zarr"
    config = {"distributed.scheduler.allowed-failures": allowed_failures}
    with (
        dask.config.set(config),
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        result: dict[str, Any] = {}
        run = threading.Thread(
            target=lambda: result.update(
                summary=map_observations(
                    "helloworld", "1..16", store, client=client, params={"sleep": 0.5},
                    chunk=4, batch_size=4,
                )
            )
        )  # fmt: skip
        run.start()
        started: dict[str, tuple[str, ...]] = {}

        def busy() -> bool:
            running = client.run(
                lambda dask_worker: [str(t.key) for t in dask_worker.state.executing]
            )
            keys = [k for ks in running.values() for k in ks if k.startswith("esap-batch-")]
            started.update((k, w) for k, w in batch_starts(client, keys).items() if w)
            return bool(started)

        wait_until(busy, 60, "a batch running on a worker")
        (victim,) = next(iter(started.values()))
        addr = next(
            a for a, w in client.scheduler_info()["workers"].items() if str(w["name"]) == victim
        )
        pid = client.run(os.getpid, workers=[addr])[addr]
        os.kill(pid, signal.SIGKILL)  # (its nanny starts a new worker)
        run.join(timeout=120)
        assert not run.is_alive(), "the run ends after its worker is lost"
    summary = result["summary"]
    assert summary.ok and summary.succeeded == 16, summary.failures
    interrupted = {
        i
        for i in range(4)
        if any(
            n.startswith(f"observations {4 * i + 1} … {4 * i + 4} (4 observation(s)) ")
            and note.format(w=victim) in n
            for n in summary.notes
        )
    }
    assert len(interrupted) == 1, f"the notes name the batch running on {victim}: {summary.notes}"
    table = ledger(store)
    assert (table.status == "done").all()
    attempts = {str(k): int(v) for k, v in table.attempts.items()}
    twice = {str(4 * i + j) for i in interrupted for j in range(1, 5)}
    assert attempts == {o: 2 if o in twice else 1 for o in attempts}, attempts


def _batch_of(store: Path) -> tuple[Batch, Any]:
    """Rows 0..3 of ``store`` as the batch a run planned, and the store's ledger."""
    table = ledger(store)
    ids = table.index.tolist()
    batch = Batch(
        index=0,
        rows=np.arange(len(ids), dtype=np.int64),
        observations=[Observation.of(int(i)) for i in ids],
        fingerprints=[str(f) for f in table.fingerprint],
        attempts=[int(a) for a in table.attempts],
    )
    return batch, table


def _helloworld_context(store: Path, given: dict[str, Any], run_id: str) -> RunContext:
    """The context a run ``run_id`` of helloworld with parameters ``given`` gives its tasks."""
    pipe = get_pipeline("helloworld")
    params = pipe.resolve(given)
    return RunContext(
        store=str(store),
        pipeline=pipe,
        params=params,
        param_hash=pipe.parameter_hash(params),
        schema=pipe.output_schema(params),
        run_id=run_id,
        unit=store_layout(open_store(str(store), mode="r")).unit,
        track_starts=True,
    )


@pytest.mark.parametrize("same_run", [True, False])
def test_a_task_started_again_counts_its_starts_or_reads_its_committed_rows(
    tmp_path: Path, client: Any, same_run: bool
) -> None:
    """A task whose key a lost worker started already: its result died with that worker.

    When its run had committed the rows (the result was lost before the driver fetched
    it), the new start reads the report back from the ledger and does not run the
    pipeline again; otherwise it runs, and the ledger's ``attempts`` counts both starts.
    """
    store = tmp_path / "s.zarr"
    first = map_observations("helloworld", "1..4", store, client=client)
    ctx = _helloworld_context(store, {}, first.run_id if same_run else "another-run")
    batch, before = _batch_of(store)
    if not same_run:
        batch = dataclasses.replace(batch, attempts=[0] * 4)  # as the run had planned them
    key = f"esap-batch-{ctx.run_id}-0"
    client.register_plugin(BatchStarts())
    client.sync(client.scheduler.esap_batch_started, key=key, worker="lost-worker")
    report = client.submit(run_batch, ctx, batch, key=key, pure=False).result()
    assert report.started_on[0] == "lost-worker" and len(report.started_on) == 2
    assert (report.done, report.failed) == (4, 0), report.failures
    after = ledger(store)
    assert report.from_ledger is same_run
    if same_run:  # nothing written again
        assert after.end.tolist() == before.end.tolist()
        assert after.attempts.tolist() == [1] * 4
    else:
        assert after.run.tolist() == ["another-run"] * 4
        assert after.attempts.tolist() == [2] * 4, "both starts counted"
    client.sync(client.scheduler.esap_batch_forget, prefix=key)


def test_a_failed_row_retried_is_not_read_back_as_committed_before_its_status(
    tmp_path: Path, client: Any
) -> None:
    """A retried failed row whose first start died between its ledger arrays and status.

    The first start wrote this run's id into the row, then its worker died before the
    ``status`` (the commit point). The restarted task must run the row again, not read
    the earlier run's failure back as its own: the driver marks the rows it retries
    pending before any task starts.
    """
    from esap_dask.engine.ledger import pack, plan, read_ledger, reopen
    from esap_dask.engine.observations import as_observations, fingerprints
    from esap_dask.store import write_rows

    store = tmp_path / "s.zarr"
    first = map_observations("helloworld", "1..4", store, client=client, params={"fail": True})
    assert first.failed == 4
    pipe = get_pipeline("helloworld")
    params = pipe.resolve({"fail": True})
    group = open_store(str(store))
    before = read_ledger(group)
    observations = as_observations("1..4")
    todo = plan(
        observations,
        fingerprints(observations),
        before,
        param_hash=pipe.parameter_hash(params),
        version=pipe.version,
    )
    assert [e.reason for e in todo.todo] == ["failed"] * 4
    assert reopen(group, todo, before) == 4
    assert (ledger(store).status == "pending").all(), "retried rows read pending"
    run_id = "the-retrying-run"
    # its first start wrote the ledger arrays with this run's id, then its worker died
    write_rows(group, np.arange(4), pack({"run": np.full(4, run_id, dtype=object)}))
    ctx = _helloworld_context(store, {"fail": True}, run_id)
    batch = Batch(
        index=0,
        rows=np.arange(4, dtype=np.int64),
        observations=[e.observation for e in todo.todo],
        fingerprints=[e.fingerprint for e in todo.todo],
        attempts=[e.attempts for e in todo.todo],
    )
    key = f"esap-batch-{run_id}-0"
    client.register_plugin(BatchStarts())
    client.sync(client.scheduler.esap_batch_started, key=key, worker="lost-worker")
    report = client.submit(run_batch, ctx, batch, key=key, pure=False).result()
    assert not report.from_ledger, "the earlier run's failure was taken for this run's"
    assert (report.done, report.failed) == (0, 4)
    after = ledger(store)
    assert (after.status == "failed").all() and (after.run == run_id).all()
    assert after.attempts.tolist() == [3] * 4, "one earlier start, and this task's two"
    client.sync(client.scheduler.esap_batch_forget, prefix=key)
