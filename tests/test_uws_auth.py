"""Authentication of the job service against attacks: a JWKS ``kid`` flood, tokens of other
audiences and issuers, a token user and an OIDC subject of the same name, loose token
files, and the challenges a 401 carries (IVOA SSO 2.0 / AuthVO)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from esap_dask.testing.service import ServiceProcess, write_tokens

pytestmark = pytest.mark.slow

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ISS = "https://login.example.org/realms/esap"


class _Jwks(BaseHTTPRequestHandler):
    """Serves the JWKS; counts fetches; holds a fetch while ``hold`` is set, until ``release``."""

    fetches = 0
    hold = threading.Event()
    release = threading.Event()
    holding = threading.Event()

    def do_GET(self) -> None:
        type(self).fetches += 1
        if self.hold.is_set():
            self.holding.set()
            self.release.wait(60)
        jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
        jwk.update(kid="good", use="sig", alg="RS256")
        data = json.dumps({"keys": [jwk]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    _Jwks.release.set()
    server.shutdown()


def token(sub: str, *, kid: str = "good", iss: str = ISS, aud: str | None = "esap") -> str:
    claims: dict[str, Any] = {"iss": iss, "sub": sub, "exp": int(time.time() + 300)}
    if aud is not None:
        claims["aud"] = aud
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": kid})


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


def _oidc(jwks: str, interval: float) -> list[str]:
    return [
        "--oidc-issuer",
        ISS,
        "--oidc-audience",
        "esap",
        "--jwks",
        jwks,
        "--jwks-min-interval",
        str(interval),
    ]


def test_a_kid_flood_fetches_once_per_interval_and_stalls_nobody(
    jwks_url: str, tmp_path: Path
) -> None:
    with ServiceProcess(tmp_path / "data", None, extra=_oidc(jwks_url, 1.0)) as svc:
        jobs = f"{svc.url}/uws/jobs"
        _Jwks.fetches = 0
        assert requests.get(jobs, headers=bearer(token("alice"))).status_code == 200
        assert _Jwks.fetches == 1
        time.sleep(1.2)  # the interval has passed: the next unknown kid may fetch once
        _Jwks.hold.set()
        flood = [bearer(token("mallory", kid=secrets.token_hex(8))) for _ in range(50)]
        with ThreadPoolExecutor(50) as pool:
            answers = [pool.submit(requests.get, jobs, headers=h, timeout=90) for h in flood]
            assert _Jwks.holding.wait(60), "no request with an unknown kid fetched the keys"
            # While that one fetch hangs at the issuer, a user with a known kid is answered
            # and the rest of the flood is refused without waiting for it.
            good = requests.get(jobs, headers=bearer(token("alice")), timeout=30)
            assert good.status_code == 200
            # The other 49 are answered while the fetch still hangs (a safety bound, not a
            # timing: an implementation that made them wait would never get there).
            deadline = time.monotonic() + 60
            while sum(f.done() for f in answers) < 49 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sum(f.done() for f in answers) == 49, "the flood waited for the fetch"
            _Jwks.release.set()
            codes = [f.result().status_code for f in answers]
        _Jwks.hold.clear()
        assert codes == [401] * 50
        assert _Jwks.fetches == 2


@pytest.fixture(scope="module")
def service(jwks_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Token-file users and OIDC users of one issuer, in one service."""
    d = tmp_path_factory.mktemp("auth")
    tokens = write_tokens(d / "tokens.txt", {"tok-alice": "alice"})
    tokens.chmod(0o644)  # loose on purpose: the service must warn
    with ServiceProcess(d / "data", tokens, extra=_oidc(jwks_url, 60)) as svc:
        yield svc


def test_other_audiences_and_issuers_are_refused(service: ServiceProcess) -> None:
    jobs = f"{service.url}/uws/jobs"
    assert requests.get(jobs, headers=bearer(token("alice"))).status_code == 200
    for bad in [
        token("alice", aud="another-service"),
        token("alice", aud=None),
        token("alice", iss="https://login.example.org/realms/other"),
        token("alice", iss="https://evil.example.org/realms/esap"),
    ]:
        resp = requests.get(jobs, headers=bearer(bad))
        assert resp.status_code == 401, resp.text


def test_a_token_user_and_an_oidc_subject_of_one_name_are_two_users(
    service: ServiceProcess,
) -> None:
    jobs = f"{service.url}/uws/jobs"
    local, oidc = bearer("tok-alice"), bearer(token("alice"))
    made = {}
    for who, headers in [("local", local), ("oidc", oidc)]:
        created = requests.post(
            jobs,
            headers=headers,
            data={"pipeline": "helloworld", "observations": "1"},
            allow_redirects=False,
        )
        assert created.status_code == 303, created.text
        made[who] = created.headers["Location"]
    assert requests.get(f"{made['local']}/owner", headers=local).text == "alice"
    assert requests.get(f"{made['oidc']}/owner", headers=oidc).text == (
        "oidc:login.example.org/realms/esap:alice"
    )
    assert requests.get(made["local"], headers=oidc).status_code == 404
    assert requests.get(made["oidc"], headers=local).status_code == 404
    local_ids = requests.get(jobs, headers=local).text
    assert made["oidc"].rsplit("/", 1)[1] not in local_ids
    assert made["local"].rsplit("/", 1)[1] in local_ids


def test_401_says_how_to_authenticate(service: ServiceProcess) -> None:
    resp = requests.get(f"{service.url}/uws/jobs")
    assert resp.status_code == 401
    challenges = resp.raw.headers.getlist("WWW-Authenticate")
    metadata = f"{service.url}/.well-known/oauth-protected-resource"
    assert f'Bearer realm="esap-dask", resource_metadata="{metadata}"' in challenges
    assert 'Basic realm="esap-dask"' in challenges
    assert f'ivoa_bearer standard_id="ivo://ivoa.net/sso#OpenID", access_url="{ISS}"' in challenges
    assert "ivoa_x509" not in challenges  # no client certificates here
    assert requests.get(metadata).json()["authorization_servers"] == [ISS]
    ok = requests.get(f"{service.url}/uws/jobs", headers=bearer("tok-alice"))
    assert ok.headers["X-VO-Authenticated"] == "alice"
    assert "X-VO-Authenticated" not in resp.headers


def test_a_loose_token_file_is_warned_about(service: ServiceProcess) -> None:
    log = (service.data_dir / "service.log").read_text()
    assert "mode 0644" in log and "chmod 600" in log


def test_a_token_user_name_in_another_namespace_refuses_to_start(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens.txt", {"tok-x": "oidc:login.example.org:alice"})
    tokens.chmod(0o600)
    with pytest.raises(RuntimeError, match="exited with 2") as err:
        ServiceProcess(tmp_path / "data", tokens).start()
    assert "reserved" in str(err.value)
