"""URL observations in the job service: only under the operator's URL data roots.

The checks run where a job's parameters are checked (:func:`parse_spec`); one job
runs end to end through a real ``esap-dask serve`` over HTTP, on files served on
loopback under a root the operator named by its address.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from esap_dask.service.params import parse_spec
from esap_dask.service.sandbox import JobParameterError, Sandbox
from esap_dask.testing.service import ServiceProcess, wait_for_phase, write_tokens
from tests.test_remote_observations import serve


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three small files, and one outside the root, on a loopback HTTP server."""
    base = tmp_path_factory.mktemp("site")
    (base / "runs").mkdir()
    (base / "private").mkdir()
    for i in range(3):
        (base / "runs" / f"run_{i}.dat").write_bytes(b"x" * (i + 1))
    (base / "private" / "secret.dat").write_bytes(b"secret")
    yield from serve(base)


def spec(observations: str, *roots: str) -> object:
    sandbox = Sandbox.create(roots)
    return parse_spec({"pipeline": "helloworld", "observations": observations}, sandbox)


def refused(observations: str, *roots: str) -> str:
    with pytest.raises(JobParameterError) as err:
        spec(observations, *roots)
    assert err.value.name == "observations"
    return str(err.value)


def test_urls_under_a_root_are_accepted_and_globs_expanded(site: str) -> None:
    root = site + "runs/"
    assert spec(root + "run_1.dat", root).observations == [root + "run_1.dat"]
    assert spec(root + "run_*.dat", root).observations == [root + f"run_{i}.dat" for i in range(3)]
    assert spec(f"{root}run_0.dat,{root}run_2.dat", root).observations == [
        root + "run_0.dat",
        root + "run_2.dat",
    ]


def test_urls_outside_the_roots_are_refused(site: str) -> None:
    """Without URL roots, outside the prefix, another host, or dressed up: refused."""
    root = site + "runs/"
    host = site.split("//", 1)[1].rstrip("/")
    assert "no URL data roots" in refused(root + "run_0.dat")
    assert "no URL data roots" in refused(root + "run_0.dat", "/tmp")
    assert "not under" in refused(site + "private/secret.dat", root)
    assert "not under" in refused(site.rstrip("/") + "/runs-other/x.dat", root)
    assert "not under" in refused("http://127.0.0.2:1/runs/run_0.dat", root)
    assert "not under" in refused(f"https://{host}/runs/run_0.dat", root)
    assert "'..'" in refused(root + "../private/secret.dat", root)
    assert "'..'" in refused(root + "%2e%2e/private/secret.dat", root)
    assert "user name" in refused(f"http://{host}@127.0.0.1:9/runs/run_0.dat", root)
    assert "query" in refused(root + "run_0.dat?x=1", root)
    assert "file://" in refused("file:///etc/passwd", root)
    assert "not under" in refused("s3://bucket/runs/a.fits", root)
    assert "not under" in refused(f"{site}private/*.dat", root)


def test_loopback_and_link_local_need_the_operator_to_name_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A root by host name that resolves to loopback or link-local is refused at job time.

    DNS is the attacker's here (a name the operator trusted now answers 169.254.169.254,
    the cloud metadata address, or 127.0.0.1): its answers are simulated.
    """
    answers = {"data.example.org": "169.254.169.254", "rebound.example.org": "127.0.0.1"}
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for host, address in answers.items():
        root = f"https://{host}/runs/"
        why = refused(root + "a.fits", root)
        assert "loopback or link-local" in why and address in why
    # the operator gave the address itself: a deliberate choice (a test server)
    assert spec("http://127.0.0.1:9/runs/a.fits", "http://127.0.0.1:9/runs/").observations == [
        "http://127.0.0.1:9/runs/a.fits"
    ]
    assert "not under" in refused(
        "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:9/runs/"
    )


def test_a_file_url_root_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not a file:// URL"):
        Sandbox.create(["file:///data/runs/"])
    with pytest.raises(ValueError, match="no user, password"):
        Sandbox.create(["https://user:pw@host/runs/"])


@pytest.mark.slow
def test_a_job_over_urls_runs_through_the_service(site: str, tmp_path: Path) -> None:
    """Real HTTP: a URL job under the root completes; one outside it gets 400."""
    token = "tok-" + secrets.token_hex(8)
    tokens = write_tokens(tmp_path / "tokens", {token: "alice"})
    root = site + "runs/"
    with ServiceProcess(tmp_path / "data", tokens, extra=["--data-root", root]) as svc:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        bad = s.post(
            f"{svc.url}/uws/jobs",
            data={"pipeline": "helloworld", "observations": site + "private/secret.dat"},
        )
        assert bad.status_code == 400 and "not under" in bad.text
        assert "secret" not in bad.text.replace("secret.dat", "")
        made = s.post(
            f"{svc.url}/uws/jobs",
            data={"pipeline": "helloworld", "observations": root + "run_*.dat", "PHASE": "RUN"},
        )
        assert made.status_code in (200, 303), made.text
        job = made.url if made.history else made.headers.get("Location", made.url)
        assert wait_for_phase(s, job, {"COMPLETED", "ERROR"}) == "COMPLETED"
