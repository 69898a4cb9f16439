"""The ``dirac`` facility: Dask workers as DIRAC grid jobs, over the DiracX REST API.

:class:`DiracCluster` is a :class:`distributed.deploy.SpecCluster` whose workers
are DIRAC jobs. ``scale(n)`` submits the missing workers as **one parametric
JDL** per batch of at most ``max_jobs_per_submission`` (the server's limit, 20 in
DiracX 0.7.0) and confirms the bulk submission as DIRAC's own client does
(``Submitting`` → ``Received``). Each job is named after its worker (``%s`` is
the worker's name in ``JobName`` and ``--name``), so jobs and workers match by
name. Scale-down and ``close()`` set the jobs ``Killed`` **before** the workers
retire, then read the status back (DiracX ignores invalid transitions silently).
A background task polls the jobs and logs every job that ends unasked, with
DiracX's status and minor status; :meth:`DiracCluster.job_status` returns them,
and :meth:`DiracCluster.run_notes` words them for a run's summary. The DiracX
side (batching, kill read-back, polling) lives in :mod:`esap_dask.deploy.dirac.jobs`.

A job runs ``python -m distributed.cli.dask_worker``, inside apptainer or
singularity when the facility's ``runtimeengine`` says so, with ``CPUTime`` from
the walltime, a worker lifetime shorter than the walltime, and ``Site``,
``BannedSites``, ``Tags``, ``Platform`` from the options. The worker starts with
:data:`esap_dask.config.WORKER_ENVIRONMENT`: the JDL lists it in
``ExecutionEnvironment``, which DIRAC's JobWrapper sets for the executable, and a
container gets it with ``--env`` (:mod:`esap_dask.deploy.environment`). TLS uses a CA per
cluster (:mod:`esap_dask.deploy.tls`); the worker's certificate and key travel
in the job's **input sandbox** (DiracX's sandbox store, readable by the owner and
pilots only), never in the JDL.

Connectivity: ``scheduler_host`` (interface to listen on, e.g. ``0.0.0.0``),
``scheduler_port`` (a port or a firewall range ``"40000-40100"``),
``contact_address`` (what workers dial, e.g. ``public.example.org``; the port
is added when missing), ``worker_port`` (a range for workers and nannies). Behind
NAT: run the scheduler on a public gateway, or forward a public port to it
(``ssh -R 0.0.0.0:40000:localhost:40000 gateway`` with ``contact_address:
gateway`` and ``scheduler_port: 40000``), or put a TLS-passthrough proxy (HAProxy
``mode tcp``) in front; TLS stays end to end in all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import shlex
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from dask.utils import parse_bytes
from distributed import Scheduler
from distributed.deploy.spec import ProcessInterface, SpecCluster
from distributed.security import Security

from esap_dask.deploy.containers import container_python
from esap_dask.deploy.dirac.diracx_client import (
    DiracXClient,
    DiracXError,
    format_jdl,
    sandbox_archive,
)
from esap_dask.deploy.dirac.jobs import MAX_JOBS_PER_SUBMISSION, Grid
from esap_dask.deploy.environment import execution_environment
from esap_dask.deploy.facility import Facility, FacilityError
from esap_dask.deploy.protocol import WorkerJobsMixin
from esap_dask.deploy.tls import (
    grid_worker_security,
    new_cluster_security,
    remove_cluster_security,
)
from esap_dask.deploy.walltime import lifetime_arguments, parse_walltime, worker_lifetime

__all__ = ["DiracCluster", "DiracJob", "open_dirac"]

_SANDBOX_FILES = {"ca_file": "ca.pem", "cert": "worker.pem", "key": "worker-key.pem"}


def _listify(value: Any) -> list[str]:
    if value in (None, "", "ANY"):
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _port_range(spec: int | str | None) -> tuple[int, int] | None:
    if spec in (None, "", 0):
        return None
    lo, _, hi = str(spec).replace(":", "-").partition("-")
    return int(lo), int(hi or lo)


def _free_port(host: str, spec: int | str | None) -> int:
    """A free port on ``host`` within ``spec`` (``8786``, ``"40000-40100"``); 0 means any."""
    rng = _port_range(spec)
    if rng is None:
        return 0
    for port in range(rng[0], rng[1] + 1):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise FacilityError(f"no free port for the scheduler in {spec!r} on {host}")


def _contact(address: str | None, protocol: str, port: int) -> str | None:
    """``host`` or ``host:port`` or ``proto://host:port`` -> the scheduler's contact address."""
    if not address:
        return None
    if "://" not in address:
        address = protocol + address
    if address.count(":") < 2:  # no port: the one picked from scheduler_port
        if not port:
            raise FacilityError(
                f"contact_address {address!r} has no port: add one, or set scheduler_port "
                "(a port or a range such as 40000-40100)"
            )
        address = f"{address}:{port}"
    return address


class DiracJob(ProcessInterface):
    """One Dask worker as one DIRAC job (the :class:`ProcessInterface` of :class:`DiracCluster`)."""

    def __init__(self, scheduler: str, name: str, grid: Grid, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scheduler, self.name, self.grid = scheduler, name, grid
        self.job_id: int | None = None

    async def start(self) -> None:
        """Submit the job (batched with its siblings into one parametric JDL)."""
        self.job_id = await self.grid.submit(self.name, self.scheduler)
        await super().start()

    async def close(self) -> None:
        """Kill the job in DiracX (a no-op when the cluster killed it already)."""
        if self.job_id is not None:
            await self.grid.kill([self.job_id])
        await super().close()

    def __repr__(self) -> str:
        return f"<DiracJob {self.name!r} job_id={self.job_id} status={self.status.name}>"


class DiracCluster(SpecCluster, WorkerJobsMixin):
    """A Dask cluster whose workers are DIRAC grid jobs submitted through DiracX.

    Parameters
    ----------
    url, credentials_path
        The DiracX server and the credentials file (defaults: ``$DIRACX_URL``, the
        DiracX CLI's file).
    cores, memory, walltime, cpu_time, lifetime_margin
        Threads, memory limit and walltime of each worker job; ``CPUTime`` is
        ``walltime × cores`` seconds unless ``cpu_time`` is given; workers retire
        ``lifetime_margin`` before the walltime (default 10 %, 1–10 min).
    site, banned_sites, tags, platform
        DIRAC matching requirements (``Site``, ``BannedSites``, ``Tags``, ``Platform``).
    python
        The interpreter that runs ``distributed.cli.dask_worker`` on the grid node.
    runtimeengine, container
        ``apptainer``/``singularity`` and ``{image, python, binds, env, options}``.
    scheduler_host, scheduler_port, contact_address, worker_port
        Connectivity, see the module documentation.
    tls
        TLS with per-cluster credentials (default ``True``).
    job_group, name
        DIRAC ``JobGroup`` (default ``esap-dask-<name>``) and the prefix of worker names.
    max_jobs_per_submission, poll_interval
        Jobs per parametric JDL (capped at the server's 20) and seconds between polls.
    n_workers
        Workers to start at once.

    Examples
    --------
    >>> cluster = DiracCluster(site="LCG.CSCS.ch", walltime="02:00:00")  # doctest: +SKIP
    >>> cluster.scale(6)                                                 # doctest: +SKIP
    >>> cluster.job_status()["dirac-1a2b3c-0"]["Status"]                 # doctest: +SKIP
    'Running'
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        credentials_path: str | None = None,
        cores: int = 1,
        memory: str = "2GiB",
        walltime: str | float = "01:00:00",
        cpu_time: int | None = None,
        lifetime_margin: str | None = None,
        site: str | list[str] | None = None,
        banned_sites: list[str] | None = None,
        tags: list[str] | None = None,
        platform: str | None = None,
        python: str = sys.executable,
        runtimeengine: str = "none",
        container: dict[str, Any] | None = None,
        job_group: str | None = None,
        scheduler_host: str = "127.0.0.1",
        scheduler_port: int | str | None = None,
        contact_address: str | None = None,
        dashboard_address: str = "127.0.0.1:0",
        worker_port: str | None = None,
        tls: bool = True,
        max_jobs_per_submission: int = MAX_JOBS_PER_SUBMISSION,
        poll_interval: float = 5.0,
        n_workers: int = 0,
        name: str | None = None,
        asynchronous: bool = False,
        **kwargs: Any,
    ) -> None:
        self.tag = name or f"dirac-{uuid.uuid4().hex[:6]}"
        self.cores, self.memory = int(cores), parse_bytes(memory)
        self.walltime_s = parse_walltime(walltime)
        self.cpu_time = int(cpu_time or self.walltime_s * self.cores)
        self.lifetime = lifetime_arguments(*worker_lifetime(self.walltime_s, lifetime_margin))
        self.requirements = {
            "Site": _listify(site),
            "BannedSites": _listify(banned_sites),
            "Tags": _listify(tags),
            "Platform": _listify(platform),
        }
        self.job_group = job_group or f"esap-dask-{self.tag}"
        self.worker_port = worker_port
        self.max_jobs_per_submission = min(int(max_jobs_per_submission), MAX_JOBS_PER_SUBMISSION)
        self.poll_interval = float(poll_interval)
        self.command = self._command(python, runtimeengine, container or {})
        self.security = new_cluster_security() if tls else Security()
        self._url, self._credentials_path = url, credentials_path
        self._grid: Grid | None = None
        self._watch: asyncio.Task[None] | None = None
        port = _free_port(scheduler_host, scheduler_port)
        protocol = "tls://" if tls else "tcp://"
        scheduler = {
            "cls": Scheduler,
            "options": {
                "host": scheduler_host,
                "port": port,
                "protocol": protocol,
                "security": self.security,
                "dashboard_address": dashboard_address,
                "contact_address": _contact(contact_address, protocol, port),
            },
        }
        worker = {"cls": DiracJob, "options": {"grid": None}}
        super().__init__(
            scheduler=scheduler,
            worker=worker,
            security=self.security,
            asynchronous=asynchronous,
            name=self.tag,
            **kwargs,
        )
        if n_workers:
            self.scale(n_workers)

    @staticmethod
    def _command(python: str, engine: str, container: dict[str, Any]) -> list[str]:
        if engine in ("none", "", None):
            return [python]
        if engine not in ("apptainer", "singularity"):
            raise FacilityError(
                f"runtimeengine {engine!r} cannot run on grid nodes; use apptainer, "
                "singularity or none for a dirac facility"
            )
        opts = {k: v for k, v in container.items() if k in ("python", "binds", "env", "options")}
        return shlex.split(container_python(engine, image=container.get("image", ""), **opts))

    def _new_worker_name(self, worker_number: int) -> str:
        return f"{self.tag}-{worker_number}"

    def _sandbox(self) -> bytes:
        """The input sandbox: the worker's TLS files (``ca.pem``, ``worker[-key].pem``)."""
        cfg = grid_worker_security(self.security).get_tls_config_for_role("worker")
        files = {name: cfg[key] for key, name in _SANDBOX_FILES.items() if cfg.get(key)}
        return sandbox_archive(
            {n: (v if "\n" in v else Path(v).read_text()).encode() for n, v in files.items()}
        )

    def job_jdl(self, names: list[str], scheduler: str, sandbox: str | None) -> str:
        """The parametric JDL that starts the workers ``names`` (``%s`` is each name)."""
        exe, *pre = self.command
        args = [*pre, "-m", "distributed.cli.dask_worker", scheduler, "--name", "%s"]
        args += ["--nthreads", str(self.cores), "--memory-limit", str(self.memory)]
        args += ["--no-dashboard", *self.lifetime]
        rng = _port_range(self.worker_port)
        if rng:
            ports = f"{rng[0]}:{rng[1]}"  # dask's range syntax
            args += ["--worker-port", ports, "--nanny-port", ports]
        if sandbox:
            cfg = self.security.get_tls_config_for_role("worker")
            for key, arcname in _SANDBOX_FILES.items():
                if cfg.get(key):
                    args += ["--tls-" + key.replace("_", "-"), arcname]
        attrs: dict[str, Any] = {
            "JobName": "%s",
            "JobGroup": self.job_group,
            "Executable": exe,
            "Arguments": shlex.join(args),
            "ExecutionEnvironment": execution_environment(),
            "Parameters": names,
            "CPUTime": self.cpu_time,
            "NumberOfProcessors": self.cores,
            "StdOutput": "std.out",
            "StdError": "std.err",
            "OutputSandbox": ["std.out", "std.err"],
        }
        if sandbox:
            attrs["InputSandbox"] = [sandbox]
        for key, values in self.requirements.items():
            if values:
                attrs[key] = values[0] if len(values) == 1 and key != "Tags" else values
        return format_jdl(attrs)

    async def _start(self) -> None:
        try:
            client = DiracXClient(self._url, credentials_path=self._credentials_path)
        except DiracXError:
            remove_cluster_security(self.security)
            raise
        self._grid = Grid(client, self)
        self.new_spec["options"]["grid"] = self._grid
        for spec in self.worker_spec.values():
            spec.setdefault("options", {})["grid"] = self._grid
        try:
            await client.access_token()  # fail early, with the login hint
            if self.security.require_encryption:
                self._grid.sandbox_pfn = await client.upload_sandbox(self._sandbox())
        except Exception:
            await client.aclose()
            remove_cluster_security(self.security)
            raise
        self._watch = asyncio.get_running_loop().create_task(self._grid.watch(self.poll_interval))
        await super()._start()

    async def _correct_state_internal(self) -> None:
        # Kill in DiracX first: retiring first would let the workers exit and their
        # jobs end as Done, and DiracX ignores Done -> Killed.
        gone = [w for n, w in self.workers.items() if n not in self.worker_spec]
        ids = [w.job_id for w in gone if isinstance(w, DiracJob) and w.job_id is not None]
        if ids and self._grid is not None:
            await self._grid.kill(ids)
        await super()._correct_state_internal()

    async def _close(self) -> None:
        await super()._close()
        if self._watch is not None:
            self._watch.cancel()
        if self._grid is not None:
            try:
                await self._grid.settle_kills()
            finally:
                await self._grid.client.aclose()
        remove_cluster_security(self.security)

    def job_status(self) -> dict[str, dict[str, Any]]:
        """The last known DiracX row (``JobID``, ``Status``, ``MinorStatus``, ...) per worker."""
        return {} if self._grid is None else {k: dict(v) for k, v in self._grid.jobs.items()}

    def run_notes(self) -> list[str]:
        """One line per job that ended without being killed, with DiracX's status and reason.

        :func:`esap_dask.map_observations` adds these to its summary's notes, so
        a worker lost to the grid is reported with what the site said.
        """
        if self._grid is None:
            return []
        if not self.asynchronous:
            with contextlib.suppress(Exception):
                self.sync(self._grid.refresh)
        return [
            f"DIRAC job {r['JobID']} (worker {r['JobName']}) ended: {r['Status']}, "
            f"{r.get('MinorStatus')} ({r.get('ApplicationStatus')})"
            for r in sorted(self._grid.ended_unasked(), key=lambda r: int(r["JobID"]))
        ]

    def refresh_job_status(self) -> dict[str, dict[str, Any]]:
        """Re-read every job from DiracX now, then :meth:`job_status`."""
        if self._grid is not None:
            self.sync(self._grid.refresh)
        return self.job_status()


_CLUSTER_KEYS = frozenset(inspect.signature(DiracCluster.__init__).parameters) - {"self", "kwargs"}


def open_dirac(facility: Facility, options: dict[str, Any]) -> DiracCluster:
    """Start a :class:`DiracCluster` from a ``dirac`` facility and its merged options.

    Raises
    ------
    FacilityError
        For an option :class:`DiracCluster` does not know, naming the known ones.
    """
    opts = dict(options)
    unknown = sorted(set(opts) - _CLUSTER_KEYS)
    if unknown:
        raise FacilityError(
            f"facility {facility.name!r}: unknown dirac option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_CLUSTER_KEYS - {'runtimeengine'}))}"
        )
    opts.setdefault("runtimeengine", facility.runtimeengine)
    opts.setdefault("name", f"{facility.name}-{uuid.uuid4().hex[:6]}")
    return DiracCluster(**opts)
