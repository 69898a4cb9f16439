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
  :class:`~esap_dask.deploy.slurm.jobstate.WorkerJobError` carrying SLURM's reason and
  the job's stderr tail. A job that ends after its worker connected (its
  ``--lifetime`` expired, walltime, node failure, a ``scancel`` from outside) is
  replaced by a new array task under a new name.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from dask.utils import parse_timedelta
from distributed.core import Status
from distributed.deploy.spec import ProcessInterface

from esap_dask.deploy.protocol import WorkerJobsMixin
from esap_dask.deploy.slurm.jobarray import JobArray, index_ranges
from esap_dask.deploy.slurm.jobqueue_import import SLURMCluster, SLURMJob
from esap_dask.deploy.slurm.jobstate import JobState, WorkerJobError, query_slurm, stderr_tail

__all__ = ["JobArray", "SLURMArrayCluster", "SLURMArrayJob", "index_ranges"]

logger = logging.getLogger(__name__)

TASK_ID = "${SLURM_ARRAY_TASK_ID}"


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
        self.job_id = await self.array.submit(self, self.array_index)
        await ProcessInterface.start(self)

    async def close(self) -> None:
        """Cancel this array task (batched), unless SLURM already reports it ended."""
        if self.job_id and (self.state is None or self.state.active):
            await self.array.cancel(self.job_id)
        await ProcessInterface.close(self)


class SLURMArrayCluster(SLURMCluster, WorkerJobsMixin):
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
    renew_after
        Renew each worker this long after it connected: submit its replacement,
        and once that one has connected retire the old worker (the scheduler
        moves its results to the others first). Set it shorter than the workers'
        ``--lifetime`` minus stagger, so no worker leaves before its successor came.
    renew_stagger
        Renew each worker up to this much earlier (uniformly at random), so that
        workers started together are not all renewed at once.
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

    job_cls = SLURMArrayJob  # type: ignore[assignment]

    def __init__(
        self,
        *,
        array_cap: int | None = None,
        poll_interval: str | float = "2s",
        log_directory: str | Path | None = None,
        max_array_size: int = 1001,
        job_name: str | None = None,
        job_extra_directives: list[str] | None = None,
        renew_after: str | float | None = None,
        renew_stagger: str | float = 0,
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
        self._connected_at: dict[str, float] = {}
        self._renew_after = parse_timedelta(renew_after) if renew_after is not None else None
        self._renew_stagger = parse_timedelta(renew_stagger) or 0.0
        self._renewals: dict[str, str] = {}  # old worker -> its replacement
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
        for job in self._created:  # refused by sbatch: never started, nothing to close
            if job.status == Status.created:
                job.status = Status.failed
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
        connected = self._job_names(
            w["name"] for w in self.scheduler_info.get("workers", {}).values()
        )
        self._ever_connected |= connected
        replace: list[str] = []
        async with self._lock:
            renewed = self._renew(connected)
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
        if replace or renewed:
            await self._correct_state()

    def _job_names(self, worker_names: Iterable[Any]) -> set[str]:
        """Spec (job) names of scheduler worker names (``<job>-<i>`` when processes > 1)."""
        suffixes = self.new_spec.get("group", [])
        found = set()
        for name in map(str, worker_names):
            owner = next(
                (name[: -len(x)] for x in suffixes if name.endswith(x) and len(name) > len(x)),
                name,
            )
            found.add(owner if owner in self.workers or owner in self.worker_spec else name)
        return found

    def _update_worker_status(self, op: str, msg: Any) -> None:
        if op == "add":  # remember every worker that ever connected, however briefly
            workers = msg.get("workers", {}) if isinstance(msg, dict) else {}
            self._ever_connected |= self._job_names(w.get("name") for w in workers.values())
        super()._update_worker_status(op, msg)

    async def _correct_state_internal(self) -> None:
        # SpecCluster hands worker *names* to retire_workers as addresses, which retires
        # nothing, and then cancels the jobs: results held by those workers are lost.
        # Retire by name first, so the scheduler moves their results to the others.
        to_close = set(self.workers) - set(self.worker_spec)
        scheduler, comm = self.scheduler, self.scheduler_comm
        if (
            to_close
            and scheduler is not None
            and comm is not None
            and scheduler.status == Status.running
        ):
            suffixes = self.new_spec.get("group", [""])
            names = [f"{n}{s}" for n in to_close for s in suffixes]
            with suppress(Exception):
                await comm.retire_workers(names=names, close_workers=False)
        await super()._correct_state_internal()

    def _renew(self, connected: set[str]) -> bool:
        """Start successors of workers near their lifetime; retire those whose successor came."""
        now = time.monotonic()
        for name in connected:  # the time it is due for renewal
            self._connected_at.setdefault(name, now - random.uniform(0, self._renew_stagger))
        for name in set(self._connected_at) - set(self.workers):
            del self._connected_at[name]
        changed = False
        if self._renew_after is not None:
            for name, since in self._connected_at.items():
                due = now - since > self._renew_after
                if due and name in self.worker_spec and name not in self._renewals:
                    successor = self.new_worker_spec()
                    self.worker_spec.update(successor)
                    self._renewals[name] = next(iter(successor))
                    logger.info("worker %s: renewing it as %s", name, self._renewals[name])
                    changed = True
        for old, new in list(self._renewals.items()):
            if new in connected or old not in connected or new not in self.worker_spec:
                self.worker_spec.pop(old, None)  # SpecCluster retires it, then scancels its job
                del self._renewals[old]
                changed = True
        return changed

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
    def scale(  # type: ignore[override]
        self, n: Any = None, jobs: int = 0, memory: Any = None, cores: Any = None
    ) -> Any:
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
