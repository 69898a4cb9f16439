"""A task's commit: whole chunks written by esap-dask, against zarr's ``setitem``.

``python -m bench.whole_chunks [--rounds 11] [--rows 5000] [--chunk 2500]``

One commit of a ``helloworld`` task (its 3 products and the 5 ledger arrays, ``rows``
rows in chunks of ``chunk``) into a store made as a run makes it
(``esap_dask.store.create_store``), four ways, in interleaved rounds:

- ``zarr, StringDType``: what a task did before session 12 (text built as numpy's
  ``StringDType``, every array written through zarr's ``AsyncArray.setitem``, gathered on
  zarr's loop);
- ``whole chunks, object``: what it does now (text built as Python strings, each chunk
  encoded by the array's codecs and written with the store's ``set_sync``:
  ``esap_dask.store.local.write_whole_chunks``);
- the two other pairings, to tell the dtype's share from the writer's.

Every way writes the same values; the files of the first and the second are checked
byte for byte equal. Prints the medians (ms per commit) and the load average; nothing is
written to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import esap_dask.store as store_module
from esap_dask import get_pipeline
from esap_dask.engine.ledger_layout import ARRAYS, COLUMNS, pack
from esap_dask.store import LEDGER_GROUP, StoreLayout, create_store, write_rows


def columns(n: int, text: Any) -> dict[str, np.ndarray]:
    """A commit's columns of ``n`` rows, text in dtype ``text``, as a task fills them."""
    import hashlib

    def strings(values: list[str]) -> np.ndarray:
        out = np.empty(n, dtype=text)
        out[:] = values
        return out

    sha = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    products = {
        "greeting": strings([f"Hello, observation {i}!" for i in range(n)]),
        "checksum": strings(sha),
        "size": np.arange(n, dtype=np.int64),
    }
    ledger: dict[str, np.ndarray] = {}
    for col in COLUMNS:
        if col.dtype == "str":
            ledger[col.name] = strings([""] * n)
        else:
            ledger[col.name] = np.zeros(n, dtype=col.numpy_dtype)
    ledger["status"][:] = 1
    ledger["attempts"][:] = 1
    ledger["source"][:] = [str(i) for i in range(n)]
    ledger["fingerprint"][:] = ["value:" + s[:16] for s in sha]
    ledger["params"][:] = "0123456789abcdef"
    ledger["version"][:] = "1.0"
    ledger["worker"][:] = "tcp://127.0.0.1:40000"
    ledger["run"][:] = "20261127T170000Z-0123abcd"
    ledger["start"][:] = 1795798800.0  # the same values every way
    ledger["end"][:] = 1795798800.5
    # pack() builds the packed text as Python strings: in the way's text dtype, as a task would
    packed = {k: v.astype(text) if v.dtype == object else v for k, v in pack(ledger).items()}
    return {**products, **packed}


def helloworld_store(path: Path, rows: int, chunk: int) -> tuple[zarr.Group, dict[str, Any]]:
    """A new ``helloworld`` store of ``rows`` rows in chunks of ``chunk``, made as a run makes
    it, and its arrays by path (opened once, as a worker keeps them for a run)."""
    pipe = get_pipeline("helloworld")
    schema = pipe.output_schema(pipe.resolve({}))
    attrs = {"pipeline": "helloworld", "schema": schema.describe()}
    ids = [str(i) for i in range(rows)]
    group = create_store(str(path), schema, StoreLayout(chunk), ARRAYS, attrs, ids=ids)
    arrays = dict(group.arrays())
    arrays.update((f"{LEDGER_GROUP}/{n}", a) for n, a in group[LEDGER_GROUP].arrays())
    return group, arrays


@contextlib.contextmanager
def patched_store(**attributes: Any) -> Iterator[None]:
    """``esap_dask.store``'s attributes (``COMPRESSORS``, ``CHUNK_KEY_ENCODING``,
    ``write_whole_chunks``) set to ``attributes`` inside, and back after: stores made and
    written there are made and written the other way."""
    real = {name: getattr(store_module, name) for name in attributes}
    for name, value in attributes.items():
        setattr(store_module, name, value)
    try:
        yield
    finally:
        for name, value in real.items():
            setattr(store_module, name, value)


def chunk_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--chunk", type=int, default=2500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="esap-bench-chunks-"))
    real = store_module.write_whole_chunks
    text_dtype = np.dtypes.StringDType()
    ways: dict[str, tuple[bool, Any]] = {
        "zarr, StringDType": (False, text_dtype),
        "whole chunks, object": (True, object),
        "whole chunks, StringDType": (True, text_dtype),
        "zarr, object": (False, object),
    }
    groups, arrays = {}, {}
    for k, name in enumerate(ways):
        groups[name], arrays[name] = helloworld_store(work / f"w{k}.zarr", args.rows, args.chunk)
    rows = np.arange(args.rows)
    times: dict[str, list[float]] = {name: [] for name in ways}

    def never(*args: Any) -> bool:  # zarr's setitem writes every array
        return False

    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (whole, text) in ways.items():
            group = groups[name]
            values = columns(args.rows, text)
            with patched_store(write_whole_chunks=real if whole else never):
                t = time.perf_counter()
                write_rows(group, rows, values, arrays=arrays[name])
                if r:
                    times[name].append(time.perf_counter() - t)
    if chunk_files(work / "w0.zarr") != chunk_files(work / "w1.zarr"):
        raise SystemExit("the two ways wrote different files")
    print(
        f"a helloworld commit of {args.rows} rows in chunks of {args.chunk} "
        f"(3 products, 5 ledger arrays), ms, medians of {args.rounds}:"
    )
    base = statistics.median(times["zarr, StringDType"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:28s} {med * 1e3:7.2f}   {med / base:.2f}x of zarr, StringDType")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
