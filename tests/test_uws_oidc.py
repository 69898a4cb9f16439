"""OIDC bearer tokens: JWTs checked against the issuer's keys (JWKS on loopback, or a file)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from esap_dask.testing.service import ServiceProcess

pytestmark = pytest.mark.slow


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY, OTHER = _key(), _key()


def _jwks() -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
    jwk.update(kid="test-key", use="sig", alg="RS256")
    return {"keys": [jwk]}


class _Issuer(BaseHTTPRequestHandler):
    issuer = ""

    def do_GET(self) -> None:
        if self.path == "/.well-known/openid-configuration":
            body = {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks.json"}
        elif self.path == "/jwks.json":
            body = _jwks()
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    """A minimal OIDC issuer on loopback: discovery document and JWKS."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Issuer)
    _Issuer.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield _Issuer.issuer
    server.shutdown()


def token(iss: str, user: str, *, key: Any = KEY, ttl: float = 300, aud: str = "esap") -> str:
    claims = {
        "iss": iss,
        "sub": f"id-{user}",
        "preferred_username": user,
        "aud": aud,
        "iat": int(time.time()),
        "exp": int(time.time() + ttl),
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "test-key"})


def _check(url: str, iss: str) -> None:
    jobs = f"{url}/uws/jobs"
    alice = {"Authorization": f"Bearer {token(iss, 'alice')}"}
    created = requests.post(
        jobs,
        headers=alice,
        allow_redirects=False,
        data={"pipeline": "helloworld", "observations": "1..2"},
    )
    assert created.status_code == 303, created.text
    job = created.headers["Location"]
    assert requests.get(job, headers=alice).status_code == 200
    # OIDC users are namespaced by their issuer and identified by their subject (sub).
    owner = f"oidc:{iss.split('://', 1)[1]}:id-alice"
    assert requests.get(f"{job}/owner", headers=alice).text == owner
    bob = {"Authorization": f"Bearer {token(iss, 'bob')}"}
    assert requests.get(job, headers=bob).status_code == 404
    assert requests.get(job, auth=("x", token(iss, "alice"))).status_code == 200
    bad = [
        token(iss, "alice", ttl=-60),  # expired
        token(iss, "alice", key=OTHER),  # signed by another key
        token("http://elsewhere.invalid", "alice"),  # another issuer
        token(iss, "alice", aud="someone-else"),  # another audience
        "not-a-jwt",
    ]
    for t in bad:
        resp = requests.get(jobs, headers={"Authorization": f"Bearer {t}"})
        assert resp.status_code == 401, (t, resp.text)


def test_jwt_keys_from_the_issuers_discovery(issuer: str, tmp_path: Path) -> None:
    extra = ["--oidc-issuer", issuer, "--oidc-audience", "esap"]
    with ServiceProcess(tmp_path / "data", None, extra=extra) as svc:
        _check(svc.url, issuer)


def test_jwt_keys_from_a_jwks_file(tmp_path: Path) -> None:
    iss = "https://login.example.org/realms/esap"
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(_jwks()))
    extra = ["--oidc-issuer", iss, "--oidc-audience", "esap", "--jwks", str(jwks)]
    with ServiceProcess(tmp_path / "data", None, extra=extra) as svc:
        _check(svc.url, iss)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--oidc-issuer", "https://login.example.org"], "--oidc-audience"),
        (["--jwks", "https://login.example.org/jwks.json"], "--oidc-issuer"),
    ],
)
def test_oidc_without_audience_or_issuer_refuses_to_start(
    tmp_path: Path, options: list[str], message: str
) -> None:
    with pytest.raises(RuntimeError, match="exited with 2") as err:
        ServiceProcess(tmp_path / "data", None, extra=options).start()
    assert message in str(err.value)
