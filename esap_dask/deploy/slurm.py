"""SLURM workers as job arrays, with batch-job state tracking, on top of dask-jobqueue.

:class:`SLURMArrayCluster` is a dask-jobqueue ``JobQueueCluster`` (so a
``distributed.deploy.SpecCluster``) whose workers are the tasks of SLURM job
arrays:

- Worker names are ``<job name>-<array index>``; the job script that
  dask-jobqueue generates starts ``dask worker --name <job name>-${SLURM_ARRAY_TASK_ID}``,
  so the scheduler's worker names match the array tasks one to one.
- All workers that one reconciliation of the SpecCluster starts are submitted by a
  single ``sbatch --array=<indices>[%cap]``; all that it stops are cancelled by a
  single ``scancel <array>_<index> ...``. ``scale(8)`` is one submission,
  ``scale(2)`` cancels exactly the six surplus tasks, and ``adapt()`` works on names.
- A watcher polls ``squeue`` every ``poll_interval`` and keeps each job's real
  state (:attr:`SLURMArrayCluster.job_states`). A job that will never start, or
  that ends before its worker connected, stops the cluster from submitting more
  and is raised by :meth:`~SLURMArrayCluster.wait_for_workers` and ``scale`` as a
  :class:`~esap_dask.deploy.jobstate.WorkerJobError` carrying SLURM's reason and
  the job's stderr tail. A job that ends after its worker connected (its
  ``--lifetime`` expired, walltime, node failure, a ``scancel`` from outside) is
  replaced by a new array task under a new name.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from dask.utils import parse_timedelta
from dask_jobqueue import SLURMCluster
from dask_jobqueue.slurm import SLURMJob
from distributed.core import Status
from distributed.deploy.spec import ProcessInterface

from esap_dask.deploy.jobstate import JobState, WorkerJobError, query_slurm, stderr_tail

__all__ = ["JobArray", "SLURMArrayCluster", "SLURMArrayJob", "index_ranges"]

logger = logging.getLogger(__name__)

TASK_ID = "${SLURM_ARRAY_TASK_ID}"


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
        self._to_submit: dict[int, tuple[SLURMArrayJob, asyncio.Future[str]]] = {}
        self._to_cancel: dict[str, asyncio.Future[None]] = {}
        self._submitting: asyncio.Future[None] | None = None
        self._cancelling: asyncio.Future[None] | None = None

    def stderr_path(self, job_id: str) -> Path:
        """The stderr file of array task ``job_id`` (``"<array>_<index>"``)."""
        return self.log_directory / f"{self.job_name}-{job_id}.err"

    async def submit(self, job: SLURMArrayJob) -> str:
        """Queue ``job`` for the next ``sbatch --array`` and return its ``<array>_<index>`` id."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._to_submit[job.array_index] = (job, fut)
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
        except (RuntimeError, ValueError) as err:
            error = WorkerJobError(
                f"sbatch refused the array of {len(batch)} worker job(s) ({spec}): "
                f"{_slurm_message(str(err))}. Fix the facility's queue, cores, memory or "
                f"walltime options (see `sinfo` for what the partitions offer)."
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
            await SLURMJob._call([*shlex.split(SLURMArrayJob.cancel_command), *sorted(batch)])
        logger.info("cancelled SLURM array task(s) %s", " ".join(sorted(batch)))
        for fut in batch.values():
            if not fut.done():
                fut.set_result(None)


def _slurm_message(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error:" in ln]
    return "; ".join(lines) or text.strip()


class SLURMArrayJob(SLURMJob):
    """One worker = one task of a SLURM job array (dask-jobqueue's ``SLURMJob`` script, unchanged).

    Parameters
    ----------
    array
        The cluster's :class:`JobArray`, which batches submissions and cancellations.
    array_index
        This worker's index in its array; ``None`` only for dask-jobqueue's dummy job.
    **kwargs
        Everything ``dask_jobqueue.SLURMJob`` takes.
    """

    def __init__(
        self,
        scheduler: str | None = None,
        name: str | None = None,
        *,
        array: JobArray,
        array_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scheduler=scheduler, name=f"{array.job_name}-{TASK_ID}", **kwargs)
        self.name = name
        self.array = array
        self.array_index = -1 if array_index is None else array_index
        #: The last state squeue reported for this job.
        self.state: JobState | None = None

    async def start(self) -> None:
        """Submit with the other workers of this reconciliation, as one array."""
        self.job_id = await self.array.submit(self)
        await ProcessInterface.start(self)

    async def close(self) -> None:
        """Cancel this array task (batched), unless SLURM already reports it ended."""
        if self.job_id and (self.state is None or self.state.active):
            await self.array.cancel(self.job_id)
        await ProcessInterface.close(self)


class SLURMArrayCluster(SLURMCluster):
    """A dask-jobqueue SLURMCluster whose workers are job-array tasks, with job-state tracking.

    Parameters
    ----------
    array_cap
        At most this many tasks of one array run at once (``--array=...%cap``).
    poll_interval
        How often squeue is asked for the state of the cluster's jobs.
    log_directory
        Where each task's stdout/stderr go (a per-cluster subdirectory is made);
        default ``~/.esap-dask/logs``.
    max_array_size
        SLURM's ``MaxArraySize``: array indices are taken modulo this.
    **kwargs
        Everything ``dask_jobqueue.SLURMCluster`` takes (cores, memory, queue, walltime,
        worker_extra_args, job_extra_directives, security, scheduler_options, ...).

    Examples
    --------
    >>> cluster = SLURMArrayCluster(cores=1, memory="1GiB", queue="debug")  # doctest: +SKIP
    >>> cluster.scale(8)                    # one sbatch --array=0-7         # doctest: +SKIP
    >>> cluster.wait_for_workers(8)                                          # doctest: +SKIP
    >>> cluster.job_states                  # {'esap-1a2b-0': JobState(...)} # doctest: +SKIP
    """

    job_cls = SLURMArrayJob

    def __init__(
        self,
        *,
        array_cap: int | None = None,
        poll_interval: str | float = "2s",
        log_directory: str | Path | None = None,
        max_array_size: int = 1001,
        job_name: str | None = None,
        job_extra_directives: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        job_name = job_name or f"esap-{uuid.uuid4().hex[:8]}"
        logs = Path(log_directory or "~/.esap-dask/logs").expanduser() / job_name
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.array = JobArray(job_name, logs, array_cap)
        self._poll_interval = parse_timedelta(poll_interval)
        self._max_array_size = max_array_size
        self._next_index = 0
        self._ever_connected: set[str] = set()
        self._error: WorkerJobError | None = None
        self._watcher: asyncio.Task[None] | None = None
        directives = [
            *(job_extra_directives or []),
            f"-o {logs}/%x-%A_%a.out",
            f"-e {logs}/%x-%A_%a.err",
        ]
        super().__init__(
            job_name=job_name, job_extra_directives=directives, array=self.array, **kwargs
        )

    # -- names: one per array index -------------------------------------------------------
    def new_worker_spec(self) -> dict[str, dict[str, Any]]:
        """The next worker: name ``<job name>-<index>``, index unused by any live worker."""
        in_use = {*self.worker_spec, *self.workers}
        while True:
            index = self._next_index % self._max_array_size
            self._next_index += 1
            name = f"{self.array.job_name}-{index}"
            if name not in in_use:
                break
        spec = dict(self.new_spec)
        spec["options"] = {**self.new_spec["options"], "array_index": index}
        return {name: spec}

    # -- state tracking -------------------------------------------------------------------
    @property
    def job_states(self) -> dict[str, JobState]:
        """Worker name -> the latest state SLURM reported for its job (after one poll)."""
        return {
            name: job.state
            for name, job in self.workers.items()
            if isinstance(job, SLURMArrayJob) and job.state is not None
        }

    @property
    def error(self) -> WorkerJobError | None:
        """The error that stopped this cluster from submitting workers, if any."""
        return self._error

    async def _start(self) -> None:
        await super()._start()
        self._watcher = asyncio.ensure_future(self._watch())

    async def _close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await super()._close()

    async def _watch(self) -> None:
        while self.status not in (Status.closing, Status.closed):
            await asyncio.sleep(self._poll_interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep watching through a slurmctld hiccup
                logger.warning("polling SLURM failed", exc_info=True)

    async def poll(self) -> None:
        """Ask squeue for every job of this cluster; replace ended workers, raise on broken ones."""
        submitted = {
            job.job_id: name
            for name, job in self.workers.items()
            if isinstance(job, SLURMArrayJob) and job.job_id
        }
        if not submitted:
            self._collect_submit_errors()
            return
        states = await query_slurm(self.array.job_name, missing=list(submitted))
        connected = {w["name"] for w in self.scheduler_info.get("workers", {}).values()}
        self._ever_connected |= connected
        replace: list[str] = []
        async with self._lock:
            for job_id, name in submitted.items():
                job = self.workers.get(name)
                state = states.get(job_id)
                if not isinstance(job, SLURMArrayJob) or state is None:
                    continue
                job.state = state
                if state.never_starts:
                    self._fail(name, job, "will never start")
                elif not state.active and name in self._ever_connected:
                    logger.info("worker %s: job %s; replacing it", name, state.describe())
                    del self.workers[name]
                    if self.worker_spec.pop(name, None) is not None:
                        replace.append(name)
                elif not state.active and state.state != "CANCELLED":
                    self._fail(name, job, "ended before its worker connected")
                elif not state.active:  # cancelled while pending, from outside: replace it
                    del self.workers[name]
                    if self.worker_spec.pop(name, None) is not None:
                        replace.append(name)
            self._collect_submit_errors()
            for _ in replace:
                self.worker_spec.update(self.new_worker_spec())
        if replace:
            await self._correct_state()

    def _collect_submit_errors(self) -> None:
        for name, job in list(self.workers.items()):
            if isinstance(job, SLURMArrayJob) and not job.job_id:
                self.workers.pop(name, None)
                self.worker_spec.pop(name, None)
        if self._error is None:
            self._error = self.array.error
        if self._error is not None and self._adaptive is not None:
            self._adaptive.stop()

    def _fail(self, name: str, job: SLURMArrayJob, what: str) -> None:
        state = job.state
        assert state is not None
        tail = stderr_tail(self.array.stderr_path(state.job_id))
        message = f"worker {name}: SLURM job {state.describe()} {what}."
        if tail:
            message += f"\n--- stderr tail of {self.array.stderr_path(state.job_id)} ---\n{tail}"
        message += (
            "\nFix the facility options (queue, cores, memory, walltime, python, container) "
            "and open the cluster again; `scontrol show job "
            f"{state.job_id}` shows SLURM's view."
        )
        logger.error(message)
        if self._error is None:
            self._error = WorkerJobError(message)
        self.worker_spec.pop(name, None)
        if state.active:  # pending forever: give the slot back now
            job.state = None
            self._futures.add(asyncio.ensure_future(self.array.cancel(state.job_id)))
        del self.workers[name]
        if self._adaptive is not None:
            self._adaptive.stop()

    # -- user-facing ------------------------------------------------------------------------
    def scale(self, n: int | None = None, jobs: int = 0, memory=None, cores=None):  # type: ignore[no-untyped-def]
        """Scale to ``n`` workers (one ``sbatch --array`` for all new ones).

        Raises
        ------
        WorkerJobError
            When an earlier worker job could not be submitted or could not start.
        """
        error = self._error or self.array.error
        if error is not None and (n or jobs):
            raise error
        return super().scale(n, jobs=jobs, memory=memory, cores=cores)

    async def _wait_for_workers(self, n_workers: int = 0, timeout: Any = None) -> None:
        waiter = asyncio.ensure_future(super()._wait_for_workers(n_workers, timeout=timeout))
        try:
            while not waiter.done():
                error = self._error or self.array.error
                if error is not None:
                    raise error
                await asyncio.wait([waiter], timeout=0.2)
            waiter.result()
        finally:
            waiter.cancel()
