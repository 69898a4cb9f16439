"""Creating a new store, and recording a run in it: zarr's plain ways against esap-dask's.

``python -m bench.store_create [--rounds 9]``

A first run creates its store before any task starts, on the driver: every array at its
full length, the ``obs`` ids, the ledger subgroup and the consolidated metadata. The
baseline is what esap-dask did before (and what the zarr documentation shows): a group,
then ``create_array`` and the coordinates' values one array at a time on the store, then
``zarr.consolidate_metadata``. esap-dask builds the hierarchy in a ``MemoryStore`` on
zarr's loop, then writes its keys to the store concurrently, the group's final attrs
last (``esap_dask.store.create_store``). Both stores are checked byte for byte equal.

At the end of a run, its record goes into the group's attrs. The baseline writes the
attrs, then ``zarr.consolidate_metadata`` reads every array's metadata back (what
esap-dask did before); ``RunStore.add_run`` writes the attrs with the consolidated
metadata the group already holds, in one write. Both leave the same ``zarr.json``.

Cases: ``helloworld`` with 10,000 rows (chunks of 1,250: 4 products and the 5 ledger
arrays) and ``dl3-products`` with 105 rows (chunks of 27: 39 products, 5 coordinates).
Rounds interleave the two ways; medians (min-max) go to ``bench/results.json``
(cases ``store create/<pipeline>``, ``run record/<pipeline>``), the ratio is baseline / esap-dask.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import zarr

from bench.common import Record, report, summarize
from esap_dask.catalogs.workflows import get_pipeline
from esap_dask.engine.ledger_layout import ARRAYS
from esap_dask.pipeline import Schema
from esap_dask.store import (
    LEDGER_ATTRS,
    LEDGER_GROUP,
    RunStore,
    StoreLayout,
    consolidate,
    create_store,
    esap_attrs,
    store_specs,
)

CASES = {"helloworld": (10_000, 1_250), "dl3-products": (105, 27)}


def one_at_a_time(
    path: str, schema: Schema, layout: StoreLayout, ids: list[str], attrs: dict[str, Any]
) -> None:
    """The baseline: zarr's synchronous API, one array after the other, then consolidation."""
    group = zarr.open_group(
        path, mode="w-", zarr_format=3, attributes={"esap": {**attrs, "incomplete": True}}
    )
    group.create_group(LEDGER_GROUP, attributes=LEDGER_ATTRS)
    for name, spec, values in store_specs(schema, layout, ARRAYS, ids):
        arr = group.create_array(name, **spec)
        if values is not None:
            arr[...] = values
    group.attrs["esap"] = dict(attrs)
    consolidate(group.store)


def attrs_then_consolidate(path: str, entry: dict[str, Any]) -> None:
    """The baseline of a run's record: the attrs, then the metadata consolidated again."""
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    meta = esap_attrs(group)
    meta["runs"] = [*meta.get("runs", []), entry]
    group.attrs["esap"] = meta
    consolidate(group.store)


def add_run(path: str, entry: dict[str, Any]) -> None:
    store = RunStore(path)
    store.open()
    store.add_run(entry)


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def run(rounds: int) -> list[Record]:
    records = []
    for name, (n, chunk) in CASES.items():
        pipe = get_pipeline(name)
        schema = pipe.output_schema(pipe.resolve({}))
        layout = StoreLayout(chunk)
        ids = [f"obs-{i}" for i in range(n)]
        attrs = {"pipeline": name, "schema": schema.describe()}
        work = Path(tempfile.mkdtemp(prefix="esap-bench-create-"))
        base: list[float] = []
        head: list[float] = []
        recorded: dict[str, list[float]] = {"base": [], "head": []}
        try:
            for r in range(rounds + 1):  # round 0 warms up (imports, page cache)
                order = [("base", base), ("head", head)]
                for label, times in order if r % 2 else order[::-1]:
                    path = str(work / f"{label}{r}.zarr")
                    t = time.perf_counter()
                    if label == "base":
                        one_at_a_time(path, schema, layout, ids, attrs)
                    else:
                        create_store(path, schema, layout, ARRAYS, attrs, ids=ids)
                    if r:
                        times.append(time.perf_counter() - t)
                if not same_tree(work / f"base{r}.zarr", work / f"head{r}.zarr"):
                    raise SystemExit(f"{name}: the two stores of round {r} differ")
                for label, _ in order if r % 2 else order[::-1]:
                    entry = {"run": f"run-{r}", "processed": n}
                    path = str(work / f"{label}{r}.zarr")
                    t = time.perf_counter()
                    if label == "base":
                        attrs_then_consolidate(path, entry)
                    else:
                        add_run(path, entry)
                    if r:
                        recorded[label].append(time.perf_counter() - t)
                if not same_tree(work / f"base{r}.zarr", work / f"head{r}.zarr"):
                    raise SystemExit(f"{name}: the two stores of round {r} differ after the record")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        records.append(summarize(f"store create/{name}", "one array at a time", "s", base))
        records.append(summarize(f"store create/{name}", "create_store", "s", head, base))
        records.append(
            summarize(f"run record/{name}", "attrs, then consolidate", "s", recorded["base"])
        )
        records.append(
            summarize(
                f"run record/{name}", "RunStore.add_run", "s", recorded["head"], recorded["base"]
            )
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    report(run(args.rounds))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
