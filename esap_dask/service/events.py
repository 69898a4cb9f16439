"""Phase-change notifications, from job threads to requests blocked in ``WAIT``."""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["PhaseEvents"]


class PhaseEvents:
    """Wake the asyncio waiters of a job when its phase changes (thread-safe ``notify``)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._lock = threading.Lock()

    def register(self, job_id: str) -> asyncio.Future[None]:
        """A future resolved at the job's next phase change (call from the event loop)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(fut)
        return fut

    def unregister(self, job_id: str, fut: asyncio.Future[None]) -> None:
        """Forget a waiter (after it fired or timed out)."""
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[job_id]

    def notify(self, job_id: str) -> None:
        """Wake every waiter of ``job_id``; callable from any thread."""
        with self._lock:
            waiters = self._waiters.pop(job_id, set())
        for fut in waiters:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                fut.get_loop().call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
