"""The costs cut for tiny work (issue 17) keep what a user checks: validation, exactly once.

Products are validated against a schema plan computed once per schema; tasks are sized
from a first probe's measured time; the run context travels once per run; an unchanged
rerun starts without importing the cluster machinery.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import esap_dask
from esap_dask import map_observations
from esap_dask.engine.execute import MAX_TASKS, TASKS_PER_THREAD
from esap_dask.engine.observations import READ_BUFFER, SMALL_FILE, sha256_fd
from esap_dask.engine.task import BatchReport

HERE = Path(__file__).parent
PICKY = str(HERE / "pipelines" / "picky.py")
UNEVEN = str(HERE / "pipelines" / "uneven.py")
SCALARS = str(HERE / "pipelines" / "scalars.py")
ROOT = HERE.parent


def test_products_breaking_the_schema_fail_their_observation_only(tmp_path, client):
    store = tmp_path / "p.zarr"
    summary = map_observations(PICKY, range(12), store, client=client, chunk=4)
    why = {f["observation"]: f["message"] for f in summary.failures}
    assert sorted(why, key=int) == ["1", "2", "3", "4", "7", "8", "9", "10"]
    assert why["1"] == "variable 'vector': got shape (5,), declared (4,)"
    assert why["2"] == "variable 'count': got dtype <U4, declared int64"
    assert "returned no 'label'" in why["3"]
    assert why["4"] == "'the pipeline returned undeclared variable(s): extra'"
    ds = xr.open_zarr(store).load()
    good = [0, 5, 6, 11]
    np.testing.assert_array_equal(ds["count"].values[good], good)
    assert [str(v) for v in ds.label.values[good]] == [f"run {r}" for r in good]
    np.testing.assert_array_equal(ds.vector.values[6], np.arange(4) + 6.0)
    assert np.isnan(ds.vector.values[1]).all() and ds["count"].values[2] == 0  # fill values


def test_scalar_products_written_a_column_at_a_time_fail_their_row_only(tmp_path, client):
    """2,500 rows in blocks of 1,024 (task.BLOCK_ROWS): numpy takes each column in one call
    and refuses the 1000 of an ``int8``; that row fails alone, with numpy's message, as do
    the rows whose pipeline raised, and every other row reads back as the number it was."""
    from esap_dask.engine.task import BLOCK_ROWS

    n = 2500
    assert n > 2 * BLOCK_ROWS  # three blocks, the last one short
    store = tmp_path / "s.zarr"
    summary = map_observations(SCALARS, range(n), store, client=client, chunk=500)
    why = {int(f["observation"]): (f["error_type"], f["message"]) for f in summary.failures}
    cursed = {r for r in range(n) if r % 11 == 0}
    too_big = {r for r in range(n) if r % 7 == 0} - cursed
    assert set(why) == cursed | too_big
    assert {why[r] for r in cursed} == {("ValueError", f"run {r} is cursed") for r in cursed}
    assert {why[r] for r in too_big} == {
        ("OverflowError", "Python integer 1000 out of bounds for int8")
    }
    ds = xr.open_zarr(store).load()
    good = np.asarray(sorted(set(range(n)) - set(why)))
    np.testing.assert_array_equal(ds["small"].values[good], good % 100)
    np.testing.assert_array_equal(ds.ratio.values[good], np.where(good % 2, good / 2, good))
    np.testing.assert_array_equal(ds["count"].values[good], good)
    np.testing.assert_array_equal(ds.flag.values[good], good % 2 == 0)
    assert ds.name.values[good].tolist() == [f"run {r}" for r in good]
    bad = np.asarray(sorted(why))  # fill values
    assert (ds["small"].values[bad] == 0).all() and np.isnan(ds.ratio.values[bad]).all()
    assert (ds["count"].values[bad] == 0).all() and not ds.flag.values[bad].any()
    assert set(ds.name.values[bad].tolist()) == {""}
    ledger = esap_dask.ledger(store)
    assert (ledger.status.iloc[bad] == "failed").all() and (
        ledger.status.iloc[good] == "done"
    ).all()
    assert ledger.traceback.iloc[bad].str.contains("Traceback").all()
    assert (ledger.end >= ledger.start).all()


def batch_tasks(stream: list[dict]) -> list[str]:
    """The batch tasks of a run, by key, from a ``get_task_stream`` record."""
    return sorted(str(t["key"]) for t in stream if str(t["key"]).startswith("esap-batch-"))


def test_a_probed_tiny_run_processes_every_observation_once(tmp_path, client):
    """400 observations in 40 write units on 2 threads: two shares, each one task whose
    probe (its first unit) finds the rest tiny and goes on with it."""
    from distributed import get_task_stream

    store = tmp_path / "s.zarr"
    with get_task_stream(client) as ts:
        summary = map_observations("helloworld", range(400), store, client=client, chunk=10)
    assert (summary.succeeded, summary.failed) == (400, 0)
    assert len(batch_tasks(ts.data)) == 2
    ds = xr.open_zarr(store).load()
    assert ds.obs.values.tolist() == [str(i) for i in range(400)]
    assert (esap_dask.ledger(store).attempts == 1).all()
    assert ds["size"].values.tolist() == [len(str(i)) for i in range(400)]
    more = map_observations("helloworld", range(420), store, client=client)
    assert (more.processed, more.skipped) == (20, 400)


def test_a_probe_goes_on_with_tiny_work_and_hands_back_the_rest_of_slow_work(tmp_path, client):
    """Two shares of 40 rows; the first's rows are tiny, the second's are not.

    The first task times its first 10 rows and goes on with its 30 others (one task, one
    worker). The second commits its first 10 rows only; the driver plans its 30 others as
    tasks fed to whichever worker is free, so both workers share them.
    """
    from distributed import get_task_stream

    store = tmp_path / "u.zarr"
    with get_task_stream(client) as ts:
        summary = map_observations(UNEVEN, range(80), store, client=client, chunk=10)
    assert (summary.succeeded, summary.failed) == (80, 0)
    # the two shares, then the second's 30 rows in three tasks (1.5 s of work: 3 x 0.5 s)
    assert len(batch_tasks(ts.data)) == 5
    ledger = esap_dask.ledger(store)
    assert (ledger.attempts == 1).all() and (ledger.status == "done").all()
    first, probe, rest = ledger.iloc[:40], ledger.iloc[40:50], ledger.iloc[50:]
    assert first.worker.nunique() == 1  # one task
    assert probe.worker.nunique() == 1
    assert set(rest.worker) == set(ledger.worker) and ledger.worker.nunique() == 2
    ds = xr.open_zarr(store).load()
    assert ds["run"].values.tolist() == list(range(80))
    again = map_observations(UNEVEN, range(80), store, client=client)
    assert (again.processed, again.skipped) == (0, 80)


def test_probes_then_tasks_sized_from_the_measured_time():
    from esap_dask.engine.execute import _measured, _probe_split
    from esap_dask.engine.task import tasks_per_thread as _tasks_per_thread

    rows = list(range(1000))
    assert _probe_split(rows, 10, 2) == 20  # the first unit of each of 2 threads
    assert _probe_split(rows[:40], 10, 2) == 0  # 4 units for 2 threads: no probes
    tiny = BatchReport(0, 10, 0, [], "w", seconds=0.001)  # 0.1 ms a row
    assert _tasks_per_thread(*_measured(tiny), 980, 2) == 1
    heavy = BatchReport(0, 10, 0, [], "w", seconds=10.0)  # 1 s a row
    assert _tasks_per_thread(*_measured(heavy), 980, 2) == TASKS_PER_THREAD
    assert _tasks_per_thread(*_measured(None), 980, 2) == TASKS_PER_THREAD  # the probe failed
    # more time never means fewer tasks
    counts = [_tasks_per_thread(s / 100, 10, 980, 2) for s in range(1, 2000)]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == TASKS_PER_THREAD
    assert MAX_TASKS >= 1000


def test_the_run_context_is_unpickled_once_per_process():
    from esap_dask import get_pipeline
    from esap_dask.engine.task import RunContext, SharedContext

    pipe = get_pipeline("helloworld")
    params = pipe.resolve({})
    ctx = RunContext("s.zarr", pipe, params, "h", pipe.output_schema(params), run_id="r1")
    shared = SharedContext(ctx)
    first, second = pickle.loads(pickle.dumps(shared)), pickle.loads(pickle.dumps(shared))
    assert first is second and first.run_id == "r1" and first.params == params


def test_an_unchanged_rerun_imports_no_distributed(tmp_path, client):
    store = tmp_path / "s.zarr"
    map_observations("helloworld", range(50), store, client=client)
    code = (
        "import json, sys\n"
        "from esap_dask import map_observations\n"
        f"s = map_observations('helloworld', range(50), {str(store)!r}, facility='none')\n"
        "print(json.dumps([s.skipped, 'distributed' in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [50, False]


def test_new_rows_read_as_the_planned_rows_they_stand_for():
    from esap_dask.engine.execute import _batch, _pick, make_batches
    from esap_dask.engine.ledger import Ledger, NewRows, PlannedRow, plan
    from esap_dask.engine.observations import as_observations, fingerprints

    obs = as_observations(range(1, 11))
    fps = fingerprints(obs)
    todo = plan(obs, fps, Ledger.empty(), param_hash="p", version="1").todo
    assert isinstance(todo, NewRows)
    listed = [PlannedRow(i, o, f, 0, "new") for i, (o, f) in enumerate(zip(obs, fps, strict=True))]
    assert list(todo) == listed and len(todo) == 10 and list(todo.rows) == list(range(10))
    assert todo[0] == listed[0] and todo[-1] == listed[-1] and todo[3] == listed[3]
    assert list(todo[2:5]) == listed[2:5] and todo[2:5].rows == range(2, 5)
    assert list(todo[8:20]) == listed[8:] and len(todo[7:3]) == 0
    with pytest.raises(IndexError):
        todo[10]
    for b in make_batches(todo.rows, 3, 1):
        fast, slow = _batch(0, _pick(todo, b)), _batch(0, [listed[p] for p in b])
        assert fast.rows.tolist() == slow.rows.tolist()
        assert (fast.observations, fast.fingerprints, fast.attempts) == (
            slow.observations,
            slow.fingerprints,
            slow.attempts,
        )


def test_run_numbers_are_held_as_numbers_and_read_as_observations():
    """A list of run numbers is planned, batched and pickled as the numbers (issue 17, RSS)."""
    from esap_dask.engine.execute import _batch, _pick
    from esap_dask.engine.ledger import Ledger, plan
    from esap_dask.engine.observations import (
        Observation,
        ObservationError,
        RunNumbers,
        as_observations,
        fingerprint,
        fingerprints,
    )

    numbers = [7, 3, 100_000, 12]
    obs = as_observations(numbers)
    assert isinstance(obs, RunNumbers)
    made = [Observation.of(n) for n in numbers]
    assert list(obs) == made and obs == made and obs[1] == made[1] and obs[-1] == made[-1]
    assert list(obs[1:3]) == made[1:3] and obs.ids() == ["7", "3", "100000", "12"]
    numbers.append(5)  # the caller's list changes while a run goes on: the run's does not
    assert len(obs) == 4
    fps = fingerprints(obs)
    assert list(fps) == [fingerprint(o) for o in made] == list(fingerprints(made))
    assert fps[2] == fingerprint(made[2]) and list(fps[1:]) == list(fps)[1:]
    assert list(fingerprints(obs, content=True)) == list(fps)  # values: no content to hash

    todo = plan(obs, fps, Ledger.empty(), param_hash="p", version="1").todo
    batch = _batch(0, _pick(todo, [1, 2]))
    again = pickle.loads(pickle.dumps(batch))  # what a worker receives
    assert list(again.observations) == made[1:3] and list(again.fingerprints) == list(fps)[1:3]
    assert again.rows.tolist() == [1, 2] and again.attempts == [0, 0]
    big = as_observations(list(range(50_000)))
    as_list = [Observation.of(n) for n in range(50_000)]
    wide = plan(big, fingerprints(big), Ledger.empty(), param_hash="p", version="1").todo
    slim = len(pickle.dumps(_batch(0, _pick(wide, list(range(50_000))))))
    listed = plan(as_list, fingerprints(as_list), Ledger.empty(), param_hash="p", version="1")
    full = len(pickle.dumps(_batch(0, _pick(listed.todo, list(range(50_000))))))
    assert slim * 5 < full  # the numbers, not their ids and fingerprints

    assert not isinstance(as_observations([1, True]), RunNumbers)  # bool: id "True"
    assert not isinstance(as_observations([1, 2.5]), RunNumbers)
    with pytest.raises(ObservationError, match="duplicate observation id '3'"):
        as_observations([3, 4, 3])


def test_a_run_over_run_numbers_keeps_its_ledger_as_a_list_would(tmp_path, client):
    """Run numbers and the same values as Observation objects make the same store."""
    from esap_dask.engine.observations import Observation, fingerprint

    def la_fp(n: int) -> str:
        return fingerprint(Observation.of(n))

    a = map_observations("helloworld", [5, 1, 9, 2], tmp_path / "a.zarr", client=client)
    b = map_observations(
        "helloworld", [Observation.of(n) for n in (5, 1, 9, 2)], tmp_path / "b.zarr", client=client
    )
    assert (a.succeeded, b.succeeded) == (4, 4)
    la, lb = esap_dask.ledger(tmp_path / "a.zarr"), esap_dask.ledger(tmp_path / "b.zarr")
    assert la.index.tolist() == lb.index.tolist() == ["5", "1", "9", "2"]
    assert la.fingerprint.tolist() == lb.fingerprint.tolist()
    assert la.fingerprint.str.startswith("value:").all()
    assert la.source.tolist() == lb.source.tolist() == ["5", "1", "9", "2"]
    assert (la.status == "done").all() and (la.attempts == 1).all()
    again = map_observations("helloworld", [5, 1, 9, 2, 4], tmp_path / "a.zarr", client=client)
    assert (again.processed, again.skipped) == (1, 4)
    doc = json.loads(Path(again.provenance).read_text())
    assert [k for k in doc["entity"] if k.startswith("esap:input/")] == ["esap:input/4"]
    assert doc["entity"]["esap:input/4"]["esap:fingerprint"] == la_fp(4)


@pytest.mark.parametrize("size", [0, 100, SMALL_FILE, SMALL_FILE + 1, 2 * READ_BUFFER + 3])
@pytest.mark.parametrize("fstat_said", ["right", "less (grew)", "more (shrank)"])
def test_a_file_checksum_is_its_content_whatever_its_fstat_said(tmp_path, size, fstat_said):
    """One read when the size is right; a file that changed since its fstat is read to its end."""
    path = tmp_path / "obs.dat"
    data = os.urandom(size)
    path.write_bytes(data)
    told = {"right": size, "less (grew)": max(size - 7, 0), "more (shrank)": size + 7}
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sha256_fd(fd, told[fstat_said]) == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)


def _inputs(doc: dict) -> tuple[dict, dict]:
    """The input entities of a PROV document, and its usages by entity (run id left out)."""
    entities = {k: e for k, e in doc["entity"].items() if k.startswith("esap:input/")}
    used = {u["prov:entity"]: (k, u["prov:role"]) for k, u in doc["used"].items()}
    return entities, used


def _check_entities(entities: dict, files: list[str]) -> None:
    """Each file's entity: its location, and the SHA-256 of its content."""
    for f in files:
        entity = entities[f"esap:input/{os.path.basename(f)}"]
        assert entity["prov:location"] == f
        digest = hashlib.sha256(Path(f).read_bytes()).hexdigest()
        assert entity["voprov:checksum"] == f"sha256:{digest}"


def _files(folder: Path, names: list[str]) -> list[str]:
    folder.mkdir()
    for k, name in enumerate(names):
        (folder / name).write_bytes(os.urandom(50 + k))
    return [str(folder / n) for n in names]


def test_inputs_rendered_by_the_tasks_make_the_document_the_driver_made(
    tmp_path, client, monkeypatch
):
    """The tasks render their inputs' provenance; the document is the one the driver wrote."""
    from esap_dask.engine import provenance

    files = _files(tmp_path / "in", [f"obs{k:02d}.dat" for k in range(14)])
    monkeypatch.setattr(provenance, "PART_PIECE", 7)  # parts read in many pieces
    from_ledger = []  # the planned rows whose inputs the driver read from the ledger
    not_in_parts = provenance._not_in_parts
    monkeypatch.setattr(
        provenance,
        "_not_in_parts",
        lambda todo, parts: from_ledger.append(len(r := not_in_parts(todo, parts))) or r,
    )
    by_tasks = map_observations(
        "helloworld", files, tmp_path / "a.zarr", client=client, batch_size=4
    )
    assert from_ledger == [0]  # every input rendered by its task
    assert not list(Path(f"{tmp_path / 'a.zarr'}.provenance").glob("*.parts"))  # removed

    @contextlib.contextmanager
    def no_parts(*args, **kwargs):
        yield None

    monkeypatch.setattr(provenance, "task_parts", no_parts)
    by_driver = map_observations(
        "helloworld", files, tmp_path / "b.zarr", client=client, batch_size=4
    )
    a = json.loads(Path(by_tasks.provenance).read_text())
    b = json.loads(Path(by_driver.provenance).read_text())
    assert from_ledger == [0, 14]  # then every input read from the ledger
    assert _inputs(a) == _inputs(b)
    entities, used = _inputs(a)
    assert len(entities) == len(used) == 14
    _check_entities(entities, files)
    # the run's own entry of its usages names this run
    run = f"esap:run/{by_tasks.run_id}"
    assert {u["prov:activity"] for u in a["used"].values()} == {run}


def test_a_part_cut_short_or_missing_is_read_from_the_ledger(tmp_path, client):
    """Parts spoiled before the run's record: those inputs come from the ledger, none lost."""
    names = [f"obs{k:02d}.dat" for k in range(11)] + ["spoil.dat"]
    files = _files(tmp_path / "in", names)
    store = tmp_path / "s.zarr"
    parts = f"{store}.provenance"
    summary = map_observations(
        str(HERE / "pipelines" / "spoil_parts.py"),
        files,
        store,
        client=client,
        batch_size=4,
        params={"parts": parts},
    )
    assert summary.succeeded == 12
    spoiled = Path(parts, "spoiled.txt").read_text().split()
    assert spoiled  # at least one part of an earlier batch was cut short
    entities, used = _inputs(json.loads(Path(summary.provenance).read_text()))
    assert set(entities) == set(used) == {f"esap:input/{n}" for n in names}
    _check_entities(entities, files)


@pytest.mark.parametrize("content_hash", [False, True])
def test_a_new_store_records_the_fingerprints_its_tasks_took(tmp_path, client, content_hash):
    """A first run's files are fingerprinted by the tasks that read them, as the driver would.

    The ledger holds the fingerprints a driver computes; an unchanged rerun skips them all,
    a changed file runs again; a missing file and a directory fail, and are recorded so.
    """
    from esap_dask.engine.ledger import read_ledger
    from esap_dask.engine.observations import Observation, fingerprint
    from esap_dask.store import open_store

    files = _files(tmp_path / "in", [f"obs{k:02d}.dat" for k in range(9)])
    (tmp_path / "in" / "dir.dat").mkdir()
    listed = [*files, str(tmp_path / "in" / "gone.dat"), str(tmp_path / "in" / "dir.dat")]
    store = tmp_path / "s.zarr"
    first = map_observations(
        "helloworld", listed, store, client=client, batch_size=4, content_hash=content_hash
    )
    assert (first.succeeded, first.failed) == (9, 2)
    ledger = read_ledger(open_store(str(store), mode="r"))
    expected = [fingerprint(Observation.of(f), content=content_hash) for f in listed]
    assert ledger.fingerprint.tolist() == expected
    assert expected[-2:] == ["missing", "directory"]
    if content_hash:
        assert expected[0] == "sha256:" + hashlib.sha256(Path(files[0]).read_bytes()).hexdigest()
    again = map_observations("helloworld", files, store, client=client, content_hash=content_hash)
    assert (again.processed, again.skipped) == (0, 9)
    Path(files[3]).write_bytes(b"changed, and longer than before")
    third = map_observations("helloworld", files, store, client=client, content_hash=content_hash)
    assert (third.processed, third.reasons) == (1, {"changed": 1})


def test_a_batch_of_new_files_travels_without_fingerprints(tmp_path):
    """The tasks take them: the pickled batch holds the paths, not a fingerprint each."""
    from esap_dask.engine.observations import Observation, TakenByWorkers
    from esap_dask.engine.task import Batch

    files = _files(tmp_path / "in", [f"obs{k:02d}.dat" for k in range(50)])
    obs = [Observation.of(f) for f in files]
    rows = np.arange(50)
    taken = Batch(0, rows, obs, TakenByWorkers(obs), [0] * 50)
    listed = Batch(0, rows, obs, list(TakenByWorkers(obs)), [0] * 50)
    back = pickle.loads(pickle.dumps(taken))
    assert isinstance(back.fingerprints, TakenByWorkers)
    assert list(back.fingerprints) == listed.fingerprints  # read there, each is taken there
    assert len(pickle.dumps(taken)) < len(pickle.dumps(listed)) - 50 * 10


def test_a_packed_batch_crosses_the_scheduler_as_bytes(tmp_path, monkeypatch):
    """The scheduler unpickles and pickles a task's arguments again: a packed batch stays
    bytes through both, and the task unpacks the batch the driver planned."""
    from esap_dask.engine import task
    from esap_dask.engine.observations import Observation, TakenByWorkers
    from esap_dask.engine.task import Batch, PackedBatch

    files = _files(tmp_path / "in", [f"obs{k:02d}.dat" for k in range(40)])
    obs = [Observation.of(f) for f in files]
    batch = Batch(3, np.arange(10, 50), obs, TakenByWorkers(obs), [1] * 40, probe=8)
    packed = PackedBatch.of(batch)

    def refused(*args, **kwargs):
        raise AssertionError("the batch was unpacked on its way")

    with monkeypatch.context() as m:  # the scheduler's relay: no batch is built
        m.setattr(task, "_batch_of_columns", refused)
        relayed = pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(packed))))
    assert isinstance(relayed, PackedBatch) and relayed.data == packed.data
    back = relayed.unpack()
    assert (back.index, back.probe, back.attempts) == (3, 8, [1] * 40)
    assert back.rows.tolist() == list(range(10, 50)) and list(back.observations) == obs
    assert isinstance(back.fingerprints, TakenByWorkers)


@pytest.mark.parametrize(
    "items",
    [
        ["/data/run1.fits", "/data/run2.fits"],
        ["/data/run1.fits", "data/relative.fits"],
        ["/data/./run1.fits", "/data/run2.fits"],
        ["/data/../data/run1.fits"],
        ["/data/.hidden.fits", "/data/run2.fits"],
        ["/data/run1.fits", "s3://bucket/run2.fits"],
        ["/data/dir/", "/data//run2.fits"],
        ["/data/run1.fits", Path("/data/run2.fits")],
        ["/data/run1.fits", 7],
        ["/data/a\0/b.fits", "/data/c.fits"],
        ["/data/run1.fits", ""],
        ["/"],
    ],
)
def test_a_list_of_paths_makes_the_observations_each_path_makes(items):
    """The joined-text fast path of ``as_observations`` gives what ``Observation.of`` gives
    each item, or leaves the list to it."""
    from esap_dask.engine.observations import Observation, _absolute_paths, as_observations

    expected = [Observation.of(x) for x in items]
    fast = _absolute_paths(items)
    plain = all(
        type(x) is str and x.startswith("/") and not any(t in x for t in ("/.", "://", "\0"))
        for x in items
    )
    if plain:  # the fast path takes it
        assert fast == expected
    else:
        assert fast is None or fast == expected
    if len({o.id for o in expected}) == len(expected):
        assert as_observations(items) == expected


READ_ONCE = str(HERE / "pipelines" / "read_once.py")


def test_read_input_reads_a_file_and_names_what_is_wrong(tmp_path):
    from esap_dask import read_input

    path = tmp_path / "obs.dat"
    path.write_bytes(b"x" * 300)
    assert read_input(path) == b"x" * 300  # outside a task: the content, nothing recorded
    with pytest.raises(FileNotFoundError, match=r"gone\.dat: no such file; check the observation"):
        read_input(tmp_path / "gone.dat")
    with pytest.raises(IsADirectoryError, match="is a directory, not an observation file"):
        read_input(tmp_path)


def test_a_task_takes_the_checksum_from_the_pipelines_read(tmp_path, monkeypatch):
    """Once its pipeline reads a file through read_input, a task reads no file before
    its pipeline; a file the pipeline read otherwise is read by the task after it, and so
    is a file whose row failed before the pipeline read it (its checksum still recorded)."""
    from esap_dask import get_pipeline
    from esap_dask.engine import task
    from esap_dask.engine.ledger import blank
    from esap_dask.engine.observations import Observation, TakenByWorkers

    names = ["a.dat", "b.dat", "c.plain", "d.fail", "e.dat"]
    files = _files(tmp_path / "in", names)
    content = {f: Path(f).read_bytes() for f in files}
    stats = {f: os.stat(f) for f in files}
    obs = [Observation.of(f) for f in files]
    pipe = get_pipeline(READ_ONCE)
    ctx = task.RunContext("s.zarr", pipe, {}, "h", pipe.output_schema({}), run_id="r1")
    opened: list[str] = []
    real = task.open_input

    def counted(o, checksum=False):
        opened.append(os.path.basename(o.value))
        return real(o, checksum)

    monkeypatch.setattr(task, "open_input", counted)
    ledger = blank(len(obs))
    buffers = {"digest": np.empty(len(obs), dtype=object)}
    failures = task._run_rows(ctx, obs, 0, len(obs), buffers, 0, ledger, TakenByWorkers)
    assert [(oid, kind) for oid, kind, _ in failures] == [("d.fail", "ValueError")]
    # the first file (not yet known), the plain one, the failed one
    assert opened == ["a.dat", "c.plain", "d.fail"]
    for k, f in enumerate(files):
        digest = hashlib.sha256(content[f]).hexdigest()
        assert ledger["checksum"][k] == digest
        assert ledger["fingerprint"][k] == f"{stats[f].st_size}-{stats[f].st_mtime_ns}"
        if not f.endswith(".fail"):
            assert buffers["digest"][k] == digest


def test_dl3_products_reads_each_gadf_file_once(tmp_path, monkeypatch):
    """The GADF reader reads through read_input: the task opens only the first file
    itself (before it knows), and every checksum is that of the file's bytes."""
    from esap_dask import get_pipeline
    from esap_dask.engine import task
    from esap_dask.engine.ledger import blank
    from esap_dask.engine.observations import Observation, TakenByWorkers
    from esap_dask.iact.synthetic import write_observations

    files = [str(p) for p in write_observations(tmp_path / "in", 3, seed=5, n_events=200)]
    obs = [Observation.of(f) for f in files]
    pipe = get_pipeline("dl3-products")
    params = pipe.resolve({})
    schema = pipe.output_schema(params)
    ctx = task.RunContext("s.zarr", pipe, params, "h", schema, run_id="r1")
    opened: list[str] = []
    real = task.open_input

    def counted(o, checksum=False):
        opened.append(o.value)
        return real(o, checksum)

    monkeypatch.setattr(task, "open_input", counted)
    ledger = blank(len(obs))
    slots = task._slots(schema)[1]
    buffers = {s.name: np.empty((len(obs), *s.shape), dtype=s.dtype) for s in slots}
    failures = task._run_rows(ctx, obs, 0, len(obs), buffers, 0, ledger, TakenByWorkers)
    assert failures == []
    assert opened == files[:1]
    for k, f in enumerate(files):
        assert ledger["checksum"][k] == hashlib.sha256(Path(f).read_bytes()).hexdigest()


def test_a_run_over_files_read_once_records_what_the_pipeline_read(tmp_path, client):
    """The pipeline removes each file once it read it: no task reads a file after it."""
    files = _files(tmp_path / "in", [f"obs{k:02d}.dat" for k in range(24)])
    content = {os.path.basename(f): Path(f).read_bytes() for f in files}
    summary = map_observations(READ_ONCE, files, tmp_path / "s.zarr", client=client, chunk=4)
    assert summary.ok and summary.processed == 24, summary.failures[:3]
    table = esap_dask.ledger(tmp_path / "s.zarr")
    for oid, checksum in zip(table.index, table["checksum"], strict=True):
        assert checksum == hashlib.sha256(content[str(oid)]).hexdigest()
    doc = json.loads(Path(summary.provenance).read_text())
    entities, _ = _inputs(doc)
    assert len(entities) == 24
    for oid, data in content.items():
        digest = hashlib.sha256(data).hexdigest()
        assert entities[f"esap:input/{oid}"]["voprov:checksum"] == f"sha256:{digest}"


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def test_chunks_written_on_zarrs_loop_are_the_bytes_zarr_writes(tmp_path):
    """Small chunks go through the loop (esap_dask.store.local), large through zarr's threads:
    either way the files are what zarr's own LocalStore and zstd codec write, and read back."""
    import zarr
    from zarr.codecs.zstd import ZstdCodec

    from esap_dask.store import zarr_store
    from esap_dask.store.local import INLINE_BYTES, InlineZstdCodec, LocalChunkStore

    rng = np.random.default_rng(7)
    big = INLINE_BYTES // 4  # float64 values in one chunk: twice the threshold
    values = {
        "small": rng.random(1000),
        "large": rng.random(big),
        "text": np.asarray(
            [f"observation {i} é\n" for i in range(500)], dtype=np.dtypes.StringDType()
        ),
    }
    zstd = [{"name": "zstd", "configuration": {"level": 0, "checksum": False}}]

    def write(group: zarr.Group) -> dict[str, type]:
        codecs = {}
        for name, v in values.items():
            arr = group.create_array(
                name, shape=v.shape, chunks=v.shape, dtype=v.dtype, compressors=zstd
            )
            arr[...] = v
            codecs[name] = type(arr.compressors[0])
        return codecs

    ours = zarr.open_group(zarr_store(str(tmp_path / "ours.zarr")), mode="w")
    assert type(ours.store) is LocalChunkStore
    assert set(write(ours).values()) == {InlineZstdCodec}
    with zarr.config.set({"codecs.zstd": "zarr.codecs.zstd.ZstdCodec"}):
        plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
        assert set(write(plain).values()) == {ZstdCodec}
    mine, theirs = _chunk_files(tmp_path / "ours.zarr"), _chunk_files(tmp_path / "plain.zarr")
    assert sorted(mine) == sorted(theirs) == ["large/c/0", "small/c/0", "text/c/0"]
    assert mine == theirs
    assert len(mine["large/c/0"]) > INLINE_BYTES > len(mine["small/c/0"])
    assert not list((tmp_path / "ours.zarr").rglob("*.partial"))  # no temporary file left
    reopened = zarr.open_group(zarr_store(str(tmp_path / "ours.zarr"), mode="r"), mode="r")
    for name, v in values.items():
        np.testing.assert_array_equal(reopened[name][...], v)
    assert reopened.store.read_only
    with pytest.raises(ValueError, match="read-only"):
        reopened["small"][:10] = 0.0


@pytest.mark.filterwarnings("ignore:The data type")  # zarr: fixed-width text, no spec
def test_whole_chunks_written_by_the_task_are_the_bytes_zarr_writes(tmp_path):
    """A commit's whole chunks, encoded and written here (write_whole_chunks), are what
    zarr's setitem writes: numbers, text from Python strings, the array's last (padded)
    chunk, a chunk of nothing but the fill value (deleted); and what is not whole chunks
    of an unsharded local array is left to zarr."""
    import zarr

    from esap_dask.store import zarr_store
    from esap_dask.store.local import INLINE_BYTES, write_whole_chunks

    rng = np.random.default_rng(11)
    n, chunk = 1050, 200  # 6 chunks, the last one 50 rows
    text = np.empty((n, 3), dtype=object)
    text[:] = [[f"obs {i} é", "", "x" * (i % 7)] for i in range(n)]
    values = {
        "f": (rng.random(n), np.nan),
        "i": (rng.integers(-5, 5, n).astype(np.int32), 0),
        "t": (text, ""),
        "u": (np.asarray([f"u{i % 97}" for i in range(n)], dtype="<U4"), ""),  # fixed width
    }
    zstd = [{"name": "zstd", "configuration": {"level": 0, "checksum": False}}]

    def make(root: Path) -> zarr.Group:
        group = zarr.open_group(zarr_store(str(root)), mode="w")
        for name, (v, fill) in values.items():
            group.create_array(
                name,
                shape=v.shape,
                chunks=(chunk, *v.shape[1:]),
                dtype=str if v.dtype == object else v.dtype,
                fill_value=fill,
                compressors=zstd,
            )
        return group

    ours, theirs = make(tmp_path / "ours.zarr"), make(tmp_path / "theirs.zarr")
    for name, (v, _) in values.items():
        for lo, hi in ((0, 400), (400, 1050)):  # whole chunks, then through the padded last
            assert write_whole_chunks(ours[name], lo, v[lo:hi])
            theirs[name][lo:hi] = v[lo:hi]
    mine, zarrs = _chunk_files(tmp_path / "ours.zarr"), _chunk_files(tmp_path / "theirs.zarr")
    assert len(mine) == 4 * 6 and mine == zarrs
    for name, (v, _) in values.items():
        np.testing.assert_array_equal(ours[name][...], v)

    # a chunk of nothing but the fill value: its file goes, as zarr removes it
    blank = np.full((chunk, 3), "", dtype=object)
    assert write_whole_chunks(ours["t"], 200, blank)
    theirs["t"][200:400] = blank
    assert "t/c/1/0" not in _chunk_files(tmp_path / "ours.zarr")
    assert _chunk_files(tmp_path / "ours.zarr") == _chunk_files(tmp_path / "theirs.zarr")

    # not whole chunks, or sharded: zarr's setitem writes them (nothing written here)
    before = _chunk_files(tmp_path / "ours.zarr")
    assert not write_whole_chunks(ours["i"], 100, values["i"][0][100:300])  # starts mid-chunk
    assert not write_whole_chunks(ours["i"], 0, values["i"][0][:150])  # ends mid-chunk
    sharded = ours.create_array("s", shape=(n,), chunks=(100,), shards=(200,), dtype="int32")
    assert not write_whole_chunks(sharded, 0, values["i"][0][:200])
    large = ours.create_array(
        "l", shape=(INLINE_BYTES // 4,), chunks=(INLINE_BYTES // 4,), dtype="float64"
    )  # one chunk of 2 MiB
    assert not write_whole_chunks(large, 0, rng.random(INLINE_BYTES // 4))  # zarr's threads
    assert _chunk_files(tmp_path / "ours.zarr") == before
    assert not list((tmp_path / "ours.zarr").rglob("*.partial"))


def test_write_rows_writes_whole_chunks_itself_and_the_rest_through_zarr(tmp_path, monkeypatch):
    """A commit's whole chunks never reach zarr's loop; a rerun's scattered rows do, and both
    read back, the ledger's status still written last."""
    import zarr

    import esap_dask.store as store_module
    from esap_dask.store import COMMIT_COLUMN, write_rows, zarr_store

    group = zarr.open_group(zarr_store(str(tmp_path / "w.zarr")), mode="w")
    group.create_array("p", shape=(100,), chunks=(25,), dtype="float64", fill_value=np.nan)
    group.create_array("t", shape=(100,), chunks=(25,), dtype=str, fill_value="")
    group.create_array(COMMIT_COLUMN, shape=(100,), chunks=(25,), dtype="int8", fill_value=0)
    order: list[str] = []
    on_loop: list[int] = []
    real_whole, real_loop = store_module.write_whole_chunks, store_module._on_zarr_loop

    def whole(arr, start, values):
        done = real_whole(arr, start, values)
        if done:
            order.append(arr.path)
        return done

    def loop(writes):
        on_loop.append(len(writes))
        return real_loop(writes)

    monkeypatch.setattr(store_module, "write_whole_chunks", whole)
    monkeypatch.setattr(store_module, "_on_zarr_loop", loop)
    text = np.asarray([f"obs {i}" for i in range(50)], dtype=object)
    columns = {COMMIT_COLUMN: np.ones(50, "i1"), "p": np.arange(50.0), "t": text}
    write_rows(group, np.arange(25, 75), columns)  # two whole chunks of each array
    assert order == ["p", "t", COMMIT_COLUMN] and on_loop == []
    write_rows(group, np.array([3, 5, 90]), {"p": np.array([-1.0, -2.0, -3.0])})  # scattered
    assert on_loop == [1] and order == ["p", "t", COMMIT_COLUMN]
    p = group["p"][...]
    np.testing.assert_array_equal(p[25:75], np.arange(50.0))
    assert (p[3], p[5], p[90]) == (-1.0, -2.0, -3.0) and np.isnan(p[0])
    assert list(group["t"][25:75]) == list(text) and group["t"][0] == ""
    assert group[COMMIT_COLUMN][...].sum() == 50


def test_opening_a_store_that_is_not_there_makes_no_directory(tmp_path):
    """zarr opens a path to read or update read-only first; so must the loop store."""
    from esap_dask.store import StoreError, open_store

    for mode in ("r", "r+"):
        with pytest.raises(StoreError, match="no Zarr store there"):
            open_store(str(tmp_path / "missing.zarr"), mode=mode)  # type: ignore[arg-type]
    assert not (tmp_path / "missing.zarr").exists()


def test_a_run_writes_through_the_loop_store_and_codec(tmp_path, client):
    from esap_dask.store import open_store
    from esap_dask.store.local import InlineZstdCodec, LocalChunkStore

    store = tmp_path / "h.zarr"
    map_observations("helloworld", range(40), store, client=client)
    group = open_store(str(store), mode="r")
    assert type(group.store) is LocalChunkStore
    assert type(group["ledger/status"].compressors[0]) is InlineZstdCodec
    assert xr.open_zarr(store).sizes["obs"] == 40  # a plain reader opens it
