"""What files cost here, and how many a store makes with each chunk key separator.

``python -m bench.files [--ops 300] [--rows 10000] [--chunk 1250] [--rounds 7]``

1. The CPU of the file-system calls a run makes, in a fresh directory of the bench's
   temporary directory (medians of 5 rounds of ``--ops`` calls): a new file created and
   written, a directory made, an existing file rewritten, a rename over an existing file.
2. The directories and files of a ``helloworld`` store of ``--rows`` rows in chunks of
   ``--chunk`` (made by ``esap_dask.store.create_store``, every row then written as the
   tasks of a run write them), with chunk keys separated by ``.`` (esap-dask's stores,
   ``esap_dask.store.CHUNK_KEY_ENCODING``) and by ``/`` (zarr-python's default), and the
   time each took (``--rounds`` interleaved rounds, medians).

The cost of a new file or directory varies here from 0.03 to 1 ms of CPU with the
directory it is made in and the hour (session 14): read the counts first, the times
second.

Prints the figures and the load average; nothing is written to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.whole_chunks import columns, helloworld_store, patched_store
from esap_dask.store import write_rows


def per_call(
    ops: int, setup: Callable[[Path, int], None] | None, call: Callable[[Path, int], None]
) -> float:
    """Median CPU seconds of one ``call`` over 5 rounds of ``ops`` calls (after ``setup``)."""
    rounds = []
    for _ in range(5):
        d = Path(tempfile.mkdtemp(prefix="esap-bench-files-"))
        if setup is not None:
            setup(d, ops)
        t = time.process_time()
        for i in range(ops):
            call(d, i)
        rounds.append((time.process_time() - t) / ops)
        shutil.rmtree(d)
    return statistics.median(rounds)


def create(d: Path, i: int) -> None:
    fd = os.open(d / f"n{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, b"x" * 100)
    os.close(fd)


def rewrite(d: Path, i: int) -> None:
    fd = os.open(d / f"e{i}", os.O_WRONLY)
    os.write(fd, b"y" * 100)
    os.close(fd)


def existing(d: Path, ops: int) -> None:
    for i in range(ops):
        (d / f"e{i}").write_bytes(b"x" * 100)


def rename(d: Path, i: int) -> None:
    os.replace(d / f"e{i}", d / f"r{i}")


def store_files(rows: int, chunk: int, separator: str) -> tuple[int, int, float]:
    """(directories, files, seconds) of a helloworld store made and written in full."""
    work = Path(tempfile.mkdtemp(prefix="esap-bench-files-"))
    values = columns(rows, object)
    t = time.perf_counter()
    with patched_store(CHUNK_KEY_ENCODING={"name": "default", "separator": separator}):
        group, arrays = helloworld_store(work / "s.zarr", rows, chunk)
    for lo in range(0, rows, chunk):  # a write unit at a time, as the tasks write them
        part = {k: v[lo : lo + chunk] for k, v in values.items()}
        write_rows(group, np.arange(lo, min(rows, lo + chunk)), part, arrays=arrays)
    seconds = time.perf_counter() - t
    dirs = files = 0
    for _, dn, fn in os.walk(work / "s.zarr"):
        dirs, files = dirs + len(dn), files + len(fn)
    shutil.rmtree(work)
    return dirs, files, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1250)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"CPU per call (medians of 5 rounds of {args.ops}), in {tempfile.gettempdir()}:")
    calls: list[tuple[str, Callable[[Path, int], None] | None, Callable[[Path, int], None]]] = [
        ("a new file, created and written", None, create),
        ("a new directory", None, lambda d, i: os.mkdir(d / f"d{i}")),
        ("an existing file, rewritten", existing, rewrite),
        ("a rename over an existing file", existing, rename),
    ]
    for name, setup, call in calls:
        print(f"  {name:34s} {per_call(args.ops, setup, call) * 1e6:7.0f} µs")
    print(f"a helloworld store of {args.rows:,} rows in chunks of {args.chunk:,}, written in full:")
    ways = {"'.' (esap-dask)": ".", "'/' (zarr's default)": "/"}
    times: dict[str, list[float]] = {label: [] for label in ways}
    found: dict[str, tuple[int, int]] = {}
    for r in range(args.rounds):  # interleaved, in alternating order
        for label in list(ways) if r % 2 else list(reversed(ways)):
            dirs, files, seconds = store_files(args.rows, args.chunk, ways[label])
            found[label] = (dirs, files)
            times[label].append(seconds)
    for label in ways:
        dirs, files = found[label]
        print(
            f"  chunk keys {label:22s} {dirs:4d} directories, {files:4d} files, "
            f"{statistics.median(times[label]) * 1e3:6.1f} ms (median of {args.rounds})"
        )
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
