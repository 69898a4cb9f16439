"""The service's one reconciliation loop: leases, adoption, limits, destruction.

Every ``reaper_interval`` seconds it

- stops the Dask work of local jobs the database says are no longer running
  (aborted or deleted through another instance of the service);
- aborts local jobs that ran past their execution duration;
- destroys jobs past their destruction time (record and files);

and every ``heartbeat`` seconds it

- renews the lease of this instance on the jobs it runs;
- adopts QUEUED or EXECUTING jobs of instances that are gone (a dead process on
  this host, or a lease older than ``stale_after``): they are queued here and
  resumed through their store's ledger.

Adoption at start is how a restarted service resumes the jobs it was running
when it was killed: no job is left EXECUTING.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import Protocol

from esap_dask.service.config import ServiceConfig
from esap_dask.service.db import JobDB, JobRow, now, utc

__all__ = ["Reaper", "instance_name", "runner_alive"]

log = logging.getLogger("esap_dask.service")


class JobRunner(Protocol):
    """What the reaper drives of :class:`esap_dask.service.runner.JobRunner`."""

    config: ServiceConfig
    db: JobDB
    instance: str

    def running(self) -> list[str]: ...
    def forget(self, job_id: str) -> None: ...
    def stop_work(self, job_id: str, reason: str) -> None: ...
    def abort(self, job_id: str, reason: str | None = None) -> bool: ...
    def log(self, job_id: str, message: str) -> None: ...
    def destroy(self, job_id: str) -> None: ...
    def submit(self, job_id: str) -> None: ...


def instance_name() -> str:
    """A name for this service process, unique over time: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def runner_alive(name: str | None) -> bool | None:
    """Whether the instance ``name`` is alive: known only for processes on this host."""
    if not name:
        return False
    host, _, rest = name.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Reaper:
    """The loop; ``pass_once`` and ``adopt`` may also be called directly (tests, start)."""

    def __init__(
        self, runner: JobRunner, *, heartbeat: float = 5.0, stale_after: float = 30.0
    ) -> None:
        self.runner = runner
        self.db = runner.db
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="esap-reaper", daemon=True)

    def start(self) -> None:
        """Adopt orphaned jobs, then run the loop in a daemon thread."""
        self.adopt()
        self._thread.start()

    def stop(self) -> None:
        """End the loop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        last_beat = 0.0
        interval = self.runner.config.reaper_interval
        while not self._stop.wait(interval):
            try:
                self.pass_once()
                last_beat += interval
                if last_beat >= self.heartbeat:
                    last_beat = 0.0
                    self.db.beat(self.runner.instance, now())
                    self.adopt()
            except Exception:
                log.exception("reaper pass failed; trying again")

    def pass_once(self) -> None:
        """Reconcile local jobs with the database; enforce durations and destruction."""
        t = now()
        local = self.runner.running()
        phases = self.db.phases(local)
        for job_id in local:
            phase = phases.get(job_id)
            if phase is None:
                self.runner.forget(job_id)
            elif phase not in ("QUEUED", "EXECUTING"):
                self.runner.stop_work(job_id, f"the job is {phase}")
        for row in self.db.in_phases(["EXECUTING"]):
            if row.runner != self.runner.instance:
                continue
            start, limit = utc(row.start_time), row.execution_duration
            if limit and start is not None and t - start > timedelta(seconds=limit):
                self.runner.abort(
                    row.id, f"exceeded its executionDuration of {limit} s; results so far are kept"
                )
        for row in self.db.expired(t):
            self.runner.log(row.id, "destruction time reached")
            self.runner.destroy(row.id)

    def adopt(self) -> int:
        """Queue here the active jobs of instances that are gone; return how many."""
        adopted = 0
        stale = now() - timedelta(seconds=self.stale_after)
        for row in self.db.in_phases(["QUEUED", "EXECUTING"]):
            if row.runner == self.runner.instance or not self._orphaned(row, stale):
                continue
            if self.db.transition(
                row.id,
                [row.phase],
                "QUEUED",
                held_by=row.runner,
                runner=self.runner.instance,
                heartbeat=now(),
            ):
                what = "was executing" if row.phase == "EXECUTING" else "was queued"
                self.runner.log(
                    row.id,
                    f"the job {what} in service instance {row.runner or 'none'}, which is "
                    f"gone: resuming in {self.runner.instance} through the store's ledger",
                )
                self.runner.submit(row.id)
                adopted += 1
        return adopted

    def _orphaned(self, row: JobRow, stale: object) -> bool:
        alive = runner_alive(row.runner)
        if alive is not None:
            return not alive
        beat = utc(row.heartbeat)
        return beat is None or beat < stale  # type: ignore[operator]
