"""A task's check and checksum of each input file: one descriptor against stat, then open.

``python -m bench.checksums [--rounds 9] [--files 3000] [--size 100] [--no-nanny-env]``

Before its pipeline runs on a file, a task checks that the file is there and is not a
directory, and the ledger records the SHA-256 of its content. The baseline is what a task
did up to session 8: ``os.stat`` for the check, then ``open(path, "rb")``, ``fstat`` and
one ``read`` for the checksum (after the pipeline). esap-dask's ``open_input`` opens the
file once and serves both from the descriptor (``fstat``, ``os.read``). Files of
``--size`` bytes (the tiny files of ``bench.peers`` hold 100-150), in a temporary
directory; rounds interleave the two ways, medians of µs per file go to
``bench/results.json`` (case ``checksums/<size> B``), the ratio is baseline / esap-dask.
Both ways are checked to give the same digests.

Tasks run in workers that Dask's nanny started with its ``pre-spawn-environ``
(``MALLOC_TRIM_THRESHOLD_=65536``), which pins glibc's ``mmap`` threshold at 128 KiB; the
benchmark runs itself again under that environment unless ``--no-nanny-env``. A third
way is the session-9 checksum, which read up to 1 MiB more to see each file's end: under
the nanny's environment that is an ``mmap`` and ``munmap`` per file. A fourth is session
15's, one read into fresh bytes for files up to 1 MiB: above 128 KiB that too is an
``mmap`` per file, which esap-dask now reads through a buffer each thread keeps
(``--size 600000 --files 200``: the realistic GADF files of ``bench.peers``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Record, report, summarize
from esap_dask.engine.observations import Observation
from esap_dask.engine.task import open_input

#: Where the baselines below switch from one read to ``hashlib.file_digest`` (esap-dask's
#: ``SMALL_FILE`` up to session 15).
ONE_MIB = 1 << 20


def stat_then_open(path: str) -> str:
    """The baseline: the check (``stat``), then the checksum through a Python file object."""
    os.stat(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= ONE_MIB:
            return hashlib.sha256(f.read()).hexdigest()
        return hashlib.file_digest(f, "sha256").hexdigest()


def one_descriptor_1mib(obs: Observation) -> str:
    """Session 9's ``check_input``: after the first read, ``os.read(fd, 1 MiB)`` to see the end."""
    fd = os.open(obs.value, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        digest = hashlib.sha256(os.read(fd, os.fstat(fd).st_size + 1))
        while chunk := os.read(fd, ONE_MIB):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def fresh_bytes(obs: Observation) -> str:
    """Session 15's checksum: one read into fresh bytes up to 1 MiB, ``file_digest`` above.

    Above 128 KiB, under the nanny's environment, the fresh bytes are an ``mmap`` per file.
    """
    fd = os.open(obs.value, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > ONE_MIB:
            with os.fdopen(os.dup(fd), "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        digest = hashlib.sha256(os.read(fd, size + 1))
        while chunk := os.read(fd, 16 * 1024):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def run(rounds: int, count: int, size: int) -> list[Record]:
    work = Path(tempfile.mkdtemp(prefix="esap-bench-checksums-"))
    try:
        paths = []
        for i in range(count):
            path = work / f"obs{i:05d}.dat"
            path.write_bytes(os.urandom(size))
            paths.append(str(path))
        observations = [Observation.of(p) for p in paths]
        for p, o in zip(paths[:100], observations[:100], strict=True):
            head = open_input(o, True)[0]
            if not stat_then_open(p) == one_descriptor_1mib(o) == fresh_bytes(o) == head:
                raise SystemExit(f"{p}: the ways disagree")
        base: list[float] = []
        old: list[float] = []
        fresh: list[float] = []
        head: list[float] = []
        for r in range(rounds + 1):  # round 0 warms up (page cache)
            ways = [("base", base), ("old", old), ("fresh", fresh), ("head", head)]
            for label, times in ways if r % 2 else ways[::-1]:
                t = time.perf_counter()
                if label == "base":
                    for p in paths:
                        stat_then_open(p)
                elif label == "old":
                    for o in observations:
                        one_descriptor_1mib(o)
                elif label == "fresh":
                    for o in observations:
                        fresh_bytes(o)
                else:
                    for o in observations:
                        open_input(o, checksum=True)
                if r:
                    times.append((time.perf_counter() - t) / count * 1e6)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    case = f"checksums/{size} B"
    return [
        summarize(case, "stat, then open", "µs per file", base),
        summarize(
            case, "one descriptor, 1 MiB read to the end (session 9)", "µs per file", old, base
        ),
        summarize(
            case, "one descriptor, fresh bytes up to 1 MiB (session 15)", "µs per file", fresh, base
        ),
        summarize(case, "open_input (one descriptor, one read)", "µs per file", head, base),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument(
        "--no-nanny-env", action="store_true", help="run without the nanny's pre-spawn-environ"
    )
    args = parser.parse_args()
    if not args.no_nanny_env and "ESAP_BENCH_NANNY_ENV" not in os.environ:
        import dask
        import distributed  # noqa: F401  (its configuration defaults)

        env = {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()}
        print(f"again under the nanny's pre-spawn-environ: {env}")
        env = {**os.environ, **env, "ESAP_BENCH_NANNY_ENV": "1"}
        raise SystemExit(
            subprocess.call([sys.executable, "-m", "bench.checksums", *sys.argv[1:]], env=env)
        )
    print(f"load average before: {os.getloadavg()}")
    report(run(args.rounds, args.files, args.size))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
