"""The store lock: two runs on one store never overlap.

The lock is a small JSON file next to the store (``<store>.lock``) created
with ``O_EXCL``, holding the holder's host, pid, run id and start time. While a
run holds it, a thread refreshes the file's modification time every
``heartbeat`` seconds. A lock is stale when its holder is a dead process on this
host, or when its heartbeat is older than ``stale_after`` seconds (a holder on
another host, e.g. a batch job, that died). A stale lock is taken over by an
atomic rename, so of two runs that find it stale at once only one wins.

For a store given as a URL (``s3://bucket/run.zarr``) the lock is an object
next to it (``s3://bucket/run.zarr.lock``), written through fsspec with
``storage_options``: created with create-if-absent semantics (mode ``"xb"``,
which s3fs sends as a conditional ``If-None-Match: *`` PUT, so of two runs only
one creates it), its heartbeat a ``heartbeat`` time in the record rewritten every
``heartbeat`` seconds. An object store has no atomic rename: a stale lock is
deleted, then created again with ``"xb"``; two runs that take over the same
stale lock in the same instant can both succeed, a window of one round trip.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["LockHeld", "StoreLock"]


class LockHeld(RuntimeError):
    """Another run holds the store's lock."""

    def __init__(self, path: Path | str, holder: dict[str, Any]) -> None:
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
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        store = str(self.store).rstrip("/")
        self.url = "://" in store and not store.startswith("file://")
        local = Path(store.removeprefix("file://") + ".lock")
        self.path: Path | str = store + ".lock" if self.url else local
        if self.url:
            import fsspec

            self._fs, self._key = fsspec.core.url_to_fs(
                str(self.path), **dict(self.storage_options or {})
            )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, Any] | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            if self.url:
                data = json.loads(self._fs.cat_file(self._key))
            else:
                data = json.loads(Path(self.path).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _pid_alive(holder["pid"])
        if self.url:
            beat = holder.get("heartbeat")
            return not isinstance(beat, (int, float)) or time.time() - beat > self.stale_after
        try:
            age = time.time() - Path(self.path).stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.stale_after

    def _record(self, started: str) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "run": self.run_id,
                "started": started,
                "heartbeat": time.time(),
            }
        ).encode()

    def _acquire_url(self, started: str) -> None:
        for _ in range(3):
            try:
                with self._fs.open(self._key, "xb") as f:
                    f.write(self._record(started))
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    raise LockHeld(self.path, holder) from None
                if self._holder() == holder:  # still the stale one: remove it, then race for it
                    with contextlib.suppress(FileNotFoundError):
                        self._fs.rm_file(self._key)
                    self.took_over = holder
                continue
            self._started = started
            self._thread = threading.Thread(target=self._beat, daemon=True, name="esap-lock")
            self._thread.start()
            return
        raise LockHeld(self.path, self._holder())

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; raise LockHeld when a live run holds it."""
        record: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run": self.run_id,
            "started": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        if self.url:
            self._acquire_url(str(record["started"]))
            return
        assert isinstance(self.path, Path)
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
            if self.url:
                with contextlib.suppress(OSError):
                    if self._holder().get("run") == self.run_id:
                        self._fs.pipe_file(self._key, self._record(self._started))
                continue
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._holder().get("run") != self.run_id:
            return
        if self.url:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm_file(self._key)
        else:
            Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
