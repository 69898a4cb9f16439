"""schemathesis fuzzes the service's OpenAPI document: no request gets a 500.

Runs the schemathesis CLI (a real third-party fuzzer) against the live service,
with a bounded number of examples per operation.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from esap_dask.testing.service import ServiceProcess, write_tokens

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("uws-fuzz")
    tokens = write_tokens(root / "tokens", {"tok-fuzz": "fuzz"})
    with ServiceProcess(root / "data", tokens, extra=["--max-wait", "1"]) as svc:
        yield svc


def test_openapi_document_is_published(service: ServiceProcess) -> None:
    doc = requests.get(f"{service.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/uws/jobs",
        "/uws/jobs/{job_id}",
        "/uws/jobs/{job_id}/phase",
        "/uws/jobs/{job_id}/results",
        "/esap/workflows",
        "/esap/facilities",
    ):
        assert path in doc["paths"], path
    assert {"HTTPBearer", "HTTPBasic"} <= set(doc["components"]["securitySchemes"])


def _schemathesis(
    service: ServiceProcess, tmp_path: Path, name: str, phases: str, config: Path | None = None
) -> str:
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe),
        *(["--config-file", str(config)] if config else []),
        "run",
        "--phases",
        phases,
        f"{service.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--header",
        "Authorization: Bearer tok-fuzz",
        "--max-examples",
        "25",
        "--max-time",
        "40",
        "--seed",
        "6",
        "--workers",
        "2",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / name),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def test_schemathesis_finds_no_server_error(service: ServiceProcess, tmp_path: Path) -> None:
    out = _schemathesis(service, tmp_path, "any", "examples,coverage,fuzzing,stateful")
    assert "generated" in out
    # Again, with every {job_id} an existing job of the caller, to reach past the 404s.
    s = requests.Session()
    s.headers["Authorization"] = "Bearer tok-fuzz"
    job = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "1..3", "PHASE": "RUN"},
        allow_redirects=False,
    ).headers["Location"]
    s.get(job, params={"WAIT": "30"})
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.job_id" = "{job.rsplit("/", 1)[1]}"\n')
    out = _schemathesis(service, tmp_path, "job", "coverage,fuzzing", config)
    assert "generated" in out
    assert requests.get(f"{service.url}/openapi.json").status_code == 200
