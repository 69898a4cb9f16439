"""An unchanged ``esap-dask run`` answered from the store's receipt, and everything that voids it.

The receipt (:mod:`esap_dask.engine.receipt`) lets cron's unchanged rerun exit before
importing Dask, numpy or zarr. What a user checks: the same summary as before, and that
any change the run would see (a new, touched or removed file, other parameters, an
edited pipeline, another run on the store, a held lock, a broken receipt) still gets the
full run, which plans from the ledger.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from esap_dask import map_observations
from esap_dask.cli import main
from esap_dask.engine import receipt

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("dask", "numpy", "zarr", "distributed", "rich")

PIPELINE = """
from esap_dask import Pipeline, Variable

def size(path):
    with open(path, "rb") as f:
        return {"size": len(f.read())}

pipeline = Pipeline(name="size", version="VERSION", function=size,
                    schema=[Variable("size", "int64")])
"""


def make_files(directory: Path, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (directory / f"obs{i:03d}.dat").write_bytes(b"x" * (10 + i))


def run_inprocess(*args: str) -> dict:
    """``esap-dask run ... --json`` in this process, on the session's LocalCluster."""
    done = CliRunner().invoke(main, ["run", *args, "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return json.loads(done.output.strip().splitlines()[-1])


def run_cli(cwd: Path, *args: str, check: int = 0) -> tuple[dict, set[str]]:
    """``esap-dask run ... --json`` in a fresh process, as cron starts it: its summary and
    the modules it imported (``python -X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "esap_dask", "run", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == check, done.stderr[-3000:]
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in done.stderr.splitlines() if "|" in ln}
    return json.loads(done.stdout.strip().splitlines()[-1]), imported


def answered_by_receipt(imported: set[str]) -> bool:
    """The process answered before importing any of :data:`HEAVY`."""
    return not imported.intersection(HEAVY)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client) -> Path:
    """Ten files in ``tmp_path/files`` and a pipeline file, with ``tmp_path`` the cwd."""
    make_files(tmp_path / "files", 10)
    (tmp_path / "size.py").write_text(PIPELINE.replace("VERSION", "1"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


ARGS = ("size.py", "-o", "files/*.dat", "-s", "out.zarr")


def test_an_unchanged_rerun_is_answered_without_importing_dask(work: Path) -> None:
    first = run_inprocess(*ARGS)
    assert first["processed"] == 10 and Path("out.zarr.receipt.json").is_file()
    os.unlink("out.zarr.receipt.json")  # what the run says without it, for comparison
    planned = run_inprocess(*ARGS)
    assert Path("out.zarr.receipt.json").is_file()  # an unchanged run writes one too
    fast, imported = run_cli(work, *ARGS)
    assert answered_by_receipt(imported), sorted(imported.intersection(HEAVY))
    for summary in (planned, fast):
        assert (summary["total"], summary["processed"], summary["skipped"]) == (10, 0, 10)
    differs = {"run_id", "seconds"}
    assert {k: v for k, v in fast.items() if k not in differs} == {
        k: v for k, v in planned.items() if k not in differs
    }
    assert fast["run_id"] != planned["run_id"]
    plain = subprocess.run(
        [sys.executable, "-m", "esap_dask", "run", *ARGS],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    lines = plain.stdout.splitlines()
    assert lines[:5] == [
        "total      10",
        "processed  0",
        "skipped    10",
        "succeeded  0",
        "failed     0",
    ]
    assert lines[-1] == f"store: {work / 'out.zarr'}"
    quiet = subprocess.run(
        [sys.executable, "-m", "esap_dask", "-q", "run", *ARGS],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert quiet.stdout == ""


def _touch(work: Path, _: pytest.MonkeyPatch | None) -> None:
    path = work / "files" / "obs003.dat"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _add(work: Path, _: pytest.MonkeyPatch | None = None) -> None:
    (work / "files" / "obs100.dat").write_bytes(b"new")


def _remove(work: Path, _: pytest.MonkeyPatch) -> None:
    (work / "files" / "obs009.dat").unlink()


def _edit_pipeline(work: Path, _: pytest.MonkeyPatch) -> None:
    (work / "size.py").write_text(PIPELINE.replace("VERSION", "2"))


def _api_run(work: Path, _: pytest.MonkeyPatch) -> None:
    """A notebook's run on the same store: it takes the lock, so the receipt goes."""
    _add(work)
    summary = map_observations(str(work / "size.py"), "files/*.dat", "out.zarr")
    assert summary.processed == 1
    assert not (work / "out.zarr.receipt.json").exists()


def _stale_lock(work: Path, _: pytest.MonkeyPatch) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = {"host": socket.gethostname(), "pid": gone.pid, "run": "gone", "started": "2026"}
    (work / "out.zarr.lock").write_text(json.dumps(lock))


def _broken_receipt(work: Path, _: pytest.MonkeyPatch) -> None:
    (work / "out.zarr.receipt.json").write_bytes(b"\xff{ not json")


def _malformed_receipt(work: Path, _: pytest.MonkeyPatch) -> None:
    """The receipt's own request and store, with entries that are not what it records."""
    path = work / "out.zarr.receipt.json"
    data = json.loads(path.read_text())
    data["dependencies"] = [[None, 3, {}], ["only a path"]]
    data["summary"] = "not a summary"
    path.write_text(json.dumps(data))


def _store_rewritten(work: Path, _: pytest.MonkeyPatch) -> None:
    meta = work / "out.zarr" / "zarr.json"
    meta.write_bytes(meta.read_bytes())


def _dask_config(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_ESAP__MAX_WORKERS", "7")


# change, then what the full run reports: (processed, skipped, total)
CHANGES = {
    "a touched file": (_touch, (1, 9, 10)),
    "a new file": (_add, (1, 10, 11)),
    "a removed file": (_remove, (0, 9, 9)),
    "an edited pipeline": (_edit_pipeline, (10, 0, 10)),
    "a notebook's run on the store": (_api_run, (0, 11, 11)),
    "a lock left by a run that is gone": (_stale_lock, (0, 10, 10)),
    "a broken receipt": (_broken_receipt, (0, 10, 10)),
    "a receipt of another shape": (_malformed_receipt, (0, 10, 10)),
    "the store's metadata written since": (_store_rewritten, (0, 10, 10)),
    "another Dask configuration": (_dask_config, (0, 10, 10)),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_what_voids_the_receipt(work: Path, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run_inprocess(*ARGS)
    assert answered_by_receipt(run_cli(work, *ARGS)[1])
    apply, expected = CHANGES[change]
    apply(work, monkeypatch)
    summary, imported = run_cli(work, *ARGS)
    assert not answered_by_receipt(imported), "the receipt answered after " + change
    assert (summary["processed"], summary["skipped"], summary["total"]) == expected
    assert summary["failed"] == 0
    # the full run, unchanged or done, leaves a receipt for the next rerun
    again, imported = run_cli(work, *ARGS)
    assert answered_by_receipt(imported)
    assert (again["processed"], again["skipped"]) == (0, expected[2])


def test_other_parameters_are_another_request(work: Path, client) -> None:
    run_inprocess("helloworld", "-o", "1..20", "-s", "hello.zarr")
    assert answered_by_receipt(run_cli(work, "helloworld", "-o", "1..20", "-s", "hello.zarr")[1])
    other = ("helloworld", "-o", "1..20", "-s", "hello.zarr", "-p", "message=hi")
    summary, imported = run_cli(work, *other)
    assert not answered_by_receipt(imported)
    assert summary["processed"] == 20 and summary["reasons"] == {"parameters": 20}


def test_a_run_with_failures_leaves_no_receipt(work: Path) -> None:
    args = ("helloworld", "-o", "1..3", "-s", "fail.zarr", "-p", "fail=true")
    done = CliRunner().invoke(main, ["run", *args, "--json"])
    assert done.exit_code == 1, done.output
    assert json.loads(done.output.strip().splitlines()[-1])["failed"] == 3
    assert not Path("fail.zarr.receipt.json").exists()
    again, imported = run_cli(work, *args[:-2], "-p", "fail=true", check=1)
    assert not answered_by_receipt(imported) and again["processed"] == 3  # retried


def test_a_list_file_is_answered_until_it_or_a_file_it_names_changes(work: Path) -> None:
    (work / "list.txt").write_text("# tonight\nfiles/obs001.dat\n\nfiles/obs002.dat\n")
    args = ("size.py", "-o", "list.txt", "-s", "listed.zarr")
    assert run_inprocess(*args)["processed"] == 2
    summary, imported = run_cli(work, *args)
    assert answered_by_receipt(imported) and (summary["total"], summary["skipped"]) == (2, 2)
    with (work / "list.txt").open("a") as f:
        f.write("files/obs003.dat\n")
    summary, imported = run_cli(work, *args)
    assert not answered_by_receipt(imported) and summary["reasons"] == {"new": 1}
    assert answered_by_receipt(run_cli(work, *args)[1])
    _touch(work, None)  # obs003.dat, on the list now
    summary, imported = run_cli(work, *args)
    assert not answered_by_receipt(imported) and summary["reasons"] == {"changed": 1}


def test_a_receipt_that_cannot_be_written_loses_nothing(work: Path, monkeypatch) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(receipt.json, "dump", full)
        assert run_inprocess(*ARGS)["succeeded"] == 10
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("out.zarr")) == [
        "out.zarr",
        "out.zarr.provenance",
    ]
    summary, imported = run_cli(work, *ARGS)  # planned from the ledger, which has it all
    assert not answered_by_receipt(imported) and summary["skipped"] == 10
    (work / "out.zarr.receipt.json").unlink()
    (work / "out.zarr.receipt.json").mkdir()  # something else in its place
    done = CliRunner().invoke(main, ["run", *ARGS])
    assert done.exit_code == 2, done.output
    assert "out.zarr.receipt.json: cannot delete the receipt" in done.output


def test_requests_that_only_a_run_can_plan_have_no_receipt(work: Path) -> None:
    (work / "list.txt").write_text("s3://bucket/a.fits\n")
    (work / "empty.txt").write_text("# nothing yet\n")
    common: dict[str, Any] = {"facility": "local", "params": {}, "options": {}}
    assert receipt.request("size.py", "list.txt", "out.zarr", **common) is None
    assert receipt.request("size.py", "empty.txt", "out.zarr", **common) is None
    assert receipt.request("size.py", "files/obs000.dat", "out.zarr", **common) is None
    assert receipt.request("size.py", "s3://bucket/*.fits", "out.zarr", **common) is None
    assert receipt.request("size.py", "files/*.dat", "s3://bucket/out.zarr", **common) is None
    assert receipt.request("size.py", "nothing/*.dat", "out.zarr", **common) is None
    assert receipt.request("size.py", "5..1", "out.zarr", **common) is None
    found = receipt.request("size.py", "files/*.dat", "out.zarr", **common)
    assert found is not None and found.store == str(work / "out.zarr")
    assert receipt.answer(found, "local", 0.0) is None  # no receipt yet
