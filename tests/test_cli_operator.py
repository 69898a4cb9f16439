"""The command line as an operator meets it: log levels, shell completion, facility checks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ESAP_DASK


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
