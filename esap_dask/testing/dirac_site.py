"""A local stand-in for a DIRAC grid site and its pilot, for tests and demos.

This process plays what, on the grid, the WMS optimizers, the Matcher and a pilot
on a worker node do together: it takes the jobs waiting in DiracX, reads their
JDL, runs ``Executable`` + ``Arguments`` as local processes (in a fresh working
directory holding the job's input sandbox, with the JDL's ``ExecutionEnvironment``
set as DIRAC's JobWrapper sets it), and reports the job's life through
the DiracX REST API: ``Checking`` → ``Waiting`` → ``Matched`` → ``Running`` →
``Done`` or ``Failed`` (minor status ``Application Finished With Errors`` and
the exit code as application status, like DIRAC's JobWrapper). It heartbeats
every running job (``PATCH /api/jobs/heartbeat``) and obeys the ``Kill``
commands DiracX returns, which is how a ``Killed`` status reaches a running
grid job.

It authenticates as a pilot (a token of a group with the ``GenericPilot`` and
``JobAdministrator`` properties; ``scripts/diracx.sh`` mints one).

What the REST API of DiracX 0.7.0 lacks, and what this site does instead:

- **no matcher endpoint** (a pilot asks the legacy DIRAC Matcher service, over
  DISET, for a job): the site selects jobs itself with ``POST /api/jobs/search``
  (status ``Received``/``Checking``/``Waiting``, not yet confirmed ``Submitting``
  jobs excluded), matches ``Site``, ``BannedSites``, ``Tags`` and ``Platform``
  against its own description, and moves them through the documented status
  endpoint ``PATCH /api/jobs/status``, which applies DIRAC's job state machine.
- **no endpoint returning a job's JDL**: the site reads the JDL the server
  stored, read-only, from the ``JobJDLs`` table of the server's SQLite JobDB
  (the file is given with ``--jobdb``). This is the one step that does not go
  through the REST API, and the reason the site must run next to the server.

Run it with ``python -m esap_dask.testing.dirac_site --jobdb .diracx/db/JobDB.db``
and ``DIRACX_URL`` / ``DIRACX_CREDENTIALS_PATH`` set; ``scripts/diracx.sh start``
does so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import sqlite3
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from esap_dask.deploy.dirac.diracx_client import DiracXClient, DiracXError

__all__ = ["LocalSite", "job_environment", "main", "parse_jdl", "read_jdls"]

log = logging.getLogger("esap_dask.dirac_site")

_ATTR = re.compile(r'\s*(\w+)\s*=\s*(\{.*?\}|\[.*?\]|"(?:[^"\\]|\\.)*"|[^;]*)\s*;', re.S)
#: The states a job passes through before a pilot gets it, in order.
_PRE_MATCH = ("Received", "Checking", "Waiting")


def parse_jdl(text: str) -> dict[str, Any]:
    """The top-level attributes of a JDL (ClassAd): strings, numbers and lists of strings.

    Nested ClassAds (``JobRequirements = [ ... ];``) are kept as their raw text.

    Examples
    --------
    >>> parse_jdl('[ Executable = "echo"; Tags = {"a", "b"}; CPUTime = 60; ]')
    {'Executable': 'echo', 'Tags': ['a', 'b'], 'CPUTime': 60}
    """
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    out: dict[str, Any] = {}
    for name, raw in _ATTR.findall(body):
        raw = raw.strip()
        if raw.startswith("{"):
            out[name] = re.findall(r'"((?:[^"\\]|\\.)*)"', raw)
        elif raw.startswith('"'):
            out[name] = raw[1:-1].replace('\\"', '"')
        elif re.fullmatch(r"-?\d+", raw):
            out[name] = int(raw)
        else:
            out[name] = raw
    return out


def read_jdls(jobdb: Path, job_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The parsed JDLs of ``job_ids`` from a DiracX SQLite JobDB (opened read-only)."""
    with sqlite3.connect(f"file:{jobdb}?mode=ro", uri=True, timeout=10) as db:
        marks = ",".join("?" * len(job_ids))
        rows = db.execute(f"SELECT JobID, JDL FROM JobJDLs WHERE JobID IN ({marks})", job_ids)
        return {
            int(i): parse_jdl(zlib.decompress(base64.b64decode(jdl)).decode())
            for i, jdl in rows
            if jdl
        }


def _as_list(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    return list(value) if isinstance(value, list) else [str(value)]


def job_environment(jdl: dict[str, Any]) -> dict[str, str]:
    """The variables of a JDL's ``ExecutionEnvironment``, as DIRAC's JobWrapper sets them.

    Each item is ``NAME=value`` with the value URL-quoted (DIRAC's ``Job.setExecutionEnv``).

    Examples
    --------
    >>> job_environment({"ExecutionEnvironment": ["A=1", "B=x%20y"]})
    {'A': '1', 'B': 'x y'}
    """
    pairs = (item.partition("=") for item in _as_list(jdl.get("ExecutionEnvironment")))
    return {name: unquote(value) for name, _, value in pairs if name}


@dataclass
class _Running:
    job_id: int
    proc: asyncio.subprocess.Process
    started: float
    limit: float | None
    sandbox: list[Path] = field(default_factory=list)
    waiter: asyncio.Task[None] | None = None
    killed: bool = False
    reason: str = ""


@dataclass
class LocalSite:
    """A site with ``slots`` job slots that pulls and runs DiracX jobs.

    Parameters
    ----------
    client
        A :class:`DiracXClient` holding pilot credentials.
    jobdb
        The server's SQLite JobDB file (read-only: for the JDLs, see the module doc).
    workdir
        Where each job gets its working directory ``job_<id>``.
    name
        The DIRAC site name jobs may ask for with ``Site``.
    tags, platform
        What the site offers: jobs needing other ``Tags`` or ``Platform`` are left waiting.
    """

    client: DiracXClient
    jobdb: Path
    workdir: Path
    name: str = "LCG.Local.esap"
    slots: int = 16
    tags: frozenset[str] = frozenset()
    platform: str = "ANY"
    poll: float = 1.0
    heartbeat_every: float = 2.0
    running: dict[int, _Running] = field(default_factory=dict)

    def matches(self, jdl: dict[str, Any]) -> bool:
        """Whether this site may run a job with this JDL (Site, BannedSites, Tags, Platform)."""
        sites = _as_list(jdl.get("Site"))
        if sites and "ANY" not in sites and self.name not in sites:
            return False
        if self.name in _as_list(jdl.get("BannedSites")):
            return False
        if not set(_as_list(jdl.get("Tags"))) <= self.tags:
            return False
        platforms = _as_list(jdl.get("Platform"))
        return not platforms or "ANY" in platforms or self.platform in (*platforms, "ANY")

    async def take_jobs(self) -> None:
        """Match waiting jobs to free slots and start them."""
        free = self.slots - len(self.running)
        if free <= 0:
            return
        waiting = await self.client.search(
            parameters=("JobID", "Status"),
            conditions=[{"parameter": "Status", "operator": "in", "values": list(_PRE_MATCH)}],
        )
        if not waiting:
            return
        status = {int(j["JobID"]): j["Status"] for j in waiting}
        jdls = read_jdls(self.jobdb, sorted(status))
        take: list[int] = []
        park: dict[int, list[dict[str, str]]] = {}
        for job_id in sorted(jdls):
            if self.matches(jdls[job_id]) and len(take) < free:
                take.append(job_id)
            elif status[job_id] != "Waiting":
                park[job_id] = self._steps(status[job_id], "Waiting")
        if park:
            await self.client.set_status(park, source="LocalSite")
        if not take:
            return
        steps = {
            j: [*self._steps(status[j], "Waiting"), _step("Matched", "Assigned")] for j in take
        }
        reply = await self.client.set_status(steps, source="Matcher")
        for job_id in take:
            if (reply.get("success", {}).get(str(job_id)) or {}).get("Status") == "Matched":
                await self.start(job_id, jdls[job_id])

    @staticmethod
    def _steps(current: str, target: str) -> list[dict[str, str]]:
        minors = {"Checking": "JobSanity", "Waiting": "Pilot Agent Submission"}
        order = [*_PRE_MATCH]
        return [
            _step(s, minors[s]) for s in order[order.index(current) + 1 : order.index(target) + 1]
        ]

    async def start(self, job_id: int, jdl: dict[str, Any]) -> None:
        """Prepare the job's directory and sandbox, then start its executable."""
        cwd = self.workdir / f"job_{job_id}"
        cwd.mkdir(parents=True, exist_ok=True)
        await self.client.set_status(
            {job_id: [_step("Running", "Job Initialization")]}, source="JobWrapper"
        )
        sandbox: list[Path] = []
        try:
            for pfn in _as_list(jdl.get("InputSandbox")):
                if pfn.startswith("SB:"):
                    data = await self.client.download_sandbox(pfn)
                    with tarfile.open(fileobj=BytesIO(data)) as tar:
                        tar.extractall(cwd, filter="data")
                        sandbox += [cwd / m.name for m in tar.getmembers() if m.isfile()]
        except (DiracXError, tarfile.TarError) as err:
            await self._final(job_id, "Failed", "Input Sandbox Download", str(err)[:200])
            return
        exe = str(jdl.get("Executable", ""))
        path = cwd / exe if exe and (cwd / exe).is_file() else None
        if path is not None:
            path.chmod(path.stat().st_mode | 0o100)
        found = str(path) if path else shutil.which(exe)
        if not found:
            await self._final(job_id, "Failed", "Application not found", f"{exe!r} not found")
            return
        argv = [found, *shlex.split(str(jdl.get("Arguments", "")))]
        stdout = open(cwd / str(jdl.get("StdOutput", "std.out")), "ab")  # noqa: SIM115
        stderr = open(cwd / str(jdl.get("StdError", "std.err")), "ab")  # noqa: SIM115
        env = {**os.environ, "DIRACJOBID": str(job_id), "DIRACSITE": self.name}
        env.update(job_environment(jdl))
        env.pop("DIRACX_CREDENTIALS_PATH", None)  # the pilot's token is not the job's
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdout=stdout, stderr=stderr, env=env, start_new_session=True
        )
        stdout.close()
        stderr.close()
        cpu = jdl.get("CPUTime")
        limit = float(cpu) / max(1, int(jdl.get("NumberOfProcessors", 1))) if cpu else None
        self.running[job_id] = _Running(job_id, proc, time.monotonic(), limit, sandbox)
        await self.client.set_status(
            {job_id: [_step("Running", "Application")]}, source="JobWrapper"
        )
        log.info("job %s running: %s (pid %s)", job_id, shlex.join(argv), proc.pid)
        self.running[job_id].waiter = asyncio.get_running_loop().create_task(self._wait(job_id))

    async def _wait(self, job_id: int) -> None:
        job = self.running[job_id]
        code = await job.proc.wait()
        self.running.pop(job_id, None)
        for path in job.sandbox:  # like a pilot cleaning up: no credentials left behind
            path.unlink(missing_ok=True)
        if job.killed and not job.reason:
            log.info("job %s killed on DiracX's command", job_id)
            await self._keep_killed(job_id)
        elif job.reason:
            await self._final(job_id, "Failed", job.reason, f"exit code {code}")
        elif code == 0:
            await self._final(job_id, "Done", "Execution Complete", "exit code 0")
        else:
            await self._final(
                job_id, "Failed", "Application Finished With Errors", f"exit code {code}"
            )

    async def _keep_killed(self, job_id: int) -> None:
        """Put ``Killed`` back when this site's own ``Running`` landed after the kill.

        A kill that arrives while :meth:`start` reports ``Running`` can be followed by
        that report (DiracX 0.7 records Killed -> Running from the JobWrapper): the job
        would read Running for ever after its process was gone.
        """
        try:
            rows = await self.client.search([job_id], parameters=("JobID", "Status"))
            if rows and rows[0].get("Status") != "Killed":
                log.info("job %s read %s after its kill: Killed again", job_id, rows[0]["Status"])
                kill = {"Status": "Killed", "MinorStatus": "Marked for termination"}
                await self.client.set_status({job_id: [kill]}, source="JobWrapper")
        except DiracXError as err:
            log.warning("re-reading killed job %s: %s", job_id, err)

    async def _final(self, job_id: int, status: str, minor: str, app: str) -> None:
        log.info("job %s: %s (%s; %s)", job_id, status, minor, app)
        step = {"Status": status, "MinorStatus": minor, "ApplicationStatus": app}
        try:
            await self.client.set_status({job_id: [step]}, source="JobWrapper")
        except DiracXError as err:
            log.warning("reporting job %s as %s: %s", job_id, status, err)

    async def heartbeat(self) -> None:
        """Heartbeat the running jobs; kill those DiracX says to, or that ran out of time."""
        if not self.running:
            return
        now = time.monotonic()
        beats = {j: {"WallClockTime": round(now - r.started, 1)} for j, r in self.running.items()}
        for cmd in await self.client.heartbeat(beats):
            if cmd.get("command") == "Kill" and cmd["job_id"] in self.running:
                self._terminate(self.running[cmd["job_id"]], "")
        for job in list(self.running.values()):
            if job.limit and now - job.started > job.limit and not job.killed:
                self._terminate(job, "Job has reached the CPU limit of the queue")

    @staticmethod
    def _terminate(job: _Running, reason: str) -> None:
        job.killed, job.reason = True, reason
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.proc.pid, signal.SIGTERM)

        async def _hard() -> None:
            await asyncio.sleep(10)
            if job.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.proc.pid, signal.SIGKILL)

        asyncio.get_running_loop().create_task(_hard())

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT: match, run, heartbeat; then stop the running jobs."""
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        last_beat = 0.0
        while not stop.is_set():
            try:
                await self.take_jobs()
                if time.monotonic() - last_beat > self.heartbeat_every:
                    await self.heartbeat()
                    last_beat = time.monotonic()
            except DiracXError as err:
                log.warning("%s", err)
            except sqlite3.Error as err:
                log.warning("reading the JobDB %s: %s", self.jobdb, err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every running job and report it as DIRAC does when a pilot dies."""
        jobs = list(self.running.values())
        for job in jobs:
            self._terminate(job, "Job stalled: pilot not running")
        await asyncio.gather(*(j.waiter for j in jobs if j.waiter), return_exceptions=True)


def _step(status: str, minor: str) -> dict[str, str]:
    return {"Status": status, "MinorStatus": minor}


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m esap_dask.testing.dirac_site --jobdb PATH``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobdb", type=Path, required=True, help="the server's SQLite JobDB file")
    p.add_argument("--workdir", type=Path, default=Path("dirac-site"), help="job directories")
    p.add_argument("--site", default="LCG.Local.esap", help="the DIRAC site name")
    p.add_argument("--slots", type=int, default=16, help="jobs run at once")
    p.add_argument("--tags", default="", help="comma-separated tags the site offers")
    p.add_argument("--platform", default="ANY", help="the platform the site offers")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    site = LocalSite(
        client=DiracXClient(),
        jobdb=args.jobdb,
        workdir=args.workdir.resolve(),
        name=args.site,
        slots=args.slots,
        tags=frozenset(t for t in args.tags.split(",") if t),
        platform=args.platform,
    )
    log.info("site %s serving %s with %d slots", site.name, site.client.url, site.slots)
    asyncio.run(site.run())


if __name__ == "__main__":
    main()
