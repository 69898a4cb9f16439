"""PBS, SGE, LSF and HTCondor facilities: dask-jobqueue's one-job-per-worker clusters,
with esap-dask's TLS, loopback dashboard, walltime-aware lifetime and worker environment
(job scripts only: none of these batch systems runs here)."""

from __future__ import annotations

import shlex

import dask_jobqueue
import pytest

from esap_dask.catalogs.facilities import Facility, FacilityError
from esap_dask.deploy.jobqueue import open_jobqueue
from esap_dask.deploy.walltime import parse_walltime

CASES = {
    "pbs": (dask_jobqueue.PBSCluster, {"walltime": "01:00:00"}, "#PBS -l walltime=01:00:00"),
    "sge": (dask_jobqueue.SGECluster, {"walltime": "01:00:00"}, "#$ -l h_rt=01:00:00"),
    "lsf": (dask_jobqueue.LSFCluster, {"walltime": "01:00"}, "#BSUB -W 01:00"),
    "htcondor": (dask_jobqueue.HTCondorCluster, {"disk": "1GiB"}, None),
}


@pytest.mark.parametrize("ftype", sorted(CASES))
def test_other_batch_systems_get_tls_lifetime_and_worker_environment(ftype, tmp_path):
    cls, extra, walltime_line = CASES[ftype]
    facility = Facility(name=f"site-{ftype}", facilitytype=ftype)
    options = {"cores": 1, "memory": "1GiB", "processes": 1, "host": "127.0.0.1", **extra}
    cluster = open_jobqueue(facility, {**options, "tls_directory": str(tmp_path)})
    try:
        assert type(cluster) is cls
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        script = cluster.job_script()
        lines = script.splitlines()
        line = next(ln for ln in lines if "distributed.cli.dask_worker" in ln)
        if ftype == "htcondor":  # Arguments = "-c '<prologue>; <worker command>'"
            line = shlex.split(shlex.split(line.split("=", 1)[1])[0])[1]
            export, line = line.split("; ", 1)
        else:
            export = lines[lines.index(line) - 1]
        assert export == "export MALLOC_MMAP_THRESHOLD_=16777216"
        command = shlex.split(line)
        assert command[command.index("--tls-ca-file") + 1] == str(tmp_path / "ca.pem")
        assert command[command.index("--tls-key") + 1] == str(tmp_path / "member-key.pem")
        if walltime_line is not None:
            assert walltime_line in script.splitlines()
            assert command[command.index("--lifetime") + 1] == "3240s"
            assert command[command.index("--lifetime-stagger") + 1] == "180s"
    finally:
        cluster.close()


def test_array_options_need_slurm():
    facility = Facility(name="site-pbs", facilitytype="pbs")
    with pytest.raises(FacilityError, match="needs facilitytype slurm"):
        open_jobqueue(facility, {"cores": 1, "memory": "1GiB", "array_cap": 4})


def test_walltime_formats():
    assert parse_walltime("2-12:00:00") == 2.5 * 86400
    assert parse_walltime(90) == 5400
    assert parse_walltime("45:00") == 2700
    assert parse_walltime("01:30", "lsf") == 5400
    assert parse_walltime("2h") == 7200
