"""Reading an input file: the checked open and :func:`read_input`, without Dask.

A pipeline module imports :func:`read_input` (``from esap_dask import read_input``), and
the command line loads the pipeline module to answer an unchanged rerun from its receipt
before it imports Dask (:mod:`esap_dask.engine.receipt`): so this module imports the
standard library only.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading

#: Bytes per ``os.read`` after the first, for a small file that changed size since its
#: ``fstat``. Small on purpose: Dask's nanny starts workers with
#: ``MALLOC_TRIM_THRESHOLD_=65536`` (its ``pre-spawn-environ``), so freeing a larger buffer
#: hands the heap's top back to the system and the next read faults it in again. Session 9
#: read up to 1 MiB more to see the end of every file: 18.4 µs per 100-byte file against
#: 6.5 µs for one read under that environment (``python -m bench.checksums``, load 0.5),
#: which doubled a worker's time per tiny file (42 µs against 20).
READ_CHUNK = 16 * 1024


def stat_fingerprint(st: os.stat_result) -> str:
    """A file's fingerprint from its ``stat``: ``"<size>-<mtime_ns>"``, or ``"directory"``."""
    return "directory" if stat.S_ISDIR(st.st_mode) else f"{st.st_size}-{st.st_mtime_ns}"


def open_checked(path: str) -> tuple[int, os.stat_result]:
    """A descriptor of the input file ``path`` and its ``fstat``; clear errors otherwise.

    Opened without blocking: a FIFO named as an observation is not waited on. Raises
    ``FileNotFoundError`` or ``IsADirectoryError`` naming the path and what to do.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; check the observation list") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path}: is a directory, not an observation file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class _Expected(threading.local):
    """The input file the pipeline running in this thread was given, set by its task, and
    what :func:`read_input` took of it: (SHA-256 or None, fingerprint)."""

    path: str | None = None
    checksum: bool = True
    taken: tuple[str | None, str] | None = None


#: What the task running in this thread expects :func:`read_input` to read.
EXPECTED = _Expected()


def read_input(path: str | os.PathLike[str]) -> bytes:
    """The whole content of the input file ``path``, read once.

    A pipeline that reads its input file through this function hands esap-dask the bytes
    it processes: in a batch task, the ledger's ``fingerprint`` and ``checksum`` (and the
    provenance's ``voprov:checksum``) are taken from this read, and the task does not open
    and read the file a second time for them. A task learns it on the first file its
    pipeline reads this way, and from then on no longer reads each file before the
    pipeline runs (:func:`esap_dask.engine.task.open_input`). Over 10,000 tiny files that
    second read was 18.0 of a task's 56.5 µs a file; with ``helloworld`` reading through
    this function the task took 32.7 µs (``python -m bench.task_alone --case tiny-files``,
    load 0.5-0.7). Elsewhere (a notebook, a plain loop) it reads the file.

    Raises ``FileNotFoundError`` or ``IsADirectoryError`` naming the path.
    """
    text = os.fspath(path)
    fd, st = open_checked(text)
    try:
        size = st.st_size
        data = os.read(fd, size + 1)
        if len(data) != size:  # it grew or shrank since its fstat: read to its end
            parts = [data]
            while chunk := os.read(fd, max(READ_CHUNK, size + 1 - len(data))):
                parts.append(chunk)
            data = b"".join(parts)
    finally:
        os.close(fd)
    expected = EXPECTED
    if expected.path == text:
        digest = hashlib.sha256(data).hexdigest() if expected.checksum else None
        expected.taken = (digest if stat.S_ISREG(st.st_mode) else None, stat_fingerprint(st))
    return data
