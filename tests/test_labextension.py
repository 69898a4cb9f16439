"""The facilities in JupyterLab's Dask extension: a cluster made by dask-labextension's manager.

The manager (``dask_labextension.manager.DaskClusterManager``) is what the JupyterLab
server runs behind the launcher's NEW button; with the factory configuration of
docs/notebooks.md it opens the facility named in ``esap.labextension.facility``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import dask.config
import pytest
import yaml
from distributed import Client

from esap_dask.catalogs.facilities import FacilityError
from esap_dask.catalogs.labextension import facility_cluster, lab_client, lab_security

DOCS = Path(__file__).parents[1] / "docs" / "notebooks.md"


def _documented_config() -> dict:
    """The YAML block of docs/notebooks.md that configures the launcher."""
    start = "```yaml\n# ~/.config/dask/esap-labextension.yaml\n"
    block = DOCS.read_text().split(start, 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


def _manager_class() -> type:
    """``DaskClusterManager``, imported with an event loop set in this thread.

    Importing ``dask_labextension`` makes its module-level manager, whose constructor
    asks asyncio for the current event loop: in a JupyterLab server there is one, in a
    test process after an ``asyncio.run`` there is none (a RuntimeError at import).
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        from dask_labextension.manager import DaskClusterManager
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return DaskClusterManager


def _catalog(tmp_path: Path) -> Path:
    (tmp_path / "lab-test.yaml").write_text(
        "name: lab-test\n"
        "description: one worker process, for the launcher test\n"
        "url: https://example.org\n"
        "facilitytype: local\n"
        "runtimeengine: none\n"
        "options:\n"
        "  n_workers: 1\n"
        "  threads_per_worker: 1\n"
    )
    return tmp_path


@pytest.mark.slow
def test_the_launcher_opens_the_configured_facility(tmp_path: Path, monkeypatch) -> None:
    DaskClusterManager = _manager_class()

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    config = _documented_config()
    assert config["labextension"]["factory"] == {
        "module": "esap_dask.catalogs.labextension",
        "class": "facility_cluster",
        "args": [],
        "kwargs": {},
    }
    config["esap"]["labextension"]["facility"] = "lab-test"

    async def launch() -> tuple[dict, dict, int, str]:
        async with DaskClusterManager() as manager:
            model = await manager.start_cluster(configuration={"name": "from the launcher"})
            address = model["scheduler_address"]
            async with Client(address, security=lab_security(address), asynchronous=True) as client:
                await client.wait_for_workers(1)
                answer = await client.submit(sum, [20, 22])
                scaled = await manager.scale_cluster(model["id"], 2)  # the panel's SCALE
                await client.wait_for_workers(2)
            closed = await manager.close_cluster(model["id"])
            assert closed is not None and not manager.list_clusters()
            return model, scaled, answer, address

    with dask.config.set(  # as the file in ~/.config/dask merges into the defaults
        {
            "labextension.factory": config["labextension"]["factory"],
            "esap.labextension.facility": config["esap"]["labextension"]["facility"],
            "esap.facilities-path": [str(_catalog(tmp_path))],
        }
    ):
        model, scaled, answer, address = asyncio.run(launch())
    assert model["name"] == "from the launcher" and model["workers"] == 1
    assert address.startswith("tls://")  # the facility's TLS, as open_cluster gives it
    assert model["dashboard_link"].startswith("http")
    assert answer == 42
    assert scaled["id"] == model["id"]
    with pytest.raises(FacilityError, match="JupyterLab Dask launcher"):
        lab_security(address)  # a closed cluster is forgotten


def test_a_notebook_connects_to_a_launcher_cluster_by_its_address(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    with dask.config.set({"esap.facilities-path": [str(_catalog(tmp_path))]}):
        cluster = facility_cluster("lab-test")
    with cluster:
        assert cluster.scheduler_address.startswith("tls://")  # Client(address) is refused
        with lab_client(cluster.scheduler_address) as client:
            assert client.submit(pow, 2, 10).result() == 1024


def test_an_unknown_facility_names_the_config_key() -> None:
    with (
        dask.config.set({"esap.labextension.facility": "no-such-facility"}),
        pytest.raises(FacilityError, match="DASK_ESAP__LABEXTENSION__FACILITY"),
    ):
        facility_cluster()


@pytest.mark.slow
@pytest.mark.slurm
def test_the_launcher_opens_the_slurm_facility(slurm, tmp_path: Path, monkeypatch) -> None:
    """dask-labextension issues 68 and 78: SLURM clusters from the launcher, here a facility."""
    DaskClusterManager = _manager_class()

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    factory = _documented_config()["labextension"]["factory"]

    async def launch() -> tuple[dict, int]:
        async with DaskClusterManager() as manager:
            model = await manager.start_cluster(configuration={"workers": 1})
            address = model["scheduler_address"]
            async with Client(address, security=lab_security(address), asynchronous=True) as client:
                await client.wait_for_workers(1, timeout=120)
                answer = await client.submit(sum, [20, 22])
            await manager.close_cluster(model["id"])
            return model, answer

    with dask.config.set(
        {"labextension.factory": factory, "esap.labextension.facility": "slurm-loopback"}
    ):
        model, answer = asyncio.run(launch())
    assert model["name"].startswith("SLURMArrayCluster") and answer == 42
