"""``esap-dask serve`` stopped with SIGTERM removes the TLS credentials of the clusters it opened.

The service's shared LocalCluster speaks TLS with a per-cluster CA whose key and
certificates live in a private directory under ``~/.esap-dask/tls``. uvicorn
answers SIGTERM with a graceful shutdown and then re-raises the signal with its
default action, so no ``atexit`` handler runs: the service removes them itself.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests

from esap_dask.testing.service import ServiceProcess, wait_for_phase, write_tokens

pytestmark = pytest.mark.slow


def test_sigterm_removes_the_shared_clusters_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"  # a fresh HOME: only this service's credentials are there
    home.mkdir()
    tokens = write_tokens(tmp_path / "tokens", {"tok-alice": "alice"})
    svc = ServiceProcess(tmp_path / "data", tokens, env={"HOME": str(home)}).start()
    try:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer tok-alice"
        resp = s.post(
            f"{svc.url}/uws/jobs",
            data={"pipeline": "helloworld", "observations": "1..4", "PHASE": "RUN"},
            allow_redirects=False,
        )
        assert resp.status_code == 303, resp.text
        assert wait_for_phase(s, resp.headers["Location"], {"COMPLETED", "ERROR"}) == "COMPLETED"
        tls_root = home / ".esap-dask" / "tls"
        live = sorted(p.name for p in tls_root.iterdir())
        assert live, f"the shared cluster made no credential directory under {tls_root}"
        assert all((tls_root / name / "member-key.pem").is_file() for name in live), live

        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGTERM)
        code = svc.proc.wait(timeout=60)
    finally:
        svc.kill()
    log = (tmp_path / "data" / "service.log").read_text()
    # uvicorn ends a graceful shutdown by re-raising SIGTERM with its default action
    assert code == -signal.SIGTERM, (code, log[-3000:])
    assert "Traceback" not in log, log[-3000:]
    assert sorted(p.name for p in tls_root.iterdir()) == [], "credentials left behind"
