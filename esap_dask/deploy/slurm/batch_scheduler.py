"""The Dask scheduler as a SLURM batch job, found through its scheduler file.

For sites whose login nodes kill long-running processes (dask-jobqueue #186):
``scheduler_in_job: true`` in a SLURM facility makes the cluster submit the
scheduler as a job of its own. The scheduler writes its address to a scheduler
file in the cluster's private log directory; the cluster manager, the workers
and any other client (``Client(scheduler_file=..., security=...)``) connect to
it there. Closing the cluster cancels the scheduler's job.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from distributed.deploy.spec import ProcessInterface
from distributed.security import Security

from esap_dask.deploy.slurm.jobqueue_import import SLURMJob
from esap_dask.deploy.slurm.jobstate import WorkerJobError, query_slurm, stderr_tail

__all__ = ["BatchScheduler"]


class BatchScheduler(ProcessInterface):
    """A ``SpecCluster`` scheduler that runs as one SLURM job.

    Parameters
    ----------
    scheduler_file
        Where the scheduler writes its address (on a file system the client shares).
    job_name
        SLURM job name of the scheduler job.
    queue, walltime, memory, cores
        The scheduler job's partition, time limit, memory and CPUs.
    security
        The cluster's Security; the scheduler presents its scheduler certificate.
    protocol, dashboard_address, host, port, interface
        As for ``dask scheduler``; the dashboard listens on loopback and the
        scheduler on a free port by default.
    python
        The Python that runs ``distributed.cli.dask_scheduler`` in the job.
    start_timeout
        Seconds to wait for the scheduler file before giving up.
    """

    def __init__(
        self,
        *,
        scheduler_file: str | Path,
        job_name: str = "esap-scheduler",
        queue: str | None = None,
        walltime: str | None = None,
        memory: str = "2G",
        cores: int = 1,
        security: Security | None = None,
        protocol: str | None = None,
        dashboard_address: str | None = "127.0.0.1:0",
        host: str | None = None,
        port: int = 0,
        interface: str | None = None,
        python: str = sys.executable,
        start_timeout: float = 300,
        **ignored: Any,
    ) -> None:
        super().__init__()
        self.scheduler_file = Path(scheduler_file)
        self.job_name = job_name
        self.job_id: str | None = None
        self.start_timeout = start_timeout
        logs = self.scheduler_file.parent
        header = [f"-J {job_name}", "-n 1", f"--cpus-per-task={cores}", f"--mem={memory}"]
        header += [f"-p {queue}"] if queue else []
        header += [f"-t {walltime}"] if walltime else []
        header += [f"-o {logs}/%x-%j.out", f"-e {logs}/%x-%j.err"]
        command = [python, "-m", "distributed.cli.dask_scheduler"]
        command += ["--scheduler-file", str(self.scheduler_file)]
        if protocol:
            command += ["--protocol", protocol]
        command += ["--port", str(port)]
        command += ["--dashboard-address", dashboard_address or ":0"]
        if host:
            command += ["--host", host]
        if interface:
            command += ["--interface", interface]
        if security is not None:
            for key, value in security.get_tls_config_for_role("scheduler").items():
                if key in ("ca_file", "cert", "key") and value:
                    command += ["--tls-" + key.replace("_", "-"), value]
        lines = ["#!/usr/bin/env bash", *(f"#SBATCH {h}" for h in header)]
        self._script = "\n".join([*lines, "", "exec " + shlex.join(command), ""])

    def job_script(self) -> str:
        """The batch script that runs the scheduler."""
        return self._script

    async def start(self) -> None:
        """Submit the scheduler job and wait until it has written its address."""
        self.scheduler_file.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
            f.write(self._script)
        try:
            out = await SLURMJob._call(["sbatch", "--parsable", f.name])
        except RuntimeError as err:
            raise WorkerJobError(f"sbatch refused the scheduler job: {err}") from err
        finally:
            Path(f.name).unlink()
        self.job_id = out.strip().split(";")[0]
        deadline = time.monotonic() + self.start_timeout
        while not self._read_address():
            if time.monotonic() > deadline:
                raise WorkerJobError(
                    f"the scheduler job {self.job_id} wrote no {self.scheduler_file} within "
                    f"{self.start_timeout:.0f} s; see `squeue -j {self.job_id}`"
                )
            state = (await query_slurm(self.job_name)).get(self.job_id)
            if state is not None and (not state.active or state.never_starts):
                stderr = self.scheduler_file.parent / f"{self.job_name}-{self.job_id}.err"
                tail = stderr_tail(stderr)
                raise WorkerJobError(
                    f"the scheduler job {state.describe()} before it started.\n{tail}"
                )
            await asyncio.sleep(0.5)
        await super().start()

    def _read_address(self) -> bool:
        try:
            info = json.loads(self.scheduler_file.read_text())
        except (OSError, ValueError):
            return False
        self.address = info.get("address")
        return bool(self.address)

    async def close(self) -> None:
        """Cancel the scheduler's job."""
        if self.job_id:
            with suppress(RuntimeError):  # already gone
                await SLURMJob._call(["scancel", self.job_id])
        self.scheduler_file.unlink(missing_ok=True)
        await super().close()
