"""Creating a new store, and recording a run in it: zarr's plain ways against esap-dask's.

``python -m bench.store_create [--rounds 9]``

A first run creates its store before any task starts, on the driver: every array at its
full length, the ``obs`` ids, the ledger subgroup and the consolidated metadata. Three ways:

- ``one array at a time`` (the baseline; what the zarr documentation shows, and what
  esap-dask did until session 10): a group, then ``create_array`` and the coordinates'
  values one array at a time on the store, then ``zarr.consolidate_metadata``;
- ``zarr in memory`` (esap-dask's way in sessions 10-12): the hierarchy built with zarr's
  async API in a ``MemoryStore`` (arrays created concurrently, then consolidated), its
  keys then written to the store concurrently, the group's final attrs last;
- ``create_store`` (esap-dask now): zarr's own metadata document of each kind of array,
  made once per process, with each array's shape, chunks, attrs and dimension names;
  the consolidated metadata assembled from them in zarr's order.

The three stores of every round are checked byte for byte equal.

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


def in_memory(
    path: str, schema: Schema, layout: StoreLayout, ids: list[str], attrs: dict[str, Any]
) -> None:
    """esap-dask's way in sessions 10-12: built in a MemoryStore on zarr's loop, then put."""
    import asyncio
    import warnings

    import zarr.api.asynchronous as za
    from zarr.core.sync import sync

    target = zarr.open_group(
        path, mode="w-", zarr_format=3, attributes={"esap": {**attrs, "incomplete": True}}
    ).store
    keys: dict[str, Any] = {}

    async def build() -> None:
        memory = zarr.storage.MemoryStore(keys)
        root = await za.open_group(
            store=memory, mode="w-", zarr_format=3, attributes={"esap": dict(attrs)}
        )
        await root.create_group(LEDGER_GROUP, attributes=LEDGER_ATTRS)

        async def one(name: str, spec: dict[str, Any], values: Any) -> None:
            arr = await root.create_array(name, **spec)
            if values is not None:
                await arr.setitem(..., values)

        await asyncio.gather(*(one(*x) for x in store_specs(schema, layout, ARRAYS, ids)))
        await za.consolidate_metadata(memory)

    async def put(items: dict[str, Any]) -> None:
        await asyncio.gather(*(target.set(k, v) for k, v in items.items()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        sync(build())
    root = keys.pop("zarr.json")
    sync(put(keys))
    sync(put({"zarr.json": root}))


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


def esap_dask_way(
    path: str, schema: Schema, layout: StoreLayout, ids: list[str], attrs: dict[str, Any]
) -> None:
    create_store(path, schema, layout, ARRAYS, attrs, ids=ids)


BASE, HEAD = "one array at a time", "create_store"
WAYS = {BASE: one_at_a_time, "zarr in memory": in_memory, HEAD: esap_dask_way}


def run(rounds: int) -> list[Record]:
    records = []
    for name, (n, chunk) in CASES.items():
        pipe = get_pipeline(name)
        schema = pipe.output_schema(pipe.resolve({}))
        layout = StoreLayout(chunk)
        ids = [f"obs-{i}" for i in range(n)]
        attrs = {"pipeline": name, "schema": schema.describe()}
        work = Path(tempfile.mkdtemp(prefix="esap-bench-create-"))
        times: dict[str, list[float]] = {label: [] for label in WAYS}
        recorded: dict[str, list[float]] = {"base": [], "head": []}
        try:
            for r in range(rounds + 1):  # round 0 warms up (imports, page cache)
                order = list(WAYS.items())
                order = order[r % 3 :] + order[: r % 3]  # rotated: each way goes first
                for label, make in order:
                    path = str(work / f"{label}{r}.zarr")
                    t = time.perf_counter()
                    make(path, schema, layout, ids, attrs)
                    if r:
                        times[label].append(time.perf_counter() - t)
                for label in WAYS:
                    if not same_tree(work / f"{BASE}{r}.zarr", work / f"{label}{r}.zarr"):
                        raise SystemExit(f"{name}: {label} and {BASE} differ in round {r}")
                pair = [("base", BASE), ("head", HEAD)]
                for label, way in pair if r % 2 else pair[::-1]:
                    entry = {"run": f"run-{r}", "processed": n}
                    path = str(work / f"{way}{r}.zarr")
                    t = time.perf_counter()
                    if label == "base":
                        attrs_then_consolidate(path, entry)
                    else:
                        add_run(path, entry)
                    if r:
                        recorded[label].append(time.perf_counter() - t)
                if not same_tree(work / f"{BASE}{r}.zarr", work / f"{HEAD}{r}.zarr"):
                    raise SystemExit(f"{name}: the two stores of round {r} differ after the record")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        base = times[BASE]
        for label in WAYS:
            records.append(
                summarize(
                    f"store create/{name}",
                    label,
                    "s",
                    times[label],
                    None if label == BASE else base,
                )
            )
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
