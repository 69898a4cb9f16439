"""The store lock: two runs on one store never overlap.

The lock is a small JSON file next to the store (``<store>.lock``) created
with ``O_EXCL``, holding the holder's host, pid, run id and start time. While a
run holds it, a thread refreshes the file's modification time every
``heartbeat`` seconds. A lock is stale when its holder is a dead process on this
host, or when its heartbeat is older than ``stale_after`` seconds (a holder on
another host, e.g. a batch job, that died). A stale lock is taken over by an
atomic rename, so of two runs that find it stale at once only one wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["LockHeld", "StoreLock"]


class LockHeld(RuntimeError):
    """Another run holds the store's lock."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path = path
        self.holder = holder
        super().__init__(
            f"{path}: another run holds this store (host {holder.get('host')}, "
            f"pid {holder.get('pid')}, run {holder.get('run')}, started {holder.get('started')}); "
            "wait for it to finish, or, if that run is gone for good, delete the lock file"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class StoreLock:
    """An exclusive, heartbeating lock on one store (a context manager)."""

    store: str
    run_id: str
    heartbeat: float = 10.0
    stale_after: float = 120.0

    def __post_init__(self) -> None:
        self.path = Path(str(self.store).rstrip("/") + ".lock")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, Any] | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _pid_alive(holder["pid"])
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.stale_after

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; raise LockHeld when a live run holds it."""
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run": self.run_id,
            "started": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    raise LockHeld(self.path, holder) from None
                grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.rename(self.path, grave)  # only one contender wins this
                except FileNotFoundError:
                    continue
                self.took_over = holder
                grave.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self._thread = threading.Thread(target=self._beat, daemon=True, name="esap-lock")
            self._thread.start()
            return
        raise LockHeld(self.path, self._holder())

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._holder().get("run") == self.run_id:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
