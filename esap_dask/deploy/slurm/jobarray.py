"""Batched submission and cancellation of SLURM job-array tasks.

One :class:`JobArray` per cluster collects the worker starts (and stops) that
one reconciliation of a ``SpecCluster`` makes and turns them into a single
``sbatch --array=<indices>[%cap]`` (and a single ``scancel <array>_<index> ...``).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from contextlib import suppress
from pathlib import Path

from esap_dask.deploy.slurm.jobqueue_import import SLURMJob
from esap_dask.deploy.slurm.jobstate import WorkerJobError

__all__ = ["JobArray", "index_ranges"]

logger = logging.getLogger(__name__)


def index_ranges(indices: list[int]) -> str:
    """SLURM's ``--array`` notation for a set of indices: ``[0,1,2,5,7,8]`` -> ``"0-2,5,7-8"``."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


class JobArray:
    """Gathers the starts and stops of one reconciliation into one ``sbatch``/``scancel`` call.

    Parameters
    ----------
    job_name
        The SLURM job name (``-J``) of every array; also the worker-name prefix.
    log_directory
        Where SLURM writes each task's ``<job name>-<array>_<index>.out/.err``.
    cap
        At most this many tasks of one array run at once (``--array=...%cap``).
    """

    def __init__(self, job_name: str, log_directory: Path, cap: int | None = None) -> None:
        self.job_name = job_name
        self.log_directory = log_directory
        self.cap = cap
        #: Number of sbatch and scancel calls made, and array tasks submitted.
        self.submissions = 0
        self.cancellations = 0
        self.tasks_submitted = 0
        #: The error of the first ``sbatch`` that failed, if any.
        self.error: WorkerJobError | None = None
        self._to_submit: dict[int, tuple[SLURMJob, asyncio.Future[str]]] = {}
        self._to_cancel: dict[str, asyncio.Future[None]] = {}
        self._submitting: asyncio.Future[None] | None = None
        self._cancelling: asyncio.Future[None] | None = None

    def stderr_path(self, job_id: str) -> Path:
        """The stderr file of array task ``job_id`` (``"<array>_<index>"``)."""
        return self.log_directory / f"{self.job_name}-{job_id}.err"

    async def submit(self, job: SLURMJob, index: int) -> str:
        """Queue ``job`` as task ``index`` of the next ``sbatch --array``; its ``<array>_<index>``.

        Every job of one array shares its script: the first one queued writes it.
        """
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._to_submit[index] = (job, fut)
        if self._submitting is None:
            self._submitting = asyncio.ensure_future(self._flush_submit())
        return await fut

    async def _flush_submit(self) -> None:
        await asyncio.sleep(0.01)  # the other starts of this reconciliation queue up meanwhile
        batch, self._to_submit, self._submitting = self._to_submit, {}, None
        jobs = [job for job, _ in batch.values()]
        spec = index_ranges(list(batch)) + (f"%{self.cap}" if self.cap else "")
        first = jobs[0]
        try:
            with first.job_file() as script:
                cmd = [*shlex.split(first.submit_command), f"--array={spec}", script]
                self.submissions += 1
                out = await first._call(cmd)
            array_id = first._job_id_from_submit_output(out)
        except (RuntimeError, ValueError, OSError) as err:
            said = _slurm_message(str(err))
            if "contact slurm controller" in said or isinstance(err, FileNotFoundError):
                todo = "Is SLURM running here? (`sinfo`; locally: bash scripts/slurm.sh start)"
            else:
                todo = (
                    "Fix the facility's queue, cores, memory or walltime options "
                    "(see `sinfo` for what the partitions offer)."
                )
            error = WorkerJobError(
                f"sbatch refused the array of {len(batch)} worker job(s) ({spec}): {said}. {todo}"
            )
            self.error = self.error or error
            for _, fut in batch.values():
                if not fut.done():
                    fut.set_exception(error)
            return
        self.tasks_submitted += len(batch)
        logger.info("submitted %d worker(s) as SLURM array %s [%s]", len(batch), array_id, spec)
        for index, (_, fut) in batch.items():
            if not fut.done():
                fut.set_result(f"{array_id}_{index}")

    async def cancel(self, job_id: str) -> None:
        """Queue ``job_id`` for the next batched ``scancel``; errors for gone jobs are ignored."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_cancel[job_id] = fut
        if self._cancelling is None:
            self._cancelling = asyncio.ensure_future(self._flush_cancel())
        await fut

    async def _flush_cancel(self) -> None:
        await asyncio.sleep(0.01)
        batch, self._to_cancel, self._cancelling = self._to_cancel, {}, None
        self.cancellations += 1
        with suppress(RuntimeError):  # some tasks already ended: scancel says so and exits 1
            await SLURMJob._call([*shlex.split(SLURMJob.cancel_command), *sorted(batch)])
        logger.info("cancelled SLURM array task(s) %s", " ".join(sorted(batch)))
        for fut in batch.values():
            if not fut.done():
                fut.set_result(None)


def _slurm_message(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error:" in ln]
    return "; ".join(lines) or text.strip()
