"""ESAP catalog endpoints and the ``serve`` command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from esap_dask.service.cli import serve
from esap_dask.testing.service import ServiceProcess, write_tokens

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer tok-esap"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("catalog")
    tokens = write_tokens(root / "tokens", {"tok-esap": "esap"})
    with ServiceProcess(root / "data", tokens) as svc:
        yield svc


def test_facilities_have_the_esap_batch_facility_fields(service: ServiceProcess) -> None:
    records = requests.get(f"{service.url}/esap/facilities", headers=AUTH).json()
    local = next(r for r in records if r["name"] == "local")
    assert set(local) >= {"name", "description", "url", "facilitytype", "runtimeengine"}
    assert local["facilitytype"] == "local"
    assert requests.get(f"{service.url}/esap/facilities").status_code == 401


def test_workflows_have_their_parameters(service: ServiceProcess) -> None:
    records = requests.get(f"{service.url}/esap/workflows", headers=AUTH).json()
    hello = next(r for r in records if r["name"] == "helloworld")
    assert {"name", "version", "description", "parameters", "schema"} <= set(hello)
    sleep = next(p for p in hello["parameters"] if p["name"] == "sleep")
    assert sleep == {
        "name": "sleep",
        "type": "float",
        "default": 0.0,
        "minimum": 0,
        "description": "seconds of simulated work per observation",
    }
    assert [p["name"] for p in hello["service_parameters"]] == [
        "pipeline",
        "facility",
        "observations",
    ]
    one = requests.get(f"{service.url}/esap/workflows/helloworld", headers=AUTH).json()
    assert one == hello
    missing = requests.get(f"{service.url}/esap/workflows/nope", headers=AUTH)
    assert missing.status_code == 404 and "helloworld" in missing.text


def test_serve_refuses_to_start_without_users(tmp_path: Path) -> None:
    result = CliRunner().invoke(serve, ["--data", str(tmp_path), "--port", "1"])
    assert result.exit_code != 0
    assert "--tokens" in result.output
    result = CliRunner().invoke(serve, ["--tokens", str(tmp_path / "none")])
    assert result.exit_code != 0 and "does not exist" in result.output
    bad = tmp_path / "bad-tokens"
    bad.write_text("only-one-word\n")
    result = CliRunner().invoke(serve, ["--tokens", str(bad), "--data", str(tmp_path)])
    assert result.exit_code != 0 and "TOKEN USERNAME" in result.output
