"""The SLURM facility against the real local SLURM (bash scripts/slurm.sh start).

Every test counts what SLURM was actually asked: ``sbatch`` and ``scancel`` are
wrapped by logging shell scripts put first on ``PATH`` (the real commands run),
and job states are read back with ``squeue``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client

import esap_dask.catalogs.facilities as facilities
from esap_dask.deploy.slurm.jobstate import WorkerJobError

pytestmark = pytest.mark.slurm


@dataclass
class SlurmCalls:
    """The sbatch and scancel calls made while a test ran (one line of arguments each)."""

    log_dir: Path

    def _lines(self, command: str) -> list[str]:
        path = self.log_dir / f"{command}.log"
        return path.read_text().splitlines() if path.exists() else []

    @property
    def sbatch(self) -> list[str]:
        return self._lines("sbatch")

    @property
    def scancel(self) -> list[str]:
        return self._lines("scancel")

    def cancelled_ids(self) -> list[str]:
        return [job for line in self.scancel for job in line.split()]


@pytest.fixture
def calls(slurm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SlurmCalls:
    """Put logging wrappers of sbatch and scancel first on PATH; they exec the real commands."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for command in ("sbatch", "scancel"):
        real = shutil.which(command)
        wrapper = bindir / command
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/{command}.log\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return SlurmCalls(tmp_path)


@pytest.fixture
def open_slurm(calls: SlurmCalls, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """``open_cluster("slurm-loopback", **overrides)``, logs under tmp_path; each one closed."""
    opened = []

    def _open(**overrides: object) -> object:
        overrides.setdefault("log_directory", str(tmp_path / "logs"))
        cluster = facilities.open_cluster("slurm-loopback", **overrides)
        opened.append(cluster)
        return cluster

    yield _open
    for cluster in opened:
        cluster.close()  # type: ignore[attr-defined]


def squeue(job_name: str) -> dict[str, str]:
    """Array task id -> SLURM state, for every job called ``job_name`` (finished ones too)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", f"--name={job_name}", "-o", "%i|%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|") for line in out.split())


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def worker_names(client: Client) -> set[str]:
    return {w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()}


def array_size(sbatch_line: str) -> int:
    spec = re.search(r"--array=([\d,\-]+)", sbatch_line)
    assert spec, f"sbatch was called without --array: {sbatch_line}"
    total = 0
    for part in spec.group(1).split(","):
        lo, _, hi = part.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total


def test_scale_8_is_one_array_and_scale_2_cancels_exactly_the_surplus(open_slurm, calls):
    cluster = open_slurm()
    job_name = cluster.array.job_name
    client = Client(cluster)

    cluster.scale(8)
    cluster.wait_for_workers(8, timeout=120)

    assert len(worker_names(client)) == 8
    assert len(calls.sbatch) == 1 and "--array=0-7" in calls.sbatch[0]
    tasks = squeue(job_name)
    assert sorted(tasks.values()) == ["RUNNING"] * 8

    cluster.scale(2)
    wait_until(lambda: len(worker_names(client)) == 2, "the cluster to shrink to 2 workers")
    kept = {cluster.workers[name].job_id for name in worker_names(client)}
    surplus = set(tasks) - kept
    wait_until(lambda: len(calls.scancel) >= 1, "scancel")

    assert len(calls.sbatch) == 1
    assert len(calls.scancel) == 1
    assert sorted(calls.cancelled_ids()) == sorted(surplus)
    after = squeue(job_name)
    assert {after[j] for j in kept} == {"RUNNING"}
    wait_until(
        lambda: all(squeue(job_name)[j] in ("CANCELLED", "COMPLETED") for j in surplus),
        "the surplus tasks to end",
    )
    client.close()


def test_adapt_goes_up_under_a_burst_and_back_to_zero_without_flapping(open_slurm, calls):
    cluster = open_slurm()
    client = Client(cluster)
    cluster.adapt(minimum=0, maximum=8, interval="500ms", wait_count=4)

    futures = client.map(time.sleep, [1.0] * 48, pure=False)
    most = 0
    while not all(f.done() for f in futures):
        most = max(most, len(worker_names(client)))
        time.sleep(0.25)
    client.gather(futures)
    del futures  # results held by the client pin the workers that hold them
    wait_until(lambda: len(worker_names(client)) == 0, "adapt to scale back to 0", timeout=180)
    wait_until(lambda: not any(j.job_id for j in cluster.workers.values()), "jobs to go")

    assert most > 1
    submitted = sum(array_size(line) for line in calls.sbatch)
    assert 1 <= len(calls.sbatch) <= 3, calls.sbatch
    assert submitted <= 8, f"{submitted} array tasks for at most 8 workers: {calls.sbatch}"
    cancelled = calls.cancelled_ids()
    assert len(cancelled) == len(set(cancelled)), f"a task was cancelled twice: {calls.scancel}"
    job_name = cluster.array.job_name
    wait_until(lambda: set(squeue(job_name).values()) <= {"COMPLETED", "CANCELLED"}, "jobs to end")
    assert len(squeue(job_name)) == submitted
    client.close()


@pytest.mark.parametrize(
    ("override", "slurm_says"),
    [
        ({"queue": "no-such-partition"}, "Invalid partition name specified"),
        ({"memory": "100TiB"}, "Requested node configuration is not available"),
    ],
    ids=["unknown-partition", "impossible-memory"],
)
def test_a_job_that_cannot_start_raises_slurms_reason(open_slurm, calls, override, slurm_says):
    cluster = open_slurm(**override)
    cluster.scale(2)
    with pytest.raises(WorkerJobError, match=slurm_says):
        cluster.wait_for_workers(2, timeout=60)
    assert len(calls.sbatch) == 1
    with pytest.raises(WorkerJobError, match=slurm_says):
        cluster.scale(4)
    assert len(calls.sbatch) == 1  # no resubmission loop
    assert set(squeue(cluster.array.job_name).values()) <= {"FAILED"}  # nothing left queued


def test_a_pending_job_that_can_never_start_raises_slurms_reason(open_slurm, calls, tmp_path):
    failed = subprocess.run(
        ["sbatch", "--parsable", "-o", str(tmp_path / "false.out"), "--wrap", "false"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    wait_until(
        lambda: "FAILED" in subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", failed, "-o", "%T"], capture_output=True, text=True
        ).stdout,
        "the job the workers depend on to fail",
    )  # fmt: skip
    cluster = open_slurm(job_extra_directives=[f"--dependency=afterok:{failed}"])
    cluster.scale(2)
    with pytest.raises(WorkerJobError, match=r"PENDING \(DependencyNeverSatisfied\)"):
        cluster.wait_for_workers(2, timeout=60)
    assert cluster.worker_spec == {}  # given up, not retried
    wait_until(
        lambda: set(squeue(cluster.array.job_name).values()) == {"CANCELLED"},
        "the stuck tasks to be cancelled",
    )
    assert len(calls.sbatch) == 2  # the failing job above, then one array


def test_a_worker_that_dies_before_connecting_raises_its_state_and_stderr(open_slurm, calls):
    cluster = open_slurm(python="/no/such/python")
    cluster.scale(2)
    with pytest.raises(WorkerJobError) as info:
        cluster.wait_for_workers(2, timeout=60)
    message = str(info.value)
    assert "FAILED" in message and "exit 127:0" in message
    assert "/no/such/python: No such file or directory" in message
    assert len(calls.sbatch) == 1
    assert set(squeue(cluster.array.job_name).values()) == {"FAILED"}


def test_pending_jobs_report_slurms_reason_and_are_cancelled_on_close(open_slurm, calls):
    cluster = open_slurm(job_extra_directives=["--begin=now+1hour"])
    job_name = cluster.array.job_name
    cluster.scale(2)
    wait_until(
        lambda: (
            len(cluster.job_states) == 2
            and all(s.reason != "None" for s in cluster.job_states.values())
        ),
        "SLURM to give the pending jobs a reason",
    )

    states = cluster.job_states.values()
    assert {(s.state, s.reason) for s in states} == {("PENDING", "BeginTime")}
    assert cluster.error is None
    cluster.close()
    assert len(calls.scancel) == 1
    assert set(squeue(job_name).values()) == {"CANCELLED"}


def test_the_scheduler_speaks_only_tls_with_the_cluster_ca(open_slurm, tmp_path):
    from distributed.security import Security

    from esap_dask.deploy.tls import new_cluster_security

    cluster = open_slurm()
    address = cluster.scheduler_address
    assert address.startswith("tls://127.0.0.1:")
    assert cluster.dashboard_link.startswith("http://127.0.0.1:")

    with pytest.raises((OSError, TimeoutError)):
        Client(address.replace("tls://", "tcp://"), timeout="3s")
    other = new_cluster_security(tmp_path / "other-ca")
    with pytest.raises((OSError, TimeoutError)):  # another cluster's credentials
        Client(address, security=other, timeout="3s")
    own_ca_foreign_cert = Security(
        require_encryption=True,
        tls_ca_file=cluster.security.tls_ca_file,
        tls_client_cert=other.tls_client_cert,
        tls_client_key=other.tls_client_key,
    )
    with pytest.raises((OSError, TimeoutError)):  # trusts the scheduler, but is not trusted
        Client(address, security=own_ca_foreign_cert, timeout="3s")

    credentials = Path(cluster.security.tls_ca_file).parent
    assert credentials.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o077 == 0 for f in credentials.iterdir())
    cluster.scale(1)
    cluster.wait_for_workers(1, timeout=120)  # the worker got the credentials through its job
    with Client(cluster) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6


def test_workers_start_with_esap_dasks_worker_environment(open_slurm, monkeypatch):
    """MALLOC_MMAP_THRESHOLD_ is set in the worker process, through the job script only."""
    # sbatch passes the submitting environment on: make sure the value is not ours
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    cluster = open_slurm()
    cluster.scale(1)
    cluster.wait_for_workers(1, timeout=120)
    with Client(cluster) as client:
        seen = client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_"))
    assert list(seen.values()) == ["16777216"]


def test_scancel_of_a_worker_job_mid_run_loses_nothing(open_slurm, calls):
    cluster = open_slurm()
    client = Client(cluster)
    cluster.scale(3)
    cluster.wait_for_workers(3, timeout=120)
    victim = sorted(cluster.workers)[0]
    victim_job = cluster.workers[victim].job_id

    futures = client.map(lambda i: (time.sleep(0.5), i * i)[1], range(60), pure=False)
    wait_until(lambda: sum(f.done() for f in futures) >= 5, "the run to start")
    subprocess.run(["scancel", victim_job], check=True)

    assert client.gather(futures) == [i * i for i in range(60)]
    wait_until(lambda: len(worker_names(client)) == 3, "the cluster to replace the worker")
    assert victim not in worker_names(client)
    assert squeue(cluster.array.job_name)[victim_job] == "CANCELLED"
    assert len(calls.sbatch) == 2 and array_size(calls.sbatch[1]) == 1
    client.close()


def test_workers_are_renewed_before_walltime_and_no_result_is_lost(open_slurm, calls):
    cluster = open_slurm(walltime="00:01:00", lifetime_margin="30s", lifetime_stagger="5s")
    script = cluster.job_script()
    assert "#SBATCH -t 00:01:00" in script.splitlines()
    assert "--lifetime 30s --lifetime-stagger 5s" in script
    client = Client(cluster)
    cluster.scale(2)
    cluster.wait_for_workers(2, timeout=120)
    first = worker_names(client)
    first_jobs = {cluster.workers[n].job_id for n in first}

    futures = client.map(lambda i: (time.sleep(1.0), i)[1], range(80), pure=False)
    seen: set[str] = set()
    done = [0]
    while not all(f.done() for f in futures):
        seen |= worker_names(client)
        done.append(sum(f.done() for f in futures))
        time.sleep(0.5)

    assert client.gather(futures) == list(range(80))
    assert done == sorted(done), "results were lost and recomputed when workers left"
    assert len(seen - first) >= 2, f"no successor workers: {seen}"
    assert first.isdisjoint(worker_names(client))
    states = squeue(cluster.array.job_name)
    assert {states[j] for j in first_jobs} <= {"CANCELLED", "COMPLETED"}
    assert "TIMEOUT" not in states.values()
    assert len(calls.sbatch) >= 2
    client.close()


def test_the_scheduler_can_run_in_a_batch_job_found_by_its_scheduler_file(open_slurm, calls):
    cluster = open_slurm(scheduler_in_job=True)
    scheduler_job = cluster.scheduler.job_id
    assert squeue(f"{cluster.array.job_name}-scheduler") == {scheduler_job: "RUNNING"}
    assert cluster.scheduler_address.startswith("tls://127.0.0.1:")

    cluster.scale(2)
    cluster.wait_for_workers(2, timeout=120)
    scheduler_file = str(cluster.scheduler.scheduler_file)
    with Client(scheduler_file=scheduler_file, security=cluster.security) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.submit(sum, [1, 2, 3]).result() == 6
    assert len(calls.sbatch) == 2  # the scheduler's job and one array

    cluster.close()
    wait_until(
        lambda: squeue(f"{cluster.array.job_name}-scheduler")[scheduler_job] != "RUNNING",
        "the scheduler job to end",
    )
