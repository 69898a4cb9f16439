"""Per-cluster TLS (esap_dask.deploy.tls) on a local scheduler: no SLURM needed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from distributed import Client, LocalCluster, Scheduler

from esap_dask.deploy.tls import (
    new_cluster_security,
    remove_cluster_security,
    security_directory,
    worker_tls_arguments,
    worker_tls_environment,
)


def test_credentials_are_private_and_encryption_is_required(tmp_path):
    security = new_cluster_security(tmp_path / "tls")
    folder = security_directory(security)

    assert security.require_encryption is True
    assert folder == tmp_path / "tls"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "member-key.pem", "member.pem"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in folder.iterdir())
    assert "PRIVATE KEY" not in (folder / "ca.pem").read_text()  # the CA key is not kept
    assert worker_tls_arguments(security) == [
        "--tls-ca-file", str(folder / "ca.pem"),
        "--tls-cert", str(folder / "member.pem"),
        "--tls-key", str(folder / "member-key.pem"),
    ]  # fmt: skip

    remove_cluster_security(security)
    assert not folder.exists()


def test_default_directory_is_a_fresh_private_one():
    a, b = new_cluster_security(), new_cluster_security()
    try:
        assert security_directory(a) != security_directory(b)
        assert security_directory(a).parent.stat().st_mode & 0o077 == 0
    finally:
        remove_cluster_security(a)
        remove_cluster_security(b)


def test_tls_cluster_refuses_plain_tcp_and_foreign_certificates(tmp_path):
    security = new_cluster_security(tmp_path / "ours")
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls://",
        host="127.0.0.1",
        dashboard_address=None,
        security=security,
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout="3s")
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=new_cluster_security(tmp_path / "theirs"), timeout="3s")


@pytest.mark.slow
def test_a_worker_gets_its_credentials_from_the_environment_only(tmp_path):
    """A `dask worker` process with no credential file, only worker_tls_environment()."""
    security = new_cluster_security(tmp_path / "tls")

    async def run() -> list[str]:
        async with Scheduler(
            protocol="tls://", host="127.0.0.1", dashboard_address=None, security=security
        ) as scheduler:
            env = {**os.environ, **worker_tls_environment(security)}
            proc = subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", scheduler.address,
                 "--name", "env-only", "--nthreads", "1", "--no-nanny"],
                env=env, cwd=tmp_path,
            )  # fmt: skip
            try:
                for _ in range(300):
                    if scheduler.workers:
                        break
                    await asyncio.sleep(0.1)
                return [ws.name for ws in scheduler.workers.values()]
            finally:
                proc.terminate()
                proc.wait(30)

    env = worker_tls_environment(security)
    assert env["DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"].startswith("-----BEGIN PRIVATE KEY")
    assert asyncio.run(run()) == ["env-only"]
