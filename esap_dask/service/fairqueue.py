"""Jobs waiting for a thread of the service, taken round-robin across their owners.

A first-in-first-out pool lets one user who queues twenty jobs hold every thread
until all twenty are done, while another user's single job waits behind them. Here
each owner has a queue of their own; a free thread takes the oldest job of the next
owner in turn, skipping owners who already run ``per_owner`` jobs, so a user's job
starts within one job's time of a thread coming free, however many jobs others queued.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

__all__ = ["FairQueue"]


class FairQueue:
    """Per-owner queues of job ids, served round-robin with a per-owner running cap.

    Parameters
    ----------
    per_owner
        Most jobs of one owner taken (running) at the same time.
    """

    def __init__(self, per_owner: int) -> None:
        self.per_owner = max(1, per_owner)
        self._queues: OrderedDict[str, deque[str]] = OrderedDict()
        self._running: dict[str, int] = {}
        self._cond = threading.Condition()
        self._closed = False

    def put(self, owner: str, job_id: str) -> None:
        """Queue ``job_id`` of ``owner`` (once: a job already queued is not queued again)."""
        with self._cond:
            queue = self._queues.setdefault(owner, deque())
            if job_id not in queue:
                queue.append(job_id)
                self._cond.notify()

    def get(self) -> tuple[str, str] | None:
        """The next ``(owner, job_id)`` to run, waiting for one; None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                for owner in list(self._queues):
                    if self._running.get(owner, 0) >= self.per_owner:
                        continue
                    queue = self._queues.pop(owner)  # served: its turn goes to the back
                    job_id = queue.popleft()
                    if queue:
                        self._queues[owner] = queue
                    self._running[owner] = self._running.get(owner, 0) + 1
                    return owner, job_id
                self._cond.wait()

    def done(self, owner: str) -> None:
        """A job of ``owner`` taken with :meth:`get` has ended."""
        with self._cond:
            left = self._running.get(owner, 0) - 1
            if left > 0:
                self._running[owner] = left
            else:
                self._running.pop(owner, None)
            self._cond.notify_all()

    def close(self) -> list[str]:
        """Wake every waiting thread (they get None) and return the ids still queued."""
        with self._cond:
            self._closed = True
            left = [job_id for queue in self._queues.values() for job_id in queue]
            self._queues.clear()
            self._cond.notify_all()
            return left
