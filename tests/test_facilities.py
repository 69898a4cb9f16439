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
from esap_dask.catalogs.facilities import (
    FacilityError,
    broken_facilities,
    unfilled_placeholders,
    user_catalog_dir,
)
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
        ("name: bad\n", "missing field 'facilitytype'"),
        ("name: bad\nfacilitytype: cloud\n", "field 'facilitytype': 'cloud' is not one of"),
        ("name: bad\nfacilitytype: slurm\nruntimeengine: vm\n", "field 'runtimeengine': 'vm'"),
        (
            "name: bad\nfacilitytype: slurm\nqueue: x\n",
            "unknown field 'queue' (cluster options go under 'options:')",
        ),
        ("name: bad\nfacilitytype: slurm\noptions: [1]\n", "field 'options': "),
        ("name: [bad\n", "not valid YAML"),
    ],
)
def test_an_invalid_facility_file_is_left_out_with_its_error(catalog, text, message):
    (catalog / "bad.yaml").write_text(text)
    names = {f.name for f in list_facilities()}
    assert "local" in names and "bad" not in names  # the others are still listed
    broken = broken_facilities()
    assert list(broken) == [catalog / "bad.yaml"]
    assert str(catalog / "bad.yaml") in str(broken[catalog / "bad.yaml"])
    assert message in str(broken[catalog / "bad.yaml"])
    with pytest.raises(FacilityError, match=r"bad\.yaml") as err:  # opening it says why
        load_facility("bad")
    assert message in str(err.value)


def test_facilities_warns_about_a_broken_file_and_lists_the_others(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: broken\nfacilitytype: cloud\n")
    env = {**os.environ, "DASK_ESAP__FACILITIES_PATH": json.dumps([str(tmp_path)])}
    proc = subprocess.run([*ESAP_DASK, "facilities", "--json"], capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {"local", "slurm-loopback"} <= {f["name"] for f in json.loads(proc.stdout)}
    assert f"warning: {tmp_path / 'broken.yaml'}: field 'facilitytype': 'cloud'" in proc.stderr


def test_the_slurm_template_lists_but_refuses_to_open_naming_each_placeholder():
    template = load_facility("slurm")
    assert template.facilitytype == "slurm"
    assert unfilled_placeholders(template) == [
        "options.queue (<your-partition>)",
        "options.account (<your-account>)",
        "options.job_script_prologue[0] (<your-python-module>)",
        "options.job_script_prologue[1] (<your-venv>)",
    ]
    with pytest.raises(FacilityError, match=r"is a template: fill in options\.queue") as err:
        open_cluster("slurm")
    assert "DASK_ESAP__FACILITIES__SLURM__<OPTION>" in str(err.value)
    # filled from the Dask config, only the prologue is left
    with dask.config.set({"esap.facilities.slurm": {"queue": "debug", "account": "astro"}}):
        assert [p.split(" ")[0] for p in unfilled_placeholders(load_facility("slurm"))] == [
            "options.job_script_prologue[0]",
            "options.job_script_prologue[1]",
        ]


def test_the_user_catalog_directory_comes_from_platformdirs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    mine = tmp_path / "esap-dask" / "clusters"
    mine.mkdir(parents=True)
    (mine / "mysite.yaml").write_text("name: mysite\nfacilitytype: slurm\n")
    assert user_catalog_dir() == mine
    assert load_facility("mysite").path == (mine / "mysite.yaml").resolve()


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
