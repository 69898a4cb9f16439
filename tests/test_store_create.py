"""A new store is the store zarr makes: the same files, byte for byte.

``esap_dask.store.create_store`` writes the metadata documents itself (zarr's own document
for each kind of array, with the array's shape, chunks, attrs and dimension names) and the
consolidated metadata as ``zarr.consolidate_metadata`` lists it. Here every catalog
pipeline's store, sharded or not, and a schema of unusual dtypes, fill values, text
coordinates and non-ASCII attrs, is made both ways and compared file by file.
"""

from __future__ import annotations

import filecmp
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from esap_dask import Coordinate, Schema, Variable, get_pipeline, list_pipelines
from esap_dask.engine.ledger_layout import ARRAYS
from esap_dask.store import (
    LEDGER_ATTRS,
    LEDGER_GROUP,
    StoreLayout,
    consolidate,
    create_store,
    store_specs,
)


def made_by_zarr(
    path: Path, schema: Schema, layout: StoreLayout, ids: list[str], attrs: dict[str, Any]
) -> None:
    """The store as zarr's own API makes it: each array created, then consolidated."""
    group = zarr.open_group(path, mode="w-", zarr_format=3, attributes={"esap": dict(attrs)})
    group.create_group(LEDGER_GROUP, attributes=LEDGER_ATTRS)
    for name, spec, values in store_specs(schema, layout, ARRAYS, ids):
        arr = group.create_array(name, **spec)
        if values is not None:
            arr[...] = values
    consolidate(group.store)


def differences(a: Path, b: Path) -> list[str]:
    """The files that differ (or exist on one side only) between trees ``a`` and ``b``."""
    cmp = filecmp.dircmp(a, b)
    out = [f"{a.name}/{n}: one side only" for n in cmp.left_only + cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    out += [f"{a}/{n}" for n in mismatch + errors]
    for d in cmp.common_dirs:
        out += differences(a / d, b / d)
    return out


ODD = Schema(
    variables=[
        Variable("small", "int8", units="µm", description='a "quoted" description'),
        Variable("flag", "bool"),
        Variable("level", "float32", fill_value=-1.5),
        Variable("wave", "complex64", dims=("k",)),
        Variable("image", "uint16", dims=("x", "y")),
        Variable("label", "str", dims=("k",)),
    ],
    coords=[
        Coordinate("k", np.array(["alpha", "béta", ""]), description="text coordinate"),
        Coordinate("x", np.arange(2.0), units="deg"),
        Coordinate("y", np.arange(3)),
    ],
)


def schemas() -> list[tuple[str, Schema]]:
    out = [("odd", ODD)]
    for pipe in list_pipelines():
        out.append((pipe.name, get_pipeline(pipe.name).output_schema(pipe.resolve({}))))
    return out


@pytest.mark.parametrize(
    "layout", [StoreLayout(4), StoreLayout(4, shard=8)], ids=["chunks", "shards"]
)
@pytest.mark.parametrize("n", [0, 30])
def test_a_new_store_is_byte_for_byte_the_store_zarr_makes(tmp_path, layout, n):
    ids = [f"obs-{i}" for i in range(n)]
    for name, schema in schemas():
        attrs = {"pipeline": name, "schema": schema.describe(), "note": "ünïcode"}
        ours, theirs = tmp_path / f"{name}-ours.zarr", tmp_path / f"{name}-zarr.zarr"
        with warnings.catch_warnings():  # zarr: text coordinates have no v3 spec yet
            warnings.simplefilter("ignore")
            create_store(str(ours), schema, layout, ARRAYS, attrs, ids=ids)
            made_by_zarr(theirs, schema, layout, ids, attrs)
        assert differences(ours, theirs) == [], name
        ds = xr.open_zarr(ours, consolidated=True)
        assert ds.obs.values.tolist() == ids
        assert {v.name for v in schema.variables} <= set(ds.variables)


def test_a_new_store_keeps_its_chunks_beside_each_array_s_metadata(tmp_path):
    """No directory per chunk, nor a ``c`` directory per array: each costs a metadata
    operation (esap_dask.store.CHUNK_KEY_ENCODING), and xarray reads the store as before."""
    ids = [f"obs-{i}" for i in range(30)]
    for name, schema in schemas():
        path = tmp_path / f"{name}.zarr"
        with warnings.catch_warnings():  # zarr: text coordinates have no v3 spec yet
            warnings.simplefilter("ignore")
            create_store(str(path), schema, StoreLayout(4), ARRAYS, {"pipeline": name}, ids=ids)
        nodes = {p.parent for p in path.rglob("zarr.json")}
        assert {p for p in path.rglob("*") if p.is_dir()} == nodes - {path}, name
        obs = sorted(p.name for p in (path / "obs").iterdir())
        assert obs == sorted(["zarr.json", *(f"c.{k}" for k in range(8))]), name
        ds = xr.open_zarr(path, consolidated=True)
        assert ds.obs.values.tolist() == ids
        assert ds.sizes["obs"] == 30


def test_a_run_recorded_in_a_store_just_created_writes_the_bytes_zarr_writes(tmp_path):
    """RunStore.add_run writes a store it created from the root document it wrote; a store
    opened afresh goes through zarr. Both give the same zarr.json, run after run."""
    import shutil
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from esap_dask.store.run import RunStore

    pipe = SimpleNamespace(name="p", version="1", description="ünïcode")
    runs = [{"run": f"r{k}", "params": {"x": k / 3}, "note": "é"} for k in range(2)]
    for name, schema in schemas():
        ours = RunStore(str(tmp_path / f"{name}-ours.zarr"))
        with warnings.catch_warnings():  # zarr: text coordinates have no v3 spec yet
            warnings.simplefilter("ignore")
            ours.create(schema, StoreLayout(4), ARRAYS, pipeline=pipe, created=datetime.now(UTC))
        shutil.copytree(ours.url, tmp_path / f"{name}-zarr.zarr")
        theirs = RunStore(str(tmp_path / f"{name}-zarr.zarr"))
        theirs.open()
        for entry in runs:
            ours.add_run(entry)
            theirs.add_run(entry)
            mine = (Path(ours.url) / "zarr.json").read_bytes()
            assert mine == (Path(theirs.url) / "zarr.json").read_bytes(), name
        assert [r["run"] for r in ours.attrs["runs"]] == ["r0", "r1"]
        assert xr.open_zarr(ours.url, consolidated=True).attrs["esap"]["runs"][1]["note"] == "é"
