"""The command line as an operator meets it: log levels, shell completion, facility checks."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

import pytest

import esap_dask
from tests.conftest import ESAP_DASK, ROOT


def esap(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [*ESAP_DASK, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def distributed_lines(stderr: str) -> list[str]:
    """The log lines of distributed's loggers (``... - distributed.scheduler - INFO - ...``)."""
    return [line for line in stderr.splitlines() if " - distributed." in line]


@pytest.mark.slow
def test_distributed_log_lines_are_quiet_by_default_and_shown_with_v(tmp_path: Path) -> None:
    store = str(tmp_path / "hello.zarr")
    quiet = esap("run", "helloworld", "-o", "1..4", "-s", store)
    assert quiet.returncode == 0, quiet.stderr
    assert distributed_lines(quiet.stderr) == []
    assert "succeeded  4" in quiet.stdout

    verbose = esap("-v", "run", "helloworld", "-o", "1..4", "-s", store, "--force")
    assert verbose.returncode == 0, verbose.stderr
    lines = distributed_lines(verbose.stderr)
    assert any("distributed.scheduler - INFO" in line for line in lines), verbose.stderr
    assert any("distributed.worker - INFO" in line for line in lines), verbose.stderr


@pytest.mark.slow
def test_q_prints_only_errors_and_failed_observations(tmp_path: Path) -> None:
    store = str(tmp_path / "hello.zarr")
    done = esap("-q", "run", "helloworld", "-o", "1..3", "-s", store)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""
    failing = esap("-q", "run", "helloworld", "-o", "4..5", "-s", store, "-p", "fail=true")
    assert failing.returncode == 1
    assert failing.stdout == ""
    assert "failed 4: " in failing.stderr and "failed 5: " in failing.stderr
    assert distributed_lines(failing.stderr) == []


def test_v_and_q_together_are_refused() -> None:
    proc = esap("-v", "-q", "facilities")
    assert proc.returncode == 2
    assert "-v and -q exclude each other" in proc.stderr


def png_width(path: Path) -> int:
    """The width in pixels from the PNG's IHDR chunk."""
    return int.from_bytes(path.read_bytes()[16:20], "big")


@pytest.mark.slow
def test_status_plot_has_no_failures_panel_when_nothing_failed(tmp_path: Path) -> None:
    store = str(tmp_path / "s.zarr")
    assert esap("-q", "run", "helloworld", "-o", "1..4", "-s", store).returncode == 0
    proc = esap("status", store, "--plot", str(tmp_path / "ok.png"))
    assert proc.returncode == 0, proc.stderr
    assert png_width(tmp_path / "ok.png") == 940  # two panels of 4.7 inches at 100 dpi
    failing = esap("-q", "run", "helloworld", "-o", "1..4", "-s", store, "-p", "fail=true")
    assert failing.returncode == 1
    assert esap("status", store, "--plot", str(tmp_path / "failed.png")).returncode == 0
    assert png_width(tmp_path / "failed.png") == 1410  # and the failures by reason


def complete(shell: str, words: str) -> list[str]:
    """What click's completion protocol answers a shell for ``words`` (the last one typed)."""
    env = {
        **os.environ,
        "_ESAP_DASK_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    proc = esap(env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_completion_offers_pipeline_and_facility_names() -> None:
    assert complete("bash", "esap-dask run hel") == ["plain,helloworld"]
    assert complete("bash", "esap-dask run helloworld -o 1..4 -s s.zarr --facility slurm") == [
        "plain,slurm",
        "plain,slurm-loopback",
    ]
    assert complete("bash", "esap-dask status s.zarr -f lo") == ["plain,local"]
    assert complete("bash", "esap-dask run ./pipelines/hel") == ["file,./pipelines/hel"]
    zsh = complete("zsh", "esap-dask facilities check ")
    names = zsh[1::3]  # zsh gets type, value, help for each
    assert {"local", "slurm", "slurm-loopback", "ssh", "dirac"} <= set(names)
    assert "Template for a real SLURM site" in zsh[zsh.index("slurm") + 1]


def test_completion_scripts_for_bash_zsh_and_fish() -> None:
    for shell in ("bash", "zsh", "fish"):
        env = {**os.environ, "_ESAP_DASK_COMPLETE": f"{shell}_source"}
        proc = esap(env=env)
        assert proc.returncode == 0, proc.stderr
        assert "_ESAP_DASK_COMPLETE" in proc.stdout, (shell, proc.stdout[:200])


@pytest.mark.slow
def test_facilities_check_on_local_reports_and_fails_with_the_reason() -> None:
    proc = esap("facilities", "check", "local", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["facility"] == "local" and report["job_id"] is None
    assert report["python"] == platform.python_version()
    assert report["esap_dask"] == esap_dask.__version__
    assert report["host"] == platform.node() and report["seconds_to_worker"] > 0
    late = esap("facilities", "check", "local", "--timeout", "0.01")
    assert late.returncode == 1
    assert "error: facility 'local': no worker connected within 0.01 s" in late.stderr
    assert distributed_lines(late.stderr) == []


def test_facilities_check_refuses_the_template_naming_its_placeholders() -> None:
    proc = esap("facilities", "check", "slurm")
    assert proc.returncode == 2
    assert "facility 'slurm'" in proc.stderr and "is a template" in proc.stderr
    assert "options.account (<your-account>)" in proc.stderr
    listed = esap("facilities", env={**os.environ, "COLUMNS": "200"})
    assert "slurm (template)" in listed.stdout and "slurm-loopback (template)" not in listed.stdout


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_facilities_check_on_the_loopback_slurm() -> None:
    proc = esap("facilities", "check", "slurm-loopback")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^job id +\d+_0\b", proc.stdout, re.M), proc.stdout  # an array task
    assert "ok: facility slurm-loopback gave a worker that ran a task" in proc.stdout
    job = re.search(r"^job id +(\d+)_0", proc.stdout, re.M)[1]  # type: ignore[index]
    state = subprocess.run(["squeue", "--noheader", "-j", job], capture_output=True, text=True)
    assert state.stdout.strip() == ""  # the job is gone: the check stopped it

    env = {**os.environ, "DASK_ESAP__FACILITIES__SLURM_LOOPBACK__QUEUE": "no-such-partition"}
    bad = esap("facilities", "check", "slurm-loopback", "--timeout", "120", env=env)
    assert bad.returncode == 1
    assert "error: facility 'slurm-loopback': the worker did not come: sbatch refused" in (
        bad.stderr
    )
    assert "invalid partition" in bad.stderr.lower()


@pytest.mark.slow
def test_the_service_offers_no_template_and_refuses_a_job_on_one(tmp_path: Path) -> None:
    import requests

    from esap_dask.testing.service import ServiceProcess, write_tokens

    tokens = write_tokens(tmp_path / "tokens", {"tok-op": "op"})
    auth = {"Authorization": "Bearer tok-op"}
    with ServiceProcess(tmp_path / "data", tokens) as svc:
        offered = {
            f["name"] for f in requests.get(f"{svc.url}/esap/facilities", headers=auth).json()
        }
        assert {"local", "slurm-loopback"} <= offered and "slurm" not in offered
        page = requests.get(f"{svc.url}/", headers=auth).text
        assert 'value="slurm-loopback"' in page and 'value="slurm"' not in page
        r = requests.post(
            f"{svc.url}/uws/jobs",
            headers=auth,
            data={"pipeline": "helloworld", "observations": "1..2", "facility": "slurm"},
            allow_redirects=False,
        )
        assert r.status_code == 400
        assert "'slurm' is a template for a site" in r.text
        assert "options.account (<your-account>)" in r.text


@pytest.mark.slow
def test_quiet_logs_do_not_stop_ssh_clusters_from_starting(tmp_path: Path) -> None:
    """distributed's SSH launcher reads its remote processes' info lines: -q must not hide them."""
    sshd = ["bash", str(ROOT / "scripts" / "sshd.sh"), "start"]
    started = subprocess.run(sshd, capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(
            f"no loopback sshd ({started.stderr.strip()}); run `bash scripts/sshd.sh start`"
        )
    store = str(tmp_path / "ssh.zarr")
    done = esap("-q", "run", "helloworld", "-o", "1..3", "-s", store, "-f", "ssh", timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and distributed_lines(done.stderr) == []
    check = esap("facilities", "check", "ssh", "--json", "--timeout", "120", timeout=240)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["job_id"] is None
