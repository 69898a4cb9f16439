"""An ABORT that comes while a job's run is still planning: none of its tasks is submitted.

The job service stops a run by cancelling its Dask futures; a run still planning (reading
the ledger, creating the store) has none yet, and used to submit and run all of them
after the job was already ABORTED. Here the plan is held until the ABORT has been taken,
in the service's own job thread, on its shared LocalCluster.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import esap_dask.engine.mapper as mapper
from esap_dask import ledger
from esap_dask.service.config import ServiceConfig
from esap_dask.service.jobs import JobService


def test_an_abort_while_the_run_plans_submits_nothing(tmp_path: Path, monkeypatch) -> None:
    planning, release = threading.Event(), threading.Event()
    real_plan = mapper.plan

    def held_plan(*args: Any, **kwargs: Any) -> Any:
        planning.set()
        assert release.wait(120), "the test never released the plan"
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(mapper, "plan", held_plan)
    service = JobService(ServiceConfig(data_dir=tmp_path / "data", concurrency=1))
    service.start()
    try:
        row = service.create(
            "alice", [("pipeline", "helloworld"), ("observations", "1..40"), ("PHASE", "RUN")]
        )
        assert planning.wait(120), "the job never started planning"
        service.set_phase("alice", row.id, "ABORT")
        assert service.get("alice", row.id).phase == "ABORTED"
        release.set()
        deadline = time.monotonic() + 120
        while service.runner.running():
            assert time.monotonic() < deadline, "the aborted job's thread did not end"
            time.sleep(0.1)
        store, _ = service.config.job_store(row.id)
        status = ledger(store).status
        assert len(status) == 40 and (status == "pending").all(), status.value_counts()
        log = (service.runner.job_dir(row.id) / "run.log").read_text()
        assert "aborted" in log and "stopped" in log, log
        assert service.get("alice", row.id).phase == "ABORTED"
    finally:
        release.set()
        service.close()
