"""The scheduler's record of the batch tasks that started, for exactly-once accounting.

In a module of its own (moved from :mod:`esap_dask.engine.task`) because it subclasses
distributed's ``SchedulerPlugin``: importing distributed took 0.5-1.5 s of an unchanged
``esap-dask run``, which needs no cluster (``python -X importtime``, load 2-7).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["BatchStarts"]


class BatchStarts(SchedulerPlugin):
    """The scheduler's record of the workers that started each batch task, by task key.

    The driver registers it (once per scheduler: it is idempotent); it adds four
    handlers to the scheduler: ``esap_batch_started(key, worker)``, called by a task
    before it runs the pipeline, records the start and returns the workers that started
    ``key``, this one last (none when the run was cancelled: the task must not start);
    ``esap_batch_starts(keys)`` returns the record of ``keys``;
    ``esap_batch_cancel(prefix)`` refuses every later start of the run's keys and
    returns the keys started so far; ``esap_batch_forget(prefix)`` drops the keys of a
    run that ended.

    It also tells a run's tasks when their store exists: the driver of a run into a new
    store submits the tasks first and creates the store while they run their first rows
    (``esap_store_created(prefix)``); a task waits for it (``esap_store_wait(prefix,
    timeout)``) only before its first write.
    """

    #: versioned: a scheduler that kept an earlier plugin (without the store handlers)
    #: registers this one beside it, and its handlers replace the earlier ones
    name = "esap-batch-starts/2"
    idempotent = True

    def __init__(self) -> None:
        self.starts: dict[str, list[str]] = {}
        self.cancelled: set[str] = set()
        self.stores: dict[str, asyncio.Event] = {}

    async def start(self, scheduler: Any) -> None:
        """Add the handlers to ``scheduler``."""
        scheduler.handlers["esap_batch_started"] = self.started
        scheduler.handlers["esap_batch_starts"] = self.lookup
        scheduler.handlers["esap_batch_forget"] = self.forget
        scheduler.handlers["esap_batch_cancel"] = self.cancel
        scheduler.handlers["esap_store_created"] = self.store_created
        scheduler.handlers["esap_store_wait"] = self.store_wait

    def _store(self, prefix: str) -> asyncio.Event:
        return self.stores.setdefault(prefix, asyncio.Event())

    def store_created(self, prefix: str) -> None:
        """The store of the run whose keys start with ``prefix`` exists (or never will)."""
        self._store(prefix).set()

    async def store_wait(self, prefix: str, timeout: float) -> bool:
        """Whether the store of ``prefix``'s run exists, waiting up to ``timeout`` seconds."""
        event = self._store(prefix)
        if not event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()

    def started(self, key: str, worker: str) -> list[str]:
        """Record that ``worker`` starts ``key``; the workers that started it so far.

        None (an empty list) when the run of ``key`` was cancelled: the task must not start.
        """
        if any(key.startswith(prefix) for prefix in self.cancelled):
            return []
        self.starts.setdefault(key, []).append(worker)
        return list(self.starts[key])

    def lookup(self, keys: list[str]) -> dict[str, list[str]]:
        """The workers that started each of ``keys`` (none for a key never started)."""
        return {k: list(self.starts.get(k, ())) for k in keys}

    def cancel(self, prefix: str) -> list[str]:
        """Refuse every later start of a key starting with ``prefix``; the keys started."""
        self.cancelled.add(prefix)
        return [k for k in self.starts if k.startswith(prefix)]

    def forget(self, prefix: str) -> int:
        """Drop the record of every key starting with ``prefix``; how many were dropped."""
        self.cancelled.discard(prefix)
        self.stores.pop(prefix, None)
        gone = [k for k in self.starts if k.startswith(prefix)]
        for k in gone:
            del self.starts[k]
        return len(gone)
