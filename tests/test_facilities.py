"""The facility catalog: YAML files, dask.config merging, clear errors, open_cluster."""

from __future__ import annotations

import gc
import json
import os
import subprocess

import dask
import pytest
from distributed import Client

from esap_dask import list_facilities, load_facility, open_cluster
from esap_dask.catalogs.facilities import FacilityError
from esap_dask.deploy.tls import security_directory
from tests.conftest import ESAP_DASK


@pytest.fixture
def catalog(tmp_path):
    with dask.config.set({"esap.facilities-path": [str(tmp_path)]}):
        yield tmp_path


def test_builtin_local_facility():
    names = {f.name for f in list_facilities()}
    assert "local" in names
    local = load_facility("local")
    assert (local.facilitytype, local.runtimeengine) == ("local", "none")
    assert local.as_record()["facilitytype"] == "local"


def test_options_merge_with_dask_config_and_overrides(catalog):
    (catalog / "site.yaml").write_text(
        "name: site\nfacilitytype: slurm\noptions:\n  queue: short\n  cores: 4\n"
    )
    assert load_facility("site").options == {"queue": "short", "cores": 4}
    with dask.config.set({"esap.facilities.site.queue": "long"}):
        assert load_facility("site").options["queue"] == "long"
        assert load_facility("site", queue="debug").options["queue"] == "debug"


def test_environment_configures_facilities_the_dask_way(tmp_path):
    (tmp_path / "site.yaml").write_text("name: site\nfacilitytype: slurm\noptions:\n  cores: 4\n")
    env = {
        **os.environ,
        "DASK_ESAP__FACILITIES_PATH": json.dumps([str(tmp_path)]),
        "DASK_ESAP__FACILITIES__SITE__CORES": "8",
    }
    proc = subprocess.run(
        [*ESAP_DASK, "facilities", "--json"], capture_output=True, text=True, env=env, check=True
    )
    site = {f["name"]: f for f in json.loads(proc.stdout)}["site"]
    assert site["options"]["cores"] == 8  # the effective value, as the cluster gets it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: bad\n", "missing field(s) facilitytype"),
        ("name: bad\nfacilitytype: cloud\n", "facilitytype 'cloud' is not one of"),
        ("name: bad\nfacilitytype: slurm\nruntimeengine: vm\n", "runtimeengine 'vm'"),
        ("name: bad\nfacilitytype: slurm\nqueue: x\n", "cluster options go under 'options:'"),
        ("name: [bad\n", "not valid YAML"),
    ],
)
def test_invalid_facility_files_name_the_file(catalog, text, message):
    (catalog / "bad.yaml").write_text(text)
    with pytest.raises(FacilityError, match=r"bad\.yaml") as err:
        list_facilities()
    assert message in str(err.value)


def test_unknown_facility_lists_the_known_ones():
    with pytest.raises(FacilityError, match="unknown facility 'nowhere'") as err:
        load_facility("nowhere")
    assert "local" in str(err.value)


def test_open_cluster_local_runs_plain_client_map_over_tls_only():
    with open_cluster("local", n_workers=2) as cluster, Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        squares = client.gather(client.map(lambda x: x * x, range(10)))
        assert squares == [x * x for x in range(10)]
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with pytest.raises(OSError):  # a client without the cluster's certificate
            Client(address.replace("tls://", "tcp://"), timeout="3s")
        credentials = security_directory(cluster.security)
        assert credentials is not None and credentials.stat().st_mode & 0o777 == 0o700
    del cluster, client
    gc.collect()
    assert not credentials.exists()  # removed with the cluster
