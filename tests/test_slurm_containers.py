"""Container runtimes wrapping SLURM workers: the generated job script, exactly.

No container runtime (apptainer, singularity, docker, podman) is installed on the
test machines, so these tests check the generated job script only; nothing is
submitted. They need no SLURM: opening the cluster starts only its scheduler.
Every script exports esap-dask's worker environment before the facility's prologue,
and every container command passes it again (apptainer's ``--cleanenv`` drops it).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import dask.config
import pytest

from esap_dask.catalogs.facilities import Facility
from esap_dask.deploy.containers import container_python
from esap_dask.deploy.jobqueue import open_jobqueue

EXPORT = "export MALLOC_MMAP_THRESHOLD_=16777216"


def open_container_cluster(tmp_path: Path, engine: str, image: str, **overrides):
    facility = Facility(name="hpc-containers", facilitytype="slurm", runtimeengine=engine)
    options = {
        "queue": "debug",
        "cores": 2,
        "processes": 1,
        "memory": "4GiB",
        "walltime": "01:00:00",
        "host": "127.0.0.1",
        "job_name": "esap-test",
        "log_directory": str(tmp_path / "logs"),
        "tls_directory": str(tmp_path / "tls"),
        "job_script_prologue": [f"module load {engine}"],
        "container": {
            "image": image,
            "python": "python3",
            "binds": ["/data", "/scratch:/scratch:ro"],
            "env": {"OMP_NUM_THREADS": "1"},
        },
        **overrides,
    }
    return open_jobqueue(facility, options)


def split_script(script: str) -> tuple[list[str], list[str]]:
    """(every line but the last non-empty one, the last one split into shell words)."""
    lines = [line for line in script.splitlines() if line]
    return lines[:-1], shlex.split(lines[-1])


def worker_words(cluster, tmp_path: Path, python: list[str]) -> list[str]:
    tls = tmp_path / "tls"
    return [
        *python,
        "-m",
        "distributed.cli.dask_worker",
        cluster.scheduler_address,
        "--name",
        "esap-test-${SLURM_ARRAY_TASK_ID}",
        "--nthreads",
        "2",
        "--memory-limit",
        "4.00GiB",
        "--nanny",
        "--death-timeout",
        "60",
        "--lifetime",
        "3240s",
        "--lifetime-stagger",
        "180s",
        "--protocol",
        "tls://",
        "--tls-ca-file",
        f"{tls}/ca.pem",
        "--tls-cert",
        f"{tls}/member.pem",
        "--tls-key",
        f"{tls}/member-key.pem",
    ]


def header(tmp_path: Path) -> list[str]:
    logs = tmp_path / "logs" / "esap-test"
    return [
        "#!/usr/bin/env bash",
        "#SBATCH -J esap-test",
        "#SBATCH -p debug",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=4G",
        "#SBATCH -t 01:00:00",
        f"#SBATCH -o {logs}/%x-%A_%a.out",
        f"#SBATCH -e {logs}/%x-%A_%a.err",
    ]


def test_apptainer_job_script_generated_only_no_runtime_installed(tmp_path):
    """The apptainer job script, line by line and word by word (generated only, not run)."""
    cluster = open_container_cluster(tmp_path, "apptainer", "/images/esap-worker.sif")
    try:
        lines, command = split_script(cluster.job_script())
        tls = tmp_path / "tls"
        assert lines == [*header(tmp_path), EXPORT, "module load apptainer"]
        assert command == worker_words(
            cluster,
            tmp_path,
            [
                "apptainer", "exec", "--cleanenv",
                "--bind", "/data:/data",
                "--bind", "/scratch:/scratch:ro",
                "--bind", f"{tls}:{tls}",
                "--env", "MALLOC_MMAP_THRESHOLD_=16777216",
                "--env", "OMP_NUM_THREADS=1",
                "--", "/images/esap-worker.sif", "python3",
            ],
        )  # fmt: skip
    finally:
        cluster.close()


def test_docker_job_script_generated_only_no_runtime_installed(tmp_path):
    """The docker job script: host network, the user's uid, volumes, env (generated only)."""
    cluster = open_container_cluster(tmp_path, "docker", "ghcr.io/esap/worker:1.0")
    try:
        lines, command = split_script(cluster.job_script())
        tls = tmp_path / "tls"
        assert lines == [*header(tmp_path), EXPORT, "module load docker"]
        assert command == worker_words(
            cluster,
            tmp_path,
            [
                "docker", "run", "--rm", "--network", "host",
                "--user", "$(id -u):$(id -g)",
                "-v", "/data:/data",
                "-v", "/scratch:/scratch:ro",
                "-v", f"{tls}:{tls}",
                "-e", "MALLOC_MMAP_THRESHOLD_=16777216",
                "-e", "OMP_NUM_THREADS=1",
                "--", "ghcr.io/esap/worker:1.0", "python3",
            ],
        )  # fmt: skip
    finally:
        cluster.close()


def test_users_own_values_win_over_the_worker_environment(tmp_path):
    """An export in the prologue runs after esap-dask's; a container env replaces its value."""
    cluster = open_container_cluster(
        tmp_path,
        "apptainer",
        "/images/esap-worker.sif",
        job_script_prologue=["export MALLOC_MMAP_THRESHOLD_=65536"],
        container={
            "image": "/images/esap-worker.sif",
            "env": {"MALLOC_MMAP_THRESHOLD_": "131072"},
        },
    )
    try:
        lines, command = split_script(cluster.job_script())
        assert lines[-2:] == [EXPORT, "export MALLOC_MMAP_THRESHOLD_=65536"]
        envs = [command[i + 1] for i, word in enumerate(command) if word == "--env"]
        assert envs == ["MALLOC_MMAP_THRESHOLD_=131072"]
    finally:
        cluster.close()


def test_no_runtime_keeps_dask_jobqueues_python(tmp_path):
    facility = Facility(name="plain", facilitytype="slurm")
    cluster = open_jobqueue(
        facility,
        {"cores": 1, "memory": "1GiB", "host": "127.0.0.1", "tls_directory": str(tmp_path)},
    )
    try:
        lines, command = split_script(cluster.job_script())
        assert lines[-1] == EXPORT, "the worker environment, right before the worker"
        assert command[:3] == [sys.executable, "-m", "distributed.cli.dask_worker"]
    finally:
        cluster.close()


@pytest.mark.parametrize("key", ["job-script-prologue", "env-extra"])
@pytest.mark.filterwarnings("ignore:env_extra has been renamed:FutureWarning")
def test_a_prologue_from_dask_config_is_kept_after_the_worker_environment(tmp_path, key):
    """dask-jobqueue's own configuration (and its deprecated env-extra) still applies."""
    facility = Facility(name="plain", facilitytype="slurm")
    options = {"cores": 1, "memory": "1GiB", "host": "127.0.0.1", "tls_directory": str(tmp_path)}
    with dask.config.set({f"jobqueue.slurm.{key}": ["source /opt/site/env.sh"]}):
        cluster = open_jobqueue(facility, options)
    try:
        lines, _ = split_script(cluster.job_script())
        assert lines[-2:] == [EXPORT, "source /opt/site/env.sh"]
    finally:
        cluster.close()


def test_unknown_engine_or_missing_image_says_what_to_set():
    with pytest.raises(ValueError, match="needs an image"):
        container_python("apptainer", image="")
    with pytest.raises(ValueError, match="use one of apptainer"):
        container_python("charliecloud", image="x")
