"""The ``ssh`` facility against a real sshd on loopback (bash scripts/sshd.sh start)."""

from __future__ import annotations

import os
import subprocess

import pytest
from distributed import Client

import esap_dask.catalogs.facilities as facilities
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sshd() -> None:
    """Start the loopback sshd (idempotent); fail, naming the command, when it cannot."""
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "sshd.sh"), "start"], capture_output=True, text=True
    )
    if started.returncode != 0:
        pytest.fail(
            f"no sshd with key login on 127.0.0.1:2222 ({started.stderr.strip()}); "
            "run `bash scripts/sshd.sh start`"
        )


def test_ssh_facility_runs_workers_over_ssh_with_tls(sshd):
    cluster = facilities.open_cluster("ssh")
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=60)
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 2
            assert all(w.startswith("tls://127.0.0.1:") for w in workers)
            assert client.submit(sum, [1, 2, 3]).result() == 6
            # esap-dask's worker environment, from the Dask configuration SSHCluster ships
            seen = client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_"))
            assert list(seen.values()) == ["16777216"] * 2
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout="3s")
    finally:
        cluster.close()


def test_ssh_facility_without_worker_hosts_says_what_to_add():
    with pytest.raises(facilities.FacilityError, match="at least one worker host"):
        facilities.open_cluster("ssh", hosts=["127.0.0.1"])


def test_a_relative_store_on_the_ssh_facility_is_the_one_in_the_working_directory(sshd, tmp_path):
    """SSH workers start in their home directory: a relative --store is the driver's."""
    import json

    import xarray as xr

    from tests.conftest import ESAP_DASK

    done = subprocess.run(
        [*ESAP_DASK, "run", "helloworld", "-o", "1..6", "-s", "rel.zarr", "-f", "ssh", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert (summary["succeeded"], summary["failed"]) == (6, 0)
    assert summary["store"] == str(tmp_path / "rel.zarr")
    ds = xr.open_zarr(tmp_path / "rel.zarr")
    assert sorted(ds.obs.values.tolist(), key=int) == [str(i) for i in range(1, 7)]
