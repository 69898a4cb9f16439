"""A batch's writes with the ledger as 14 columns beside the products, or packed in its group.

``python -m bench.ledger_layout [--rounds 7]``

Three helloworld-like products (an int64 and two strings) and the ledger of 2,000 rows in
chunks of 100, written in 20 batches of 100 rows with ``esap_dask.store.write_rows`` as a
task writes them (products, then the ledger, ``status`` last): the earlier layout's 14
``ledger_<column>`` arrays against the ``ledger`` group's 5 packed arrays
(:data:`esap_dask.engine.ledger.ARRAYS`). Rounds are interleaved; the medians per batch
are printed, nothing is written to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import zarr

from esap_dask.engine.ledger import ARRAYS, COLUMNS, blank, pack
from esap_dask.store import StoreLayout, create_ledger_group, write_rows

N, B, CHUNK = 2000, 100, 100


def make(path: Path, old: bool) -> zarr.Group:
    """A store of three products and the ledger in the earlier (``old``) or the new layout."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, dtype in (("size", "i8"), ("checksum", str), ("greeting", str)):
        fill = "" if dtype is str else 0
        group.create_array(
            name, shape=(N,), dtype=dtype, chunks=(CHUNK,), dimension_names=["obs"], fill_value=fill
        )
    if old:
        for c in COLUMNS:
            group.create_array(
                f"ledger_{c.name}",
                shape=(N,),
                dtype=str if c.dtype == "str" else c.dtype,
                chunks=(CHUNK,),
                fill_value=c.fill,
                dimension_names=["obs"],
            )
    else:
        create_ledger_group(group, ARRAYS, StoreLayout(CHUNK), n=N)
    return group


def ledger_rows() -> dict[str, np.ndarray]:
    """One batch's ledger columns, as a task fills them."""
    rows = blank(B)
    rows["status"][:] = 1
    for k in ("source", "fingerprint", "checksum", "params", "version", "worker", "run"):
        rows[k][:] = [f"{k}-{i:06d}-abcdef" for i in range(B)]
    rows["attempts"][:] = 1
    rows["start"][:] = rows["end"][:] = time.time()
    return rows


def one_pass(group: zarr.Group, old: bool) -> float:
    """Milliseconds per batch, writing every batch of the store once."""
    products = {
        "size": np.arange(B),
        "checksum": np.array(["x" * 64] * B, dtype=object),
        "greeting": np.array(["Hello"] * B, dtype=object),
    }
    t0 = time.perf_counter()
    for b in range(N // B):
        rows = np.arange(b * B, (b + 1) * B)
        write_rows(group, rows, products)
        ledger = ledger_rows()
        if old:
            write_rows(group, rows, {f"ledger_{k}": v for k, v in ledger.items() if k != "status"})
            write_rows(group, rows, {"ledger_status": ledger["status"]})
        else:
            write_rows(group, rows, pack(ledger))
    return (time.perf_counter() - t0) / (N // B) * 1000


def main() -> None:
    """Print the median time per batch of each layout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
    with tempfile.TemporaryDirectory() as tmp:
        layouts = {
            "14 ledger_* columns": (make(Path(tmp) / "old.zarr", True), True),
            "ledger group, 5 arrays": (make(Path(tmp) / "new.zarr", False), False),
        }
        times: dict[str, list[float]] = {k: [] for k in layouts}
        for _ in range(args.rounds):
            for name, (group, old) in layouts.items():
                times[name].append(one_pass(group, old))
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.1f} ms a batch of {B} rows (median)")


if __name__ == "__main__":
    main()
