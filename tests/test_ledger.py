"""The ledger apart from the products: its table, the old layout read and moved, CF attrs,
inferred schemas, ``run --dry-run``, ``--max-attempts`` and ``status --failed``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

import esap_dask
from esap_dask import ledger, map_observations, read_ledger
from esap_dask.cli import EXIT_FAILED, EXIT_GIVEN_UP, main
from esap_dask.engine.ledger import COLUMNS, read_columns
from esap_dask.engine.status import store_status
from esap_dask.pipeline import SchemaError, infer_schema
from esap_dask.store import TIME_UNITS

ROOT = Path(__file__).resolve().parents[1]


def make_files(directory: Path, n: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = directory / f"obs{i:05d}.dat"
        p.write_bytes(f"observation {i}\n".encode() * (1 + i))
        paths.append(str(p))
    return paths


def listing(path: Path, files: list[str]) -> str:
    path.write_text("".join(f"{f}\n" for f in files))
    return str(path)


def to_old_layout(store: Path) -> None:
    """Rewrite ``store`` as esap-dask wrote stores before the ledger subgroup.

    The layout of the main branch up to this change: 14 ``ledger_<column>`` arrays
    beside the products along ``obs``, on the products' chunk grid, with attrs
    ``units`` (empty when unitless) and ``description``, built here array by array.
    """
    group = zarr.open_group(str(store), mode="r+")
    values = read_columns(group, [c.name for c in COLUMNS])
    n, chunks = group["obs"].shape[0], group["obs"].chunks
    for c in COLUMNS:
        attrs = {"units": c.units, "description": c.description}
        if c.units == TIME_UNITS:
            attrs["calendar"] = "proleptic_gregorian"
        arr = group.create_array(
            f"ledger_{c.name}",
            shape=(n,),
            dtype=str if c.dtype == "str" else c.dtype,
            chunks=chunks,
            fill_value=c.fill,
            dimension_names=["obs"],
            attributes=attrs,
        )
        arr[:] = values[c.name]
    del group["ledger"]
    zarr.consolidate_metadata(group.store)


def test_products_apart_and_the_ledger_as_a_table(tmp_path: Path, client: Any) -> None:
    files = make_files(tmp_path / "in", 4)
    os.remove(files[2])
    store = tmp_path / "s.zarr"
    map_observations("helloworld", files, store, client=client)
    ds = xr.open_zarr(store)
    assert sorted(ds.variables) == ["checksum", "greeting", "obs", "size"]
    for name in ds.variables:  # CF: no empty units; long_name where described
        assert ds[name].attrs.get("units", "x") != "", name
    assert ds["size"].attrs["long_name"] and ds["obs"].attrs["long_name"] == "observation id"
    table = ledger(str(store))
    assert list(table.columns[:5]) == ["status", "attempts", "error_type", "error", "traceback"]
    assert table.index.name == "obs" and table.index.tolist() == ds.obs.values.tolist()
    assert table.status.tolist() == ["done", "done", "failed", "done"]
    assert list(table.status.cat.categories) == ["pending", "done", "failed"]
    bad = table.loc["obs00002.dat"]
    assert bad.error_type == "FileNotFoundError" and "no such file" in bad.error
    assert "Traceback" in bad.traceback and bad.attempts == 1
    assert isinstance(bad.end, pd.Timestamp) and str(bad.end.tz) == "UTC"
    assert bad.source == files[2] and bad.fingerprint == "missing"
    # read_ledger takes a path too (it wanted a zarr.Group before)
    plan_columns = read_ledger(str(store))
    assert plan_columns.ids.tolist() == table.index.tolist()
    assert plan_columns.attempts.tolist() == [1, 1, 1, 1]
    # the raw ledger group: CF flags, and the obs coordinate inherited in a DataTree
    raw = xr.open_datatree(store, engine="zarr")["ledger"].to_dataset()
    assert raw.obs.values.tolist() == ds.obs.values.tolist()
    assert raw.status.attrs["flag_values"] == [0, 1, 2]
    assert raw.status.attrs["flag_meanings"] == "pending done failed"
    assert raw.attempts.attrs["units"] == "1"
    assert raw.key_field.values.tolist() == ["fingerprint", "params", "version"]
    with pytest.raises(TypeError, match=r"path, a URL or a zarr\.Group"):
        read_ledger(42)  # type: ignore[arg-type]


def test_a_store_of_the_old_layout_is_read_then_moved_without_loss(
    tmp_path: Path, client: Any
) -> None:
    files = make_files(tmp_path / "in", 6)
    store = tmp_path / "old.zarr"
    map_observations("helloworld", files, store, client=client, chunk=4)
    Path(files[5]).write_bytes(b"changed")  # reprocessed by the run after the move
    before = ledger(store)
    to_old_layout(store)
    old = xr.open_zarr(store)
    assert "ledger_status" in old and "ledger" not in zarr.open_group(str(store), mode="r")
    # read as it is: the table, the planning columns, status, the CLI
    pd.testing.assert_frame_equal(ledger(store), before)
    assert read_ledger(str(store)).status.tolist() == [1] * 6
    assert store_status(str(store))["counts"] == {"pending": 0, "done": 6, "failed": 0}
    shown = CliRunner().invoke(main, ["status", str(store), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["total"] == 6
    # a dry run neither moves nor writes it
    plan = map_observations("helloworld", files, store, dry_run=True)
    assert [(e.observation.id, e.reason) for e in plan.todo] == [("obs00005.dat", "changed")]
    assert "ledger_status" in xr.open_zarr(store)
    # the next run moves it, under its lock, then runs as usual
    summary = map_observations("helloworld", files, store, client=client)
    assert summary.notes[0].startswith("moved the store's ledger into its 'ledger' subgroup")
    assert (summary.processed, summary.reasons) == (1, {"changed": 1})
    moved = xr.open_zarr(store)
    assert sorted(moved.data_vars) == ["checksum", "greeting", "size"]
    after = ledger(store)
    kept = before.index[:5]
    pd.testing.assert_frame_equal(after.loc[kept], before.loc[kept])  # every column kept
    assert after.attempts.iloc[5] == 2 and after.run.iloc[5] == summary.run_id
    extra = tmp_path / "extra.dat"
    extra.write_text("one more\n")
    more = map_observations("helloworld", [*files, str(extra)], store, client=client)
    assert (more.reasons, more.succeeded) == ({"new": 1}, 1)
    assert ledger(store).index.tolist()[-1] == "extra.dat"


def test_a_move_cut_short_is_redone_and_leftovers_are_removed(tmp_path: Path, client: Any) -> None:
    files = make_files(tmp_path / "in", 5)
    store = tmp_path / "s.zarr"
    map_observations("helloworld", files, store, client=client, chunk=2)
    before = ledger(store)
    # cut short before its commit point: an incomplete subgroup beside the old arrays
    to_old_layout(store)
    group = zarr.open_group(str(store), mode="r+")
    half = group.create_group("ledger", attributes={"incomplete": True})
    half.create_array("status", shape=(5,), dtype="i1", chunks=(2,), fill_value=0)
    zarr.consolidate_metadata(group.store)
    pd.testing.assert_frame_equal(ledger(store), before)  # the old arrays still count
    assert map_observations("helloworld", files, store, client=client).processed == 0
    pd.testing.assert_frame_equal(ledger(store), before)
    assert not any(n.startswith("ledger_") for n in zarr.open_group(str(store)).array_keys())
    # cut short after it: the complete subgroup wins, the old arrays left are deleted
    group = zarr.open_group(str(store), mode="r+")
    stale = group.create_array("ledger_status", shape=(5,), dtype="i1", chunks=(2,))
    stale[:] = 0
    zarr.consolidate_metadata(group.store)
    assert (read_ledger(str(store)).status == 1).all()
    map_observations("helloworld", files, store, client=client)
    assert "ledger_status" not in xr.open_zarr(store)
    pd.testing.assert_frame_equal(ledger(store), before)


def test_inferred_schemas_name_dims_and_keep_units() -> None:
    import astropy.units as u

    energy = xr.DataArray(
        [1.0, 2.0, 4.0], dims="energy", attrs={"units": "TeV", "long_name": "energy"}
    )
    counts = xr.DataArray(
        np.arange(3), dims="energy", coords={"energy": energy}, attrs={"units": "count"}
    )
    schema = infer_schema(
        "f",
        {"counts": counts, "livetime": 1800.0 * u.s, "pair": np.array([1, 2]), "rate": 0.5},
    )
    by_name = {v.name: v for v in schema.variables}
    assert by_name["counts"].dims == ("energy",) and by_name["counts"].units == "count"
    assert by_name["livetime"].units == "s" and by_name["livetime"].dims == ()
    assert by_name["pair"].dims == ("pair_dim0",) and by_name["pair"].units == ""
    coords = {c.name: c for c in schema.coords}
    assert coords["energy"].units == "TeV" and list(coords["energy"].values) == [1.0, 2.0, 4.0]
    assert list(coords["pair_dim0"].values) == [0, 1] and coords["pair_dim0"].units == ""
    other = xr.DataArray(np.arange(4), dims="energy")
    with pytest.raises(SchemaError, match="dimension 'energy' of 'b'"):
        infer_schema("f", {"a": counts, "b": other})


def test_dry_run_prints_exactly_what_would_run_and_starts_no_cluster(
    tmp_path: Path, client: Any
) -> None:
    files = make_files(tmp_path / "in", 5)
    os.remove(files[2])
    store = tmp_path / "s.zarr"
    observations = listing(tmp_path / "list.txt", files)
    map_observations("helloworld", observations, store, client=client)
    Path(files[1]).write_bytes(b"new content, another size")
    files += make_files(tmp_path / "later", 6)[5:]  # obs00005.dat, new
    observations = listing(tmp_path / "list.txt", files)
    before = ledger(store)
    refuse = (
        "import sys, distributed, distributed.deploy.spec as spec\n"
        "def refuse(*a, **k):\n"
        "    raise SystemExit('a Dask client or cluster was started')\n"
        "distributed.Client.__init__ = refuse\n"
        "spec.SpecCluster.__init__ = refuse\n"
        "from esap_dask.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["run", "helloworld", "-o", observations, "-s", str(store), "--dry-run"]
    proc = subprocess.run(
        [sys.executable, "-c", refuse, *args, "--facility", "no-such-facility"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("dry run: 3 observation(s) would run, 3 skipped")
    assert "no cluster started, nothing written" in lines[0]
    assert lines[1] == "changed     obs00001.dat"
    assert lines[2].startswith("failed      obs00002.dat (attempt 2; last error FileNotFoundError:")
    assert "no such file" in lines[2]
    assert lines[3] == "new         obs00005.dat"
    assert len(lines) == 4, proc.stdout
    pd.testing.assert_frame_equal(ledger(store), before)  # nothing written
    assert not Path(f"{store}.lock").exists()
    as_json = subprocess.run(
        [sys.executable, "-c", refuse, *args, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    plan = json.loads(as_json.stdout)
    assert [(r["observation"], r["reason"]) for r in plan["run"]] == [
        ("obs00001.dat", "changed"),
        ("obs00002.dat", "failed"),
        ("obs00005.dat", "new"),
    ]
    assert plan["run"][1]["error_type"] == "FileNotFoundError" and plan["skipped"] == 3
    # the API returns the same plan
    api = map_observations("helloworld", observations, store, dry_run=True)
    assert [e.reason for e in api.todo] == ["changed", "failed", "new"]


def test_max_attempts_gives_a_file_up_after_two_nights(tmp_path: Path, client: Any) -> None:
    files = make_files(tmp_path / "in", 3)
    files.append(str(tmp_path / "in" / "lost.dat"))  # never there: fails every night
    observations = listing(tmp_path / "list.txt", files)
    store = tmp_path / "nightly.zarr"
    nightly = ["run", "helloworld", "-o", observations, "-s", str(store), "--max-attempts", "2"]
    runner = CliRunner()  # runs on the session's LocalCluster (the default client)
    first = runner.invoke(main, [*nightly, "--json"])
    assert first.exit_code == EXIT_FAILED, first.output
    assert json.loads(first.output)["failed"] == 1
    second = runner.invoke(main, [*nightly, "--json"])
    assert second.exit_code == EXIT_FAILED, second.output
    summary = json.loads(second.output)
    assert (summary["processed"], summary["reasons"]) == (1, {"failed": 1})
    third = runner.invoke(main, nightly)
    assert third.exit_code == EXIT_GIVEN_UP, third.output
    assert "given up lost.dat after 2 attempt(s): FileNotFoundError:" in third.output
    assert "failed 2 time(s) or more and were given up" in third.output
    table = ledger(store)
    assert table.loc["lost.dat", "attempts"] == 2, "tried twice over three nights"
    assert (table.drop("lost.dat").attempts == 1).all()
    planned = runner.invoke(main, [*nightly, "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert "3 skipped (done and unchanged), 1 given up" in planned.output
    assert "given up    lost.dat (failed 2 time(s); last error FileNotFoundError:" in planned.output
    # the API says the same
    again = map_observations("helloworld", observations, store, max_attempts=2, client=client)
    assert not again.ok and again.failed == 0 and again.processed == 0
    assert again.given_up[0]["observation"] == "lost.dat"
    assert again.given_up[0]["error_type"] == "FileNotFoundError"
    # status: given up, with the error and the traceback's tail
    shown = runner.invoke(main, ["status", str(store), "--failed"])
    assert shown.exit_code == 0, shown.output
    assert "(given up: 1, after 2 attempts)" in shown.output
    assert "given up lost.dat: FileNotFoundError:" in shown.output
    assert "attempts: 2" in shown.output and "Traceback (most recent call last)" in shown.output
    report = json.loads(runner.invoke(main, ["status", str(store), "--json"]).output)
    assert report["given_up"] == 1 and report["max_attempts"] == 2
    # once the file is there (another fingerprint), it runs again
    Path(files[-1]).write_text("found\n")
    fixed = runner.invoke(main, [*nightly, "--json"])
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.output)["reasons"] == {"failed": 1}
    assert (esap_dask.ledger(store).status == "done").all()


def test_an_unchanged_rerun_writes_nothing_to_the_store(tmp_path: Path, client: Any) -> None:
    """The consolidated metadata of the ledger group counts as up to date (no rewrite)."""
    store = tmp_path / "s.zarr"
    map_observations("helloworld", range(6), store, client=client, chunk=2)
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    again = map_observations("helloworld", range(6), store, client=client)
    assert again.processed == 0
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == stamps
