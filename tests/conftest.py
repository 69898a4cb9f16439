"""Shared fixtures: a LocalCluster client, the shared H.E.S.S. data, the project paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HESS = SHARED / "data" / "hess-dl3-dr1"
ESAP_DASK = [sys.executable, "-m", "esap_dask"]


@pytest.fixture(scope="session")
def client() -> Iterator[object]:
    """A distributed Client on a 2-worker LocalCluster, shared by the whole session."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1"
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="session")
def hess_dir() -> Path:
    """The H.E.S.S. DL3 DR1 release in ../shared (never copied into the project)."""
    if not (HESS / "obs-index.fits.gz").is_file():
        pytest.fail(f"the H.E.S.S. DL3 DR1 data is missing at {HESS}; it comes with ../shared")
    return HESS


@pytest.fixture
def cli_env() -> dict[str, str]:
    """The environment for running the CLI in a subprocess (no progress bar)."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


SLURM_START = "bash scripts/slurm.sh start"


@pytest.fixture(scope="session")
def slurm() -> None:
    """Fail (not skip) when the local SLURM is not up, naming the command that starts it."""
    if shutil.which("sbatch") is None:
        pytest.fail(f"SLURM is not installed here; run `{SLURM_START}` (installs slurm-wlm, munge)")
    state = subprocess.run(
        ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, check=False
    )
    if state.returncode != 0 or not state.stdout.strip().startswith(("idle", "mix", "alloc")):
        said = state.stdout.strip() or state.stderr.strip()
        pytest.fail(f"the local SLURM is not running (sinfo: {said}); run `{SLURM_START}` first")
