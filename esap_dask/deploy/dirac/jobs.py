"""The DiracX side of a :class:`~esap_dask.deploy.dirac.cluster.DiracCluster`: its grid jobs.

:class:`Grid` owns every call the cluster makes to DiracX about its jobs:

* **submission batching**: the ``start()`` of every worker of one scale-up is
  collected for one event-loop tick, then submitted as parametric JDLs of at
  most ``max_jobs_per_submission`` jobs (DiracX 0.7.0 allows 20), and the bulk
  submission is confirmed as DIRAC's own client does (``Submitting`` →
  ``Received``);
* **kill with read-back**: jobs still alive are set ``Killed`` through
  ``PATCH /api/jobs/status``, then read back, because DiracX ignores invalid
  transitions silently; jobs that ended already are left alone (DiracX would
  keep their status but overwrite the minor status, the reason they ended);
* **kill settling**: DiracX applies a status update as read-then-write, without
  locking the job's row, so an update that read the job before the kill and is
  written after it (an optimizer or a pilot moving ``Received`` → ``Waiting``)
  overwrites ``Killed``; :meth:`Grid.settle_kills` reads the killed jobs again a
  moment after ``close()`` and kills those brought back, and so does every poll
  (seen in CI: all 25 jobs of a cluster back to ``Waiting`` after ``close()``,
  while the local site parked them);
* **polling**: the last known row of every job (``Status``, ``MinorStatus``,
  ``ApplicationStatus``), and a warning for each job that ends unasked.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from esap_dask.deploy.dirac.diracx_client import DiracXClient, DiracXError

__all__ = ["FINAL_STATES", "MAX_JOBS_PER_SUBMISSION", "MAX_REKILLS", "Grid", "JobSource"]

log = logging.getLogger("esap_dask.dirac")

#: Jobs in one parametric submission: DiracX 0.7.0's MAX_PARAMETRIC_JOBS.
MAX_JOBS_PER_SUBMISSION = 20
#: Times one job is killed again after it came back alive, before the grid gives up on it.
MAX_REKILLS = 5
#: What a user can do about a job esap-dask could not kill.
_KILL_BY_HAND = "to kill in DIRAC: dirac-wms-job-kill, or PATCH /api/jobs/status of DiracX"
#: DIRAC job states a job never leaves.
FINAL_STATES = frozenset({"Done", "Completed", "Failed", "Killed", "Deleted"})


class JobSource(Protocol):
    """What :class:`Grid` needs of its cluster: the JDL of a batch of workers, and limits."""

    max_jobs_per_submission: int
    requirements: dict[str, list[str]]

    def job_jdl(self, names: list[str], scheduler: str, sandbox: str | None) -> str:
        """The parametric JDL that starts the workers ``names``."""
        ...


class Grid:
    """The DiracX side of one cluster: batches submissions and kills, tracks job states."""

    def __init__(self, client: DiracXClient, cluster: JobSource) -> None:
        self.client = client
        self.cluster = cluster
        self.jobs: dict[str, dict[str, Any]] = {}  # worker name -> DiracX row
        self.killed: set[int] = set()
        self.rekilled: collections.Counter[int] = collections.Counter()
        self.sandbox_pfn: str | None = None
        self._pending: list[tuple[str, str, asyncio.Future[int]]] = []
        self._flush: asyncio.Task[None] | None = None

    async def submit(self, name: str, scheduler: str) -> int:
        """The DiracX job id of worker ``name``, submitted with the others of this tick."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((name, scheduler, fut))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._submit_pending())
        return await fut

    async def _submit_pending(self) -> None:
        await asyncio.sleep(0.05)  # collect every start() of this _correct_state
        pending, self._pending = self._pending, []
        size = self.cluster.max_jobs_per_submission
        for i in range(0, len(pending), size):
            chunk = pending[i : i + size]
            try:
                ids = await self._submit_chunk([n for n, _, _ in chunk], chunk[0][1])
            except Exception as err:
                for _, _, fut in chunk:
                    fut.set_exception(err)
                continue
            for name, _, fut in chunk:
                fut.set_result(ids[name])

    async def _submit_chunk(self, names: list[str], scheduler: str) -> dict[str, int]:
        jdl = self.cluster.job_jdl(names, scheduler, self.sandbox_pfn)
        try:
            inserted = await self.client.submit_jdl([jdl])
        except DiracXError as err:
            hint = ""
            if "syntax" in str(err) and self.cluster.requirements["Platform"]:
                hint = " (DiracX 0.7.0 rejects every JDL with a Platform: drop the option)"
            log.error("DiracX refused the workers %s: %s%s\n%s", names, err, hint, jdl)
            raise DiracXError(f"{err}{hint}") from err
        rows = await self.client.search([int(j["JobID"]) for j in inserted])
        ids = {r["JobName"]: int(r["JobID"]) for r in rows}
        missing = set(names) - set(ids)
        if missing:
            raise DiracXError(f"DiracX returned no job for worker(s) {sorted(missing)}")
        submitting = [int(r["JobID"]) for r in rows if r["Status"] == "Submitting"]
        if submitting:  # confirm the bulk submission, as DIRAC's JobManager client does
            await self.client.set_status(
                {i: [{"Status": "Received", "MinorStatus": "Job accepted"}] for i in submitting}
            )
        for r in rows:
            self.jobs[r["JobName"]] = dict(r)
        log.info(
            "submitted %d DIRAC jobs %s in one parametric JDL", len(names), sorted(ids.values())
        )
        return ids

    async def kill(self, job_ids: Iterable[int]) -> list[dict[str, Any]]:
        """Kill the jobs still alive in DiracX; their rows as read back afterwards.

        Jobs that ended already are left alone: DiracX would refuse ``Killed`` but
        still overwrite their minor status (the reason they ended).
        """
        ids = sorted(set(job_ids) - self.killed)
        if not ids:
            return []
        alive: list[int] = []
        try:
            rows = await self.refresh(ids)  # logs the jobs that ended unasked
            alive = [int(r["JobID"]) for r in rows if r["Status"] not in FINAL_STATES]
            self.killed.update(ids)
            if alive:
                kill = {"Status": "Killed", "MinorStatus": "Marked for termination"}
                await self.client.set_status({i: [kill] for i in alive})
                rows = [r for r in rows if int(r["JobID"]) not in alive]
                rows += await self.refresh(alive)
        except DiracXError as err:
            log.error("killing DIRAC jobs %s failed, they may still run: %s", ids, err)
            return []
        for r in rows:  # DiracX ignores invalid transitions silently: check
            if int(r["JobID"]) in alive and r["Status"] != "Killed":
                log.warning(
                    "DIRAC job %s (worker %s) is still %s (%s), not Killed",
                    r["JobID"], r.get("JobName"), r["Status"], r.get("MinorStatus"),
                )  # fmt: skip
        return rows

    async def refresh(self, job_ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Re-read jobs from DiracX; log those that ended without being killed."""
        ids = (
            list(job_ids) if job_ids is not None else [int(r["JobID"]) for r in self.jobs.values()]
        )
        if not ids:
            return []
        rows = await self.client.search(
            ids, parameters=("JobID", "JobName", "Status", "MinorStatus", "ApplicationStatus")
        )
        for r in rows:
            old = self.jobs.get(r["JobName"], {})
            self.jobs[r["JobName"]] = dict(r)
            ended = r["Status"] in FINAL_STATES and old.get("Status") != r["Status"]
            if ended and int(r["JobID"]) not in self.killed:
                log.warning(
                    "DIRAC job %s (worker %s) ended: %s, %s (%s)",
                    r["JobID"], r["JobName"], r["Status"], r.get("MinorStatus"),
                    r.get("ApplicationStatus"),
                )  # fmt: skip
        return rows

    async def settle_kills(self, delay: float = 1.0, rounds: int = 3) -> list[int]:
        """Kill again the killed jobs a concurrent status update brought back; those still alive.

        Waits ``delay`` seconds (longer than one DiracX request takes) before each read,
        up to ``rounds`` times, and stops at the first read finding every killed job
        in a final state, or finding only jobs given up on (:data:`MAX_REKILLS`). The ids
        found alive by the last read are returned; those not given up on are logged.
        """
        alive: list[int] = []
        for _ in range(rounds):
            if not self.killed:
                return []
            await asyncio.sleep(delay)
            try:
                rows = await self.refresh(sorted(self.killed))
            except DiracXError as err:
                log.error("reading the killed DIRAC jobs back failed: %s", err)
                return []
            alive = await self._kill_revived(rows)
            if not alive:
                return []
            if all(self.rekilled[i] > MAX_REKILLS for i in alive):
                break  # all given up on (and logged): no use waiting for them
        if pending := [i for i in alive if self.rekilled[i] <= MAX_REKILLS]:
            log.error("DIRAC jobs %s may still be alive; %s", pending, _KILL_BY_HAND)
        return alive

    async def _kill_revived(self, rows: list[dict[str, Any]]) -> list[int]:
        """Kill again the jobs of ``rows`` this grid killed that are alive; the ids found alive.

        At most :data:`MAX_REKILLS` times a job: then the job is logged once, with what to
        do, and left (a server that refuses the kill must not be asked at every poll).
        """
        alive = [
            int(r["JobID"])
            for r in rows
            if int(r["JobID"]) in self.killed and r["Status"] not in FINAL_STATES
        ]
        revived = [i for i in alive if self.rekilled[i] < MAX_REKILLS]
        for i in alive:
            if self.rekilled[i] == MAX_REKILLS:
                self.rekilled[i] += 1  # logged once
                log.error(
                    "DIRAC job %s is still alive after %d kills; %s",
                    i,
                    MAX_REKILLS + 1,
                    _KILL_BY_HAND,
                )
        if revived:
            log.warning(
                "DIRAC jobs %s are %s after their kill (a status update DiracX applied over "
                "it): killing them again",
                revived, sorted({r["Status"] for r in rows if int(r["JobID"]) in revived}),
            )  # fmt: skip
            self.rekilled.update(revived)
            self.killed.difference_update(revived)
            await self.kill(revived)
        return alive

    def ended_unasked(self) -> list[dict[str, Any]]:
        """The rows of jobs that ended without being killed (failed, done, deleted)."""
        return [
            dict(r)
            for r in self.jobs.values()
            if r.get("Status") in FINAL_STATES and int(r["JobID"]) not in self.killed
        ]

    async def watch(self, interval: float) -> None:
        """Poll DiracX every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self._kill_revived(await self.refresh())
            except DiracXError as err:
                log.warning("polling DiracX: %s", err)
