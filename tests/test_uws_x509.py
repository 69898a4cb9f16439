"""X.509 users: a grid certificate or an RFC 3820 proxy of it, over the service's own TLS or
through a real nginx that verifies the certificate and forwards the DN from a trusted address.

The CA, the user certificates and the proxy are made here with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from esap_dask.service.auth import PROXY_CERT_INFO
from esap_dask.testing.service import ServiceProcess, free_port

pytestmark = pytest.mark.slow

NOW = dt.datetime.now(dt.UTC)
USER_DN = "CN=Alice Astronomer,O=ESCAPE,C=EU"
# ProxyCertInfo ::= SEQUENCE { ProxyPolicy ::= SEQUENCE { id-ppl-inheritAll } } (RFC 3820)
INHERIT_ALL = bytes.fromhex("300c300a06082b06010505071501")


def _name(*rdns: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(o, v)]) for o, v in rdns])


@dataclass
class Cert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _issue(
    subject: x509.Name,
    issuer: Cert | None,
    *,
    ca: bool = False,
    proxy: bool = False,
    ip: str | None = None,
    not_after: dt.datetime | None = None,
) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=2))
        .not_valid_after(not_after or NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    usage = dict.fromkeys(
        [
            "content_commitment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    usage.update(digital_signature=True, key_encipherment=not ca, key_cert_sign=ca, crl_sign=ca)
    builder = builder.add_extension(x509.KeyUsage(**usage), critical=True)
    if issuer is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        builder = builder.add_extension(aki, critical=False)
    if proxy:
        ext = x509.UnrecognizedExtension(PROXY_CERT_INFO, INHERIT_ALL)
        builder = builder.add_extension(ext, critical=True)
    if ip:
        import ipaddress

        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(san, critical=False)
    signer = issuer.key if issuer else key
    return Cert(builder.sign(signer, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    user: tuple[Path, Path]
    proxy: tuple[Path, Path]
    expired: tuple[Path, Path]
    foreign: tuple[Path, Path]


def _write(directory: Path, name: str, chain: list[Cert]) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert.write_bytes(b"".join(c.pem() for c in chain))
    key.write_bytes(chain[0].key_pem())
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate, a user, an RFC 3820 proxy of the user, an expired user and
    a user of another CA."""
    d = tmp_path_factory.mktemp("pki")
    ca = _issue(
        _name((NameOID.COUNTRY_NAME, "EU"), (NameOID.COMMON_NAME, "Test CA")), None, ca=True
    )
    other = _issue(_name((NameOID.COMMON_NAME, "Other CA")), None, ca=True)
    (d / "ca.pem").write_bytes(ca.pem())
    user_name = _name(
        (NameOID.COUNTRY_NAME, "EU"),
        (NameOID.ORGANIZATION_NAME, "ESCAPE"),
        (NameOID.COMMON_NAME, "Alice Astronomer"),
    )
    user = _issue(user_name, ca)
    serial = str(x509.random_serial_number() % 10**9)
    proxy_name = x509.Name([*user_name.rdns, *_name((NameOID.COMMON_NAME, serial)).rdns])
    proxy = _issue(proxy_name, user, proxy=True)
    expired = _issue(user_name, ca, not_after=NOW - dt.timedelta(days=1))
    foreign = _issue(user_name, other)
    server = _issue(_name((NameOID.COMMON_NAME, "127.0.0.1")), ca, ip="127.0.0.1")
    return Pki(
        ca=d / "ca.pem",
        server=_write(d, "server", [server]),
        user=_write(d, "user", [user]),
        proxy=_write(d, "proxy", [proxy, user]),
        expired=_write(d, "expired", [expired]),
        foreign=_write(d, "foreign", [foreign]),
    )


@pytest.fixture(scope="module")
def tls_service(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service terminating TLS itself, accepting client certificates of the test CA."""
    cert, key = pki.server
    extra = ["--tls-cert", str(cert), "--tls-key", str(key), "--client-ca", str(pki.ca)]
    svc = ServiceProcess(tmp_path_factory.mktemp("tls"), None, extra=extra)
    _start_https(svc, pki)
    yield svc
    svc.stop()


def _start_https(svc: ServiceProcess, pki: Pki) -> None:
    """Start ``svc``; ServiceProcess probes plain HTTP, so it probes HTTPS here instead."""
    import urllib.request

    url = f"https://127.0.0.1:{svc.port}"

    def https_probe(target: str, timeout: float) -> requests.Response:
        return requests.get(target.replace(svc.url, url), verify=str(pki.ca), timeout=timeout)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(urllib.request, "urlopen", https_probe)
        svc.start()


def _session(pki: Pki, cert: tuple[Path, Path] | None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would replace the test CA
    s.verify = str(pki.ca)
    if cert is not None:
        s.cert = (str(cert[0]), str(cert[1]))
    return s


def test_a_proxy_certificate_authenticates_as_its_user(
    tls_service: ServiceProcess, pki: Pki
) -> None:
    base = f"https://127.0.0.1:{tls_service.port}/uws/jobs"
    proxy = _session(pki, pki.proxy)
    created = proxy.post(
        base, data={"pipeline": "helloworld", "observations": "1..2"}, allow_redirects=False
    )
    assert created.status_code == 303, created.text
    job = created.headers["Location"]
    assert job.startswith("https://")
    assert proxy.get(f"{job}/owner").text == f"x509:{USER_DN}"
    assert job.rsplit("/", 1)[1] in proxy.get(base).text
    assert proxy.get(base).headers["X-VO-Authenticated"] == f"x509:{USER_DN}"
    # The user's own certificate is the same user: it sees the job made with the proxy.
    user = _session(pki, pki.user)
    assert user.get(job).status_code == 200


def test_without_a_certificate_401_offers_ivoa_x509(tls_service: ServiceProcess, pki: Pki) -> None:
    resp = _session(pki, None).get(f"https://127.0.0.1:{tls_service.port}/uws/jobs")
    assert resp.status_code == 401
    assert "ivoa_x509" in resp.raw.headers.getlist("WWW-Authenticate")


@pytest.mark.parametrize("which", ["expired", "foreign"])
def test_expired_or_foreign_certificates_are_refused_in_the_handshake(
    tls_service: ServiceProcess, pki: Pki, which: str
) -> None:
    # Python's ssl verifies a presented client certificate inside the handshake and has
    # no verify callback to defer the verdict to HTTP: the connection is refused with a
    # TLS alert (certificate expired / unknown CA) before any request is read, so there
    # is no HTTP status at all, and no job is created.
    jobs = f"https://127.0.0.1:{tls_service.port}/uws/jobs"
    before = _session(pki, pki.user).get(jobs).text.count("<uws:jobref")
    s = _session(pki, getattr(pki, which))
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        s.post(jobs, data={"pipeline": "helloworld", "observations": "1"})
    assert _session(pki, pki.user).get(jobs).text.count("<uws:jobref") == before


# -- behind nginx -----------------------------------------------------------------------

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
error_log {prefix}/error.log info;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client optional;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_bind 127.0.0.2;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
            proxy_set_header X-SSL-Client-DN $ssl_client_s_dn;
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def behind_nginx(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServiceProcess]]:
    """nginx on TLS verifying client certificates, in front of the service on plain HTTP,
    connecting from 127.0.0.2: the only address the service trusts."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if nginx is None:
        pytest.fail(
            "nginx is not installed: run 'apt-get install -y nginx-light' (scripts/test.sh does)"
        )
    prefix = tmp_path_factory.mktemp("nginx")
    svc = ServiceProcess(
        tmp_path_factory.mktemp("proxied"), None, extra=["--trusted-proxy", "127.0.0.2"]
    )
    svc.start()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user="user root;" if os.geteuid() == 0 else "",
            prefix=prefix,
            port=port,
            cert=pki.server[0],
            key=pki.server[1],
            ca=pki.ca,
            upstream=svc.port,
        )
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=open(prefix / "stderr.log", "wb"),  # noqa: SIM115 - owned by the process
    )
    url = f"https://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {(prefix / 'stderr.log').read_text()}")
            try:
                requests.get(url, verify=str(pki.ca), timeout=2)
                break
            except requests.exceptions.ConnectionError:
                time.sleep(0.1)
        yield url, svc
    finally:
        proc.terminate()
        proc.wait(10)
        svc.stop()


def test_nginx_forwards_the_verified_dn(behind_nginx: tuple[str, ServiceProcess], pki: Pki) -> None:
    url, _ = behind_nginx
    user = _session(pki, pki.user)
    created = user.post(
        f"{url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "1..2"},
        allow_redirects=False,
    )
    assert created.status_code == 303, created.text
    job = created.headers["Location"]
    assert job.startswith(f"{url}/uws/jobs/")  # X-Forwarded-Proto and Host of the proxy
    # The same owner as with the service's own TLS: one user, whichever way they come in.
    assert user.get(f"{job}/owner").text == f"x509:{USER_DN}"
    # A client without a certificate cannot smuggle the headers through nginx.
    forged = {"X-SSL-Client-DN": USER_DN, "X-SSL-Client-Verify": "SUCCESS"}
    assert _session(pki, None).get(job, headers=forged).status_code == 401


def test_dn_headers_from_an_untrusted_address_are_ignored(
    behind_nginx: tuple[str, ServiceProcess],
) -> None:
    _, svc = behind_nginx
    forged = {
        "X-SSL-Client-DN": USER_DN,
        "X-SSL-Client-Verify": "SUCCESS",
        "X-Forwarded-For": "127.0.0.2",
    }
    resp = requests.get(f"{svc.url}/uws/jobs", headers=forged)  # from 127.0.0.1
    assert resp.status_code == 401
    assert "ivoa_x509" in resp.headers["WWW-Authenticate"]
