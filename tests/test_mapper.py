"""The observation mapper: store layout, ledger, incremental reruns, failures, exactly once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

from esap_dask import (
    ObservationError,
    Pipeline,
    Variable,
    ledger,
    map_observations,
    read_ledger,
)
from esap_dask.engine.ledger import DONE, FAILED
from esap_dask.store import obs_arrays, open_store

HERE = Path(__file__).parent
VECTOR = str(HERE / "pipelines" / "vector.py")
CRASHY = str(HERE / "pipelines" / "crashy.py")


def make_files(directory: Path, n: int, start: int = 0) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = directory / f"obs{i:05d}.dat"
        p.write_bytes(f"observation {i}\n".encode() * (1 + i % 7))
        paths.append(str(p))
    return paths


def test_helloworld_store_opens_with_xarray(tmp_path, client):
    files = make_files(tmp_path / "in", 30)
    store = tmp_path / "hello.zarr"
    summary = map_observations("helloworld", files, store, client=client, params={"message": "Hi"})
    assert (summary.total, summary.processed, summary.succeeded, summary.failed) == (30, 30, 30, 0)
    ds = xr.open_zarr(store)
    assert list(ds.obs.values) == [Path(f).name for f in files]
    for f, size, checksum, greeting in zip(
        files, ds["size"].values, ds.checksum.values, ds.greeting.values, strict=True
    ):
        data = Path(f).read_bytes()
        assert size == len(data)
        assert checksum == hashlib.sha256(data).hexdigest()
        assert greeting == f"Hi, {Path(f).name}!"
    assert ds["size"].attrs["units"] == "byte"
    assert sorted(ds.data_vars) == ["checksum", "greeting", "size"]  # products only
    table = ledger(store)
    assert table.index.tolist() == ds.obs.values.tolist()
    assert (table.status == "done").all()
    assert (table.checksum.to_numpy() == ds.checksum.values).all()
    assert table.start.dtype.kind == "M" and (table.seconds >= 0).all()
    assert ds.attrs["esap"]["pipeline"] == "helloworld"
    raw = xr.open_zarr(store, group="ledger")  # the ledger's own arrays, CF attrs
    assert raw.status.attrs["flag_meanings"] == "pending done failed"
    assert raw.status.attrs["flag_values"] == [0, 1, 2] and "units" not in raw.status.attrs
    assert raw.time.dtype.kind == "M"  # decoded to datetime64


def test_plain_values_and_duplicates(tmp_path, client):
    summary = map_observations("helloworld", range(1, 11), tmp_path / "v.zarr", client=client)
    assert summary.succeeded == 10
    ds = xr.open_zarr(tmp_path / "v.zarr")
    assert ds.greeting.values[0] == "Hello, 1!"
    a, b = tmp_path / "a", tmp_path / "b"
    dupes = make_files(a, 1) + make_files(b, 1)
    with pytest.raises(ObservationError, match=r"duplicate observation id 'obs00000\.dat'") as err:
        map_observations("helloworld", dupes, tmp_path / "d.zarr", client=client)
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_plain_function_schema_inferred(tmp_path, client):
    def square(x):
        return {"square": x * x, "pair": np.array([x, -x])}

    summary = map_observations(square, [1, 2, 3], tmp_path / "f.zarr", client=client)
    assert summary.succeeded == 3
    ds = xr.open_zarr(tmp_path / "f.zarr")
    assert ds.square.values.tolist() == [1, 4, 9]
    assert ds.pair.values.tolist() == [[1, -1], [2, -2], [3, -3]]
    assert ds.pair.dims == ("obs", "pair_dim0")
    assert "units" not in ds.pair.attrs and "units" not in ds.pair_dim0.attrs


def test_rerun_appends_and_skips(tmp_path, client):
    files = make_files(tmp_path / "in", 20)
    store = tmp_path / "s.zarr"
    map_observations("helloworld", files, store, client=client)
    before = xr.open_zarr(store).load()
    made_by = ledger(store).run.iloc[0]
    more = files + make_files(tmp_path / "in", 5, start=20)
    summary = map_observations("helloworld", more, store, client=client)
    assert (summary.processed, summary.skipped, summary.reasons) == (5, 20, {"new": 5})
    after = xr.open_zarr(store).load()
    assert after.sizes["obs"] == 25
    xr.testing.assert_equal(
        after[["size", "checksum"]].isel(obs=slice(0, 20)), before[["size", "checksum"]]
    )
    # the earlier rows keep the run that made them
    assert set(ledger(store).run.iloc[:20]) == {made_by}


def test_changed_failed_params_version_force(tmp_path, client):
    files = make_files(tmp_path / "in", 12)
    store = tmp_path / "s.zarr"
    map_observations("helloworld", files, store, client=client)
    Path(files[3]).write_bytes(b"changed content")
    os.remove(files[5])
    summary = map_observations("helloworld", files, store, client=client)
    assert summary.reasons == {"changed": 2}  # the rewritten file, and the removed one
    assert [f["observation"] for f in summary.failures] == ["obs00005.dat"]
    assert "no such file" in summary.failures[0]["message"]
    make_files(tmp_path / "in", 6)  # brings obs00005 back (and touches 0-4)
    summary = map_observations("helloworld", files, store, client=client)
    assert summary.reasons["failed"] == 1 and summary.failed == 0
    summary = map_observations("helloworld", files, store, client=client, params={"message": "Bye"})
    assert summary.reasons == {"parameters": 12}
    assert "other parameters" in summary.notes[0]
    summary = map_observations(
        "helloworld", files, store, client=client, params={"message": "Bye"}, force=True
    )
    assert summary.reasons == {"forced": 12}
    assert ledger(store).attempts.min() >= 3


def test_version_change_reprocesses_all(tmp_path, client):
    from dataclasses import replace

    from esap_dask import get_pipeline

    store = tmp_path / "s.zarr"
    hello = get_pipeline("helloworld")
    map_observations(hello, range(5), store, client=client)
    summary = map_observations(replace(hello, version="9.9"), range(5), store, client=client)
    assert summary.reasons == {"version": 5}
    assert "another pipeline version" in summary.notes[0]
    assert set(ledger(store).version) == {"9.9"}


def test_one_failure_does_not_spoil_its_batch(tmp_path, client):
    files = make_files(tmp_path / "in", 10)
    Path(files[4]).unlink()
    store = tmp_path / "s.zarr"
    summary = map_observations("helloworld", files, store, client=client, batch_size=10, chunk=10)
    assert (summary.succeeded, summary.failed) == (9, 1)
    ds = xr.open_zarr(store)
    assert ds["size"].values[4] == 0 and ds.checksum.values[4] == ""
    assert (ds["size"].values[[0, 1, 2, 3, 5, 6, 7, 8, 9]] > 0).all()
    table = ledger(store)
    assert table.error_type.iloc[4] == "FileNotFoundError"
    assert "FileNotFoundError" in table.traceback.iloc[4]
    assert table.status.iloc[4] == "failed" and table.attempts.iloc[4] == 1


@pytest.mark.slow
def test_sharded_concurrent_writes_are_exact(tmp_path):
    """1,000 observations, 10 per shard, 4 workers writing at once: every value checked."""
    from distributed import Client, LocalCluster

    from tests.pipelines.vector import expected

    store = tmp_path / "sharded.zarr"
    runs = list(range(1000))
    with (
        LocalCluster(n_workers=4, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        summary = map_observations(
            VECTOR, runs, store, client=c, shard=10, chunk=2, batch_size=1, params={"scale": 0.5}
        )
        workers = set(ledger(store).worker)
    assert summary.succeeded == 1000 and summary.failed == 0
    assert len(workers) == 4  # all four wrote
    arr = zarr.open_group(str(store), mode="r")["vector"]
    assert arr.shards == (10, 16) and arr.chunks == (2, 16)
    ds = xr.open_zarr(store)
    reference = np.stack([expected(r, 0.5) for r in runs])
    corrupted = int((ds.vector.values != reference).any(axis=1).sum())
    assert corrupted == 0
    np.testing.assert_array_equal(ds.total.values, reference.sum(axis=1))


def test_worker_killed_once_is_retried(tmp_path, client):
    store = tmp_path / "s.zarr"
    params = {"crash_once": 7, "marker_dir": str(tmp_path)}
    summary = map_observations(CRASHY, range(20), store, client=client, params=params)
    assert (summary.succeeded, summary.failed) == (20, 0)
    assert (tmp_path / "crashed-7").exists()  # it did kill a worker
    assert xr.open_zarr(store).double.values.tolist() == [2 * i for i in range(20)]


@pytest.mark.parametrize("workers", [2, 1])
def test_batch_that_keeps_killing_workers_is_reported(tmp_path, client, workers):
    """With one worker, every queued batch shares the crashing one's worker and its blame."""
    from distributed import Client, LocalCluster

    store = tmp_path / "s.zarr"
    config = {"distributed.scheduler.allowed-failures": 1}
    with dask.config.set(config), contextlib.ExitStack() as stack:
        if workers == 1:
            cluster = stack.enter_context(
                LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0")
            )
            client = stack.enter_context(Client(cluster))
        summary = map_observations(
            CRASHY, range(20), store, client=client, chunk=5, batch_size=5, params={"crash": 12}
        )
    failed = {f["observation"] for f in summary.failures}
    assert failed == {"10", "11", "12", "13", "14"}  # the batch of run 12
    assert all(f["error_type"] == "KilledWorker" for f in summary.failures)
    assert "crashes the worker" in summary.failures[0]["message"]
    assert summary.succeeded == 15
    ledger = read_ledger(open_store(str(store), mode="r"))
    assert (ledger.status[10:15] == FAILED).all() and (ledger.status[:10] == DONE).all()


def test_provenance_document(tmp_path, client):
    files = make_files(tmp_path / "in", 4)
    store = tmp_path / "p.zarr"
    summary = map_observations(
        "helloworld", files, store, client=client, user="alice", params={"message": "Hey"}
    )
    doc = json.loads(Path(summary.provenance).read_text())
    assert summary.provenance == f"{store}.provenance/{summary.run_id}.json"
    (run,) = doc["activity"]
    assert doc["activity"][run]["prov:type"] == "voprov:Activity"
    used = {
        doc["entity"][u["prov:entity"]]["prov:location"]: doc["entity"][u["prov:entity"]]
        for u in doc["used"].values()
    }
    assert set(used) == set(files)
    for f in files:
        digest = hashlib.sha256(Path(f).read_bytes()).hexdigest()
        assert used[f]["voprov:checksum"] == f"sha256:{digest}"
    (gen,) = doc["wasGeneratedBy"].values()
    assert doc["entity"][gen["prov:entity"]]["prov:location"] == str(store)
    agents = {a["voprov:name"]: a for a in doc["agent"].values()}
    assert agents["alice"]["prov:type"] == "prov:Person"
    assert "zarr" in json.loads(agents["esap-dask"]["esap:versions"])
    params = {
        e["voprov:name"]: e["prov:value"]
        for e in doc["entity"].values()
        if e["prov:type"] == "voprov:Parameter"
    }
    assert params == {"message": "Hey", "sleep": 0.0, "fail": False}
    runs = xr.open_zarr(store).attrs["esap"]["runs"]
    assert runs[-1]["provenance"] == summary.provenance and runs[-1]["user"] == "alice"


@pytest.mark.parametrize(
    "name", ['quote"d.dat', "back\\slash.dat", "ünïcode.dat", "new\nline.dat", "plain.dat"]
)
def test_provenance_is_valid_json_whatever_the_input_names(tmp_path, client, name):
    """File names are any bytes a file system allows: the document stays JSON, names exact."""
    folder = tmp_path / "in"
    folder.mkdir()
    files = [folder / name, folder / "other.dat"]
    for f in files:
        f.write_text("x")
    summary = map_observations(
        "helloworld", [str(f) for f in files], tmp_path / "p.zarr", client=client
    )
    assert summary.succeeded == 2
    doc = json.loads(Path(summary.provenance).read_text())  # valid JSON, or this raises
    inputs = {k: e for k, e in doc["entity"].items() if k.startswith("esap:input/")}
    assert {e["voprov:name"] for e in inputs.values()} == {name, "other.dat"}
    assert {e["prov:location"] for e in inputs.values()} == {str(f) for f in files}
    used = {u["prov:entity"] for u in doc["used"].values()}
    assert used == set(inputs) == {"esap:input/" + name, "esap:input/other.dat"}
    assert set(doc["used"]) == {"_:used-" + name, "_:used-other.dat"}


def test_a_file_name_that_is_not_utf8_is_named_and_nothing_is_written(tmp_path):
    """Bytes of another encoding in a file name: a clear error naming it, no store, no trace."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.dat").write_text("x")
    bad = os.fsencode(folder) + b"/caf\xe9.dat"  # latin-1, not UTF-8
    with open(bad, "wb") as f:
        f.write(b"x")
    store = tmp_path / "s.zarr"
    with pytest.raises(ObservationError) as err:
        map_observations("helloworld", str(folder / "*.dat"), store)
    assert "caf\\xe9.dat" in str(err.value) and "rename the file" in str(err.value)
    assert str(folder) in str(err.value)  # the whole path: where it is
    assert not store.exists()


def test_a_pipeline_that_moves_its_input_away_fails_nothing(tmp_path, client):
    """The ledger's checksum is read with the input's check, before the pipeline runs.

    It was read after the pipeline, outside the observation's error handling: a pipeline
    that moves its input away (an archiver; or any file removed while it was processed)
    made the whole batch fail, every observation of it marked failed.
    """
    files = make_files(tmp_path / "in", 12)
    done = tmp_path / "done"
    done.mkdir()

    def archive(path):
        size = os.path.getsize(path)
        os.replace(path, done / os.path.basename(path))
        return {"size": size}

    pipe = Pipeline(  # a declared schema: inferring it would run archive on a file first
        name="archive",
        version="1",
        function=archive,
        schema=[Variable("size", "int64", units="byte")],
    )
    store = tmp_path / "s.zarr"
    summary = map_observations(pipe, files, store, client=client)
    assert (summary.succeeded, summary.failed) == (12, 0), summary.failures
    table = ledger(store)
    moved = sorted(done.iterdir())
    assert [p.name for p in moved] == sorted(table.index)  # every input, moved once
    for path in moved:  # each checksum is the content's, read before the move
        row = table.loc[path.name]
        assert row.checksum == hashlib.sha256(path.read_bytes()).hexdigest()


def test_nothing_to_do_starts_no_cluster(tmp_path, client):
    store = tmp_path / "s.zarr"
    map_observations("helloworld", range(3), store, client=client)
    # no client given and no default one: a cluster would have to be started
    summary = map_observations(
        "helloworld", range(3), store, client=None, facility="no-such-facility"
    )
    assert (summary.processed, summary.skipped) == (0, 3)


def test_interrupted_append_is_repaired(tmp_path, client):
    store = tmp_path / "s.zarr"
    map_observations("helloworld", range(6), store, client=client)
    group = open_store(str(store))
    for name, arr in obs_arrays(group):  # a crash after growing the data arrays only
        if name != "obs":
            arr.resize((9, *arr.shape[1:]))
    summary = map_observations("helloworld", range(8), store, client=client)
    assert (summary.processed, summary.skipped) == (2, 6)
    ds = xr.open_zarr(store)
    assert ds.sizes["obs"] == 8 and (ledger(store).status == "done").all()


@pytest.mark.slow
def test_incremental_over_10000_observations(tmp_path, client):
    files = make_files(tmp_path / "in", 10_000)
    pattern = str(tmp_path / "in" / "*.dat")
    store = tmp_path / "big.zarr"
    first = map_observations("helloworld", pattern, store, client=client)
    assert (first.processed, first.succeeded) == (10_000, 10_000)
    again = map_observations("helloworld", pattern, store, client=client)
    assert (again.processed, again.skipped) == (0, 10_000)
    touched = files[::1000]
    later = time.time() + 10
    for f in touched:
        os.utime(f, (later, later))
    third = map_observations("helloworld", pattern, store, client=client)
    assert (third.processed, third.reasons) == (10, {"changed": 10})
    runs = ledger(store).run.to_dict()
    assert {o for o, r in runs.items() if r == third.run_id} == {Path(f).name for f in touched}


def test_parameter_that_changes_the_axes_needs_a_new_store(tmp_path, client):
    from esap_dask import Coordinate, Parameter, Pipeline, Schema, SchemaError, Variable

    def spectrum(run, *, emin, nbins):
        return {"counts": np.full(nbins, run)}

    pipe = Pipeline(
        name="spectrum",
        version="1",
        function=spectrum,
        parameters=[Parameter("emin", float, 0.1), Parameter("nbins", int, 4)],
        schema=lambda p: Schema(
            [Variable("counts", "int64", dims=("energy",))],
            [Coordinate("energy", np.geomspace(p["emin"], 100, p["nbins"]), units="TeV")],
        ),
    )
    store = tmp_path / "s.zarr"
    map_observations(pipe, range(3), store, client=client)
    before = xr.open_zarr(store).load()
    for params, what in (
        ({"nbins": 5}, "per-observation shape"),
        ({"emin": 1.0}, "coordinate 'energy' differs"),
    ):
        with pytest.raises(SchemaError, match=what):
            map_observations(pipe, range(3), store, client=client, params=params)
    xr.testing.assert_identical(xr.open_zarr(store).load(), before)  # nothing touched
    # the same error through the default client (a notebook's), not a generator error
    with pytest.raises(SchemaError, match="coordinate 'energy' differs"):
        map_observations(pipe, range(3), store, client=None, params={"emin": 1.0})


def test_editing_a_plain_function_reprocesses_its_store(tmp_path, client):
    store = tmp_path / "f.zarr"

    def triple(x):
        return {"y": 3 * x}

    map_observations(triple, [1, 2], store, client=client)
    again = map_observations(triple, [1, 2], store, client=None, facility="no-such-facility")
    assert (again.processed, again.skipped) == (0, 2)  # nothing to do: no cluster needed

    def triple(x):  # the user edits the function in the notebook
        return {"y": 3 * x + 0}

    edited = map_observations(triple, [1, 2], store, client=client)
    assert edited.reasons == {"version": 2}


def test_editing_a_file_a_parameter_names_reprocesses(tmp_path, client):
    from esap_dask import Parameter, Pipeline, Variable

    def scaled(run, *, config):
        factor = float(Path(config).read_text()) if config else 1.0
        return {"value": run * factor}

    pipe = Pipeline(
        name="scaled",
        version="1",
        function=scaled,
        parameters=[Parameter("config", str, "", "a file holding the factor", file=True)],
        schema=[Variable("value", "float64")],
    )
    config = tmp_path / "factor.txt"
    config.write_text("2")
    store = tmp_path / "s.zarr"
    map_observations(pipe, range(4), store, client=client, params={"config": str(config)})
    same = map_observations(pipe, range(4), store, client=client, params={"config": str(config)})
    assert same.processed == 0
    config.write_text("3")  # the same path, another content
    edited = map_observations(pipe, range(4), store, client=client, params={"config": str(config)})
    assert edited.reasons == {"parameters": 4}
    assert xr.open_zarr(store).value.values.tolist() == [0.0, 3.0, 6.0, 9.0]


@pytest.mark.parametrize(
    "pattern",
    [
        "*.fits",
        "run_0[0-4]*.fits",
        "run_?1.fits",
        ".*",
        "*",
        "sub/*.fits",
        "*/*.fits",
        "**/*.fits",
        "none*.fits",
    ],
)
def test_globs_match_what_glob_matches(tmp_path, pattern):
    """The one-listing fast path for globs finds exactly what ``glob.glob`` finds, sorted."""
    import glob

    from esap_dask.engine.observations import as_observations

    for name in ("run_01.fits", "run_11.fits", "run_05.fits", ".hidden.fits", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run_21.fits").write_text("x")
    expected = sorted(glob.glob(str(tmp_path / pattern), recursive=True))
    if not expected:
        with pytest.raises(ObservationError, match="no file matches"):
            as_observations(str(tmp_path / pattern))
        return
    found = as_observations(str(tmp_path / pattern))
    assert [o.value for o in found] == expected
    assert [o.id for o in found] == [os.path.basename(p) for p in expected]
    assert {o.kind for o in found} == {"file"}


@pytest.mark.parametrize("n_inputs", [0, 1, 3, 7])
def test_provenance_written_in_pieces_is_one_document(monkeypatch, n_inputs):
    """The document is encoded a few inputs at a time; joined, it is valid and complete."""
    from datetime import UTC, datetime

    from esap_dask.engine import provenance

    monkeypatch.setattr(provenance, "_INPUTS_AT_ONCE", 3)
    now = datetime.now(UTC)
    doc = provenance.build_document(
        run_id="r1",
        pipeline={"name": "p", "version": "1"},
        params={"x": 1},
        facility="local",
        store="/s.zarr",
        started=now,
        ended=now,
        user="u",
        summary={"total": n_inputs},
    )
    ids = [f"obs{i}" for i in range(n_inputs)]
    inputs = {
        "id": np.asarray(ids, dtype=object),
        "source": np.asarray([f'/d/"é\\{i}' for i in ids], dtype=object),  # escapes
        "fingerprint": np.asarray(["1-2"] * n_inputs, dtype=object),
        "checksum": np.asarray(["ab" if i % 2 else "" for i in range(n_inputs)], dtype=object),
    }
    parsed = json.loads("".join(provenance.encode_document(doc, "r1", inputs)))
    entities = {
        e["voprov:name"]: e
        for e in parsed["entity"].values()
        if e["prov:type"] == "voprov:Entity" and "esap:fingerprint" in e
    }
    assert sorted(entities) == sorted(ids)
    assert [entities[i]["prov:location"] for i in ids] == [f'/d/"é\\{i}' for i in ids]
    assert [entities[i].get("voprov:checksum") for i in ids] == [
        "sha256:ab" if k % 2 else None for k in range(n_inputs)
    ]
    assert sorted(u["prov:entity"] for u in parsed["used"].values()) == sorted(
        f"esap:input/{i}" for i in ids
    )
    assert parsed["wasInfluencedBy"] and parsed["activity"] == doc["activity"]


@pytest.mark.parametrize("n, unit", [(10_000, 200), (20_000, 2500), (1000, 7), (5, 1)])
def test_batches_shrink_towards_the_end_and_keep_write_units_whole(n, unit):
    from itertools import pairwise

    from esap_dask.engine.execute import make_batches

    rows = list(range(n))
    batches = make_batches(rows, unit, 1, parts=8)
    assert [p for b in batches for p in b] == rows  # every row once, in order
    for b in batches:  # no write unit split between two batches
        assert b[0] % unit == 0
    sizes = [len(b) for b in batches]
    assert all(a >= b for a, b in pairwise(sizes))
    assert sizes[-1] <= max(unit, -(-n // 8))  # the last batch is small: workers end together
    fixed = [len(b) for b in make_batches(rows, unit, 3 * unit)]  # a batch size given
    assert all(s >= 3 * unit for s in fixed[:-1]) and sum(fixed) == n
