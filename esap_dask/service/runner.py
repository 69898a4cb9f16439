"""Running jobs: the mapper in worker threads, a shared LocalCluster, abort, shutdown.

Jobs run in ``concurrency`` threads; a job waits in ``QUEUED`` until a thread
takes it, round-robin across owners, and one owner runs at most half of the
threads at once (:class:`~esap_dask.service.fairqueue.FairQueue`). Jobs on
facility ``local`` share one service-wide ``LocalCluster`` (opened at the first
such job), each through its own ``distributed.Client``, so aborting one job
cancels exactly its Dask tasks, and restarts the workers its stuck tasks hold.
Other facilities get a cluster per job, closed when it ends.

Each job records the service instance that runs it (:attr:`JobRunner.instance`);
the :class:`~esap_dask.service.reaper.Reaper` loop renews that lease and adopts
the jobs of instances that are gone. Running the mapper again on a job's store
resumes it through the ledger: only what is missing runs. A job whose run fails
ends in ``ERROR`` with the reason.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esap_dask.service.config import ServiceConfig
from esap_dask.service.db import JobDB, now
from esap_dask.service.fairqueue import FairQueue
from esap_dask.service.joblog import append_log, write_ledger
from esap_dask.service.params import parse_spec
from esap_dask.service.reaper import Reaper, instance_name

__all__ = ["SHUTDOWN", "STORE_NAME", "JobRunner"]

#: Name of a job's Zarr store inside its directory.
STORE_NAME = "store.zarr"
#: Stop reason of jobs interrupted by a service shutdown (they are queued again).
SHUTDOWN = "service shutdown"
#: ``_execute`` result when the Dask cluster could not start: queue the job again.
RETRY = "RETRY"
#: Times a job is tried before an unavailable cluster makes it fail.
MAX_ATTEMPTS = 3
#: Seconds before a job whose cluster did not start is tried again.
RETRY_DELAY = 5.0
#: Seconds a stopped job's tasks get to end before their workers are restarted.
RECLAIM_GRACE = 2.0
_ACTIVE = ["PENDING", "QUEUED", "HELD", "SUSPENDED", "EXECUTING"]


@dataclass
class _Running:
    """A job a thread of this instance runs: its Dask client, and why it is being stopped."""

    client: Any = None
    #: the run's :class:`~esap_dask.engine.handle.RunControl`: a stop that comes before
    #: its tasks are submitted keeps them from being submitted
    control: Any = None
    stop_reason: str | None = None
    destroy: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class JobRunner:
    """Executes jobs; the only place that starts, stops and destroys them.

    Parameters
    ----------
    config
        The service settings.
    db
        The job table.
    notify
        Called with a job id after each of its phase changes.
    """

    def __init__(self, config: ServiceConfig, db: JobDB, notify: Callable[[str], None]) -> None:
        self.config = config
        self.db = db
        self.notify = notify
        self.instance = instance_name()
        self._queue = FairQueue(per_owner=max(1, config.concurrency // 2))
        self._threads: list[threading.Thread] = []
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._cluster_lock = threading.Lock()
        self._closing = False
        self.reaper = Reaper(self)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Adopt the jobs of instances that are gone (this one's previous life), start the loop."""
        self.reaper.start()

    def close(self) -> None:
        """Stop the loop and the running jobs, release queued ones, close the shared cluster.

        Jobs stopped by a shutdown go back to QUEUED with no instance (their finished
        observations stay in their stores), so the next start, or another instance,
        resumes them.
        """
        self.begin_shutdown()
        self.reaper.stop()
        self._queue.close()
        for thread in self._threads:
            thread.join()
        self.db.release(self.instance)
        with self._cluster_lock:
            if self._cluster is not None:
                with contextlib.suppress(Exception):
                    self._cluster.close()
                self._cluster = None

    def begin_shutdown(self) -> None:
        """Stop the running jobs' Dask work now (the service got SIGTERM or SIGINT).

        From here on a job that fails goes back to QUEUED: its failure may well be
        the shutdown itself (workers stopped by the same signal).
        """
        self._closing = True
        for job_id in self.running():
            self.stop_work(job_id, SHUTDOWN)

    # -- commands --------------------------------------------------------------------------

    def queue(self, job_id: str) -> bool:
        """PENDING or HELD -> QUEUED, to run here; False when the phase does not allow it."""
        if not self.db.transition(
            job_id, ["PENDING", "HELD"], "QUEUED", runner=self.instance, heartbeat=now()
        ):
            return False
        self.notify(job_id)
        self.submit(job_id)
        return True

    def submit(self, job_id: str) -> None:
        """Hand a ``QUEUED`` job of this instance to the thread pool (not while closing)."""
        if self._closing:
            return
        row = self.db.get(job_id)
        if row is None:
            return
        with self._lock:
            while len(self._threads) < self.config.concurrency:
                thread = threading.Thread(
                    target=self._serve, name=f"esap-job-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        self._queue.put(row.owner, job_id)

    def _serve(self) -> None:
        """One job thread: run the jobs the fair queue hands out, until it closes."""
        while (taken := self._queue.get()) is not None:
            owner, job_id = taken
            try:
                self._run(job_id)
            except Exception:  # a job's errors end in its phase; never lose the thread
                traceback.print_exc()
            finally:
                self._queue.done(owner)

    def abort(self, job_id: str, reason: str | None = None) -> bool:
        """Move a job to ABORTED (from any active phase) and stop its Dask work.

        Returns False when the job was not in an abortable phase.
        """
        fields: dict[str, Any] = {"end_time": now()}
        if reason:
            fields.update(error_type="fatal", error_message=reason)
        if not self.db.transition(job_id, _ACTIVE, "ABORTED", **fields):
            return False
        self.log(job_id, f"aborted: {reason or 'on request of the owner'}")
        self.stop_work(job_id, reason or "aborted on request")
        self.notify(job_id)
        return True

    def destroy(self, job_id: str) -> None:
        """Remove a job's record now and its files as soon as no thread uses them."""
        self.db.delete(job_id)
        self.notify(job_id)
        self.forget(job_id)

    def forget(self, job_id: str) -> None:
        """Remove a deleted job's files, after stopping its work if it runs here."""
        with self._lock:
            state = self._running.get(job_id)
            if state is not None:
                state.destroy = True
        if state is not None:
            self.stop_work(job_id, "destroyed")
        else:
            threading.Thread(target=self._remove_files, args=(job_id,), daemon=True).start()

    def running(self) -> list[str]:
        """Ids of the jobs threads of this instance hold."""
        with self._lock:
            return list(self._running)

    def job_dir(self, job_id: str) -> Path:
        """The directory of a job's store, provenance, log and summary."""
        return self.config.job_dir(job_id)

    def log(self, job_id: str, message: str) -> None:
        """Append a line to the job's run log."""
        append_log(self.job_dir(job_id), message)

    # -- execution -------------------------------------------------------------------------

    def _run(self, job_id: str) -> None:
        row = self.db.get(job_id)
        if row is None:
            return
        state = _Running()
        with self._lock:
            self._running[job_id] = state
        try:
            if not self.db.transition(
                job_id,
                ["QUEUED"],
                "EXECUTING",
                held_by=self.instance,
                start_time=now(),
                end_time=None,
                attempts=row.attempts + 1,
            ):
                return
            self.notify(job_id)
            phase, fields = self._execute(job_id, row.parameters, row.owner, state)
            retry = phase == RETRY
            if retry and row.attempts + 1 >= MAX_ATTEMPTS:
                self.log(job_id, f"giving up after {MAX_ATTEMPTS} attempts")
                phase = "ERROR"
                fields = {"error_type": "transient", "error_message": fields["error_message"]}
            if retry and phase == RETRY:
                self.log(job_id, f"trying again in {RETRY_DELAY:g} s")
                phase, fields = "QUEUED", {"end_time": None}
            elif phase == "QUEUED":
                fields.update(runner=None, end_time=None)
            else:
                fields.update(end_time=now())
            if self.db.transition(job_id, ["EXECUTING"], phase, held_by=self.instance, **fields):
                self.notify(job_id)
                if retry and phase == "QUEUED":
                    timer = threading.Timer(RETRY_DELAY, self.submit, args=(job_id,))
                    timer.daemon = True
                    timer.start()
        finally:
            with self._lock:
                self._running.pop(job_id, None)
            if state.destroy:
                self._remove_files(job_id)

    def _execute(
        self, job_id: str, parameters: dict[str, Any], owner: str, state: _Running
    ) -> tuple[str, dict[str, Any]]:
        from esap_dask.engine.handle import RunControl, controlled
        from esap_dask.engine.mapper import map_observations

        with state.lock:  # before the stop_reason check below: a stop sees one or the other
            state.control = RunControl()
        directory = self.job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        store, store_options = self.config.job_store(job_id)
        try:
            spec = parse_spec(parameters, self.config.sandbox)
            self.log(
                job_id,
                f"running pipeline {spec.pipeline.name} {spec.pipeline.version} on "
                f"facility {spec.facility} with {json.dumps(spec.params, default=str)}",
            )
            try:
                client, disconnect = self._connect(spec.facility, job_id)
            except Exception as err:
                if self._closing or state.stop_reason:
                    raise
                self.log(
                    job_id,
                    f"no Dask cluster for facility {spec.facility} ({type(err).__name__}: {err})",
                )
                message = f"the Dask cluster of facility {spec.facility} did not start: {err}"
                return RETRY, {"error_message": message}
            try:
                with state.lock:
                    state.client = client
                if state.stop_reason:
                    raise RuntimeError(state.stop_reason)
                # as_completed in the mapper looks for the default client: make this job's
                # client the current one of this thread (a contextvar, so jobs don't mix).
                with client.as_current(), controlled(state.control):
                    summary = map_observations(
                        spec.pipeline,
                        spec.observations,
                        store,
                        client=client,
                        params=spec.params,
                        facility=spec.facility,
                        progress=lambda line: self.log(job_id, line),  # every 10 s
                        user=owner,
                        storage_options=store_options,
                    )
            finally:
                with state.lock:
                    state.client = None
                with contextlib.suppress(Exception):
                    disconnect()
        except BaseException as err:
            write_ledger(directory, store, store_options)
            if self._closing and state.stop_reason in (None, SHUTDOWN):
                self.log(
                    job_id,
                    f"stopped by the service shutdown ({type(err).__name__}: "
                    f"{err}); queued again, results so far are kept",
                )
                return "QUEUED", {}
            if state.stop_reason:
                self.log(job_id, f"stopped ({state.stop_reason}); results so far are kept")
                return "ABORTED", {}
            self.log(job_id, "failed:\n" + traceback.format_exc())
            return "ERROR", {"error_type": "fatal", "error_message": f"{type(err).__name__}: {err}"}
        record = summary.to_dict()
        (directory / "summary.json").write_text(json.dumps(record, indent=1, default=str))
        write_ledger(directory, store, store_options)
        if state.stop_reason:
            stopped = "QUEUED" if state.stop_reason == SHUTDOWN else "ABORTED"
            self.log(
                job_id,
                f"stopped ({state.stop_reason}): the observations done so far are kept "
                "(see the ledger result); the others run if the job is resumed",
            )
            return stopped, {}
        self.log(
            job_id,
            f"done: {summary.succeeded} succeeded, {summary.failed} failed, "
            f"{summary.skipped} skipped in {summary.seconds} s",
        )
        if summary.ok:
            return "COMPLETED", {"summary": record}
        first = summary.failures[0] if summary.failures else {}
        message = (
            f"{summary.failed} of {summary.total} observations failed; first: "
            f"{first.get('observation')}: {first.get('error_type')}: {first.get('message')} "
            "(the ledger result lists each failed observation with its error)"
        )
        return "ERROR", {"summary": record, "error_type": "transient", "error_message": message}

    def _connect(self, facility: str, job_id: str) -> tuple[Any, Callable[[], None]]:
        """A Dask client for a job on ``facility``, and the function that lets it go.

        ``local`` jobs connect to the service-wide cluster; other facilities get a
        cluster of their own (adaptive when the facility asks for no workers),
        closed with the client, which cancels its batch or grid jobs, and named
        :func:`job_label` so that an operator finds them (``squeue -n``). The client
        comes from :func:`esap_dask.engine.connect.facility_client`, as the CLI's and the
        Python API's do.
        """
        from esap_dask.engine.connect import facility_client

        shared = self._shared_cluster() if facility == "local" else None
        stack = contextlib.ExitStack()
        try:
            client = stack.enter_context(
                facility_client(facility, cluster=shared, label=job_label(job_id))
            )
        except BaseException:
            stack.close()
            raise
        return client, stack.close

    def _shared_cluster(self) -> Any:
        """The service-wide LocalCluster, (re)started when it is missing or no longer running."""
        with self._cluster_lock:
            cluster = self._cluster
            if cluster is not None and str(getattr(cluster, "status", "")).endswith("running"):
                return cluster
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()
            from esap_dask.catalogs.facilities import open_cluster

            self._cluster = None
            self._cluster = open_cluster("local", **self.config.cluster_options)
            return self._cluster

    def stop_work(self, job_id: str, reason: str) -> None:
        """Cancel the Dask work of a job running here (its finished batches stay stored)."""
        with self._lock:
            state = self._running.get(job_id)
        if state is None:
            return
        with state.lock:
            if state.stop_reason:
                return
            state.stop_reason = reason
            client, control = state.client, state.control
        if control is not None:  # a run still planning submits nothing
            control.request_cancel()
        if client is None:
            return
        from distributed import Future

        with contextlib.suppress(Exception):
            keys = list(client.futures)
            client.cancel([Future(key, client) for key in keys], force=True)
            if keys and self._cluster is not None and client.cluster is self._cluster:
                mine = {str(k) for k in keys}
                threading.Thread(target=self._reclaim, args=(job_id, mine), daemon=True).start()

    def _reclaim(self, job_id: str, keys: set[str]) -> None:
        """Restart the shared cluster's workers that still run a stopped job's tasks.

        Cancelling a future does not stop the Python thread that runs it: a task
        stuck on a slow read or a long computation would hold its worker, and every
        other user's jobs queued behind it, until it returns by itself. Every worker
        is asked which of ``keys`` its threads run; one that still runs some
        :data:`RECLAIM_GRACE` seconds after the cancel is restarted by its nanny (its
        other tasks are rescheduled).
        """
        from distributed import Client

        deadline = time.monotonic() + RECLAIM_GRACE
        try:
            with Client(self._shared_cluster(), set_as_default=False) as client:
                while True:
                    running = client.run(_running_keys, on_error="return")
                    busy = sorted(
                        w for w, ks in running.items() if isinstance(ks, list) and keys & set(ks)
                    )
                    if not busy or time.monotonic() >= deadline:
                        break
                    time.sleep(0.25)
                if busy:
                    self.log(
                        job_id, f"restarting {len(busy)} worker(s) still running its stopped tasks"
                    )
                    client.restart_workers(busy, timeout=60, raise_for_error=False)
        except Exception as err:  # the cluster may be closing with the service
            self.log(job_id, f"could not reclaim the workers of its stopped tasks: {err}")

    def _remove_files(self, job_id: str) -> None:
        from esap_dask.service.stores import remove_job_files

        remove_job_files(self.config, job_id)


def job_label(job_id: str) -> str:
    """The name of a job's batch or grid jobs: ``esap-uws-`` and its id's first 12 characters."""
    return f"esap-uws-{job_id[:12]}"


def _running_keys(dask_worker: Any) -> list[str]:
    """Keys of the tasks a worker's threads are running, cancelled ones included."""
    return [str(ts.key) for ts in dask_worker.state.tasks.values() if ts.state in _OCCUPYING]


#: Worker task states that hold an executor thread.
_OCCUPYING = ("executing", "long-running", "cancelled", "resumed")
