"""The job service's input sandbox, probed as an attacker would, over real HTTP.

Every parameter that reaches the server side gets canaries: a file outside the data
root holding a random string, a list file of canary lines, ``/proc/self/environ``, a
symlink out of the root, a FIFO, ``/dev/zero``, a URL of a counting server on loopback,
shell metacharacters and leading dashes. Values that would make the service read
something are refused with 400 at submission; values it accepts as plain text run,
and no canary byte shows up in any response, job document, error, log, ledger,
summary or provenance.
"""

from __future__ import annotations

import http.server
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from esap_dask.testing.service import ServiceProcess, write_tokens

pytestmark = pytest.mark.slow

TOKEN = "tok-" + secrets.token_hex(12)
CANARY = "CANARY-" + secrets.token_hex(16)
LIST_CANARY = "LISTCANARY-" + secrets.token_hex(16)
ENV_CANARY = "ENVCANARY-" + secrets.token_hex(16)


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(f"{CANARY}\n".encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def counting_server() -> Iterator[str]:
    """An HTTP server on loopback that counts the requests it gets (it must get none)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/run1.fits"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data root with a good file, a list of canary lines, a symlink out and a FIFO."""
    base = tmp_path_factory.mktemp("sandbox")
    root, outside = base / "inputs", base / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "run1.fits").write_bytes(b"fine\n")
    secret = outside / "secret.txt"
    secret.write_text(f"{CANARY}\n")
    (root / "canaries.txt").write_text(
        f"{LIST_CANARY}-a\n{secret}\n/proc/self/environ\n{LIST_CANARY}-b\n"
    )
    (root / "escape.fits").symlink_to(secret)
    os.mkfifo(root / "fifo.fits")
    return {"base": base, "root": root, "secret": secret}


@pytest.fixture(scope="module")
def service(world: dict[str, Path]) -> Iterator[ServiceProcess]:
    tokens = write_tokens(world["base"] / "tokens", {TOKEN: "mallory"})
    extra = ["--data-root", str(world["root"]), "--max-queued-per-user", "100"]
    with ServiceProcess(
        world["base"] / "data", tokens, extra=extra, env={"ESAP_TEST_CANARY": ENV_CANARY}
    ) as svc:
        yield svc


def _session() -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {TOKEN}"
    return s


def _leaks(text: str) -> list[str]:
    return [c for c in (CANARY, LIST_CANARY, ENV_CANARY, TOKEN) if c in text]


def canaries(world: dict[str, Path], url: str) -> dict[str, str]:
    root, secret = world["root"], world["secret"]
    return {
        "outside file": str(secret),
        "list file": f"list:{root / 'canaries.txt'}",
        "proc environ": "/proc/self/environ",
        "symlink out": str(root / "escape.fits"),
        "fifo": str(root / "fifo.fits"),
        "dev zero": "/dev/zero",
        "url": url,
        "shell": f"run1.fits; cat {secret} #",
        "substitution": f"$(cat {secret})",
        "dash": "--help",
        "dotdot": f"../outside/{secret.name}",
    }


#: (pipeline, parameter): the parameters whose value the server reads or interprets.
#: Each canary must be refused there at submission.
READ = [
    ("helloworld", "observations"),
    ("helloworld", "pipeline"),
    ("helloworld", "facility"),
    ("concordia", "card"),
    ("concordia", "corsika"),
    ("helloworld", "sleep"),
    ("helloworld", "fail"),
    ("concordia", "nshow"),
    ("concordia", "emax"),
]
#: Plain text parameters: accepted, run, and checked for leaks.
TEXT = [("helloworld", "message"), ("helloworld", "RUNID")]


def _base(pipeline: str) -> dict[str, str]:
    return {"pipeline": pipeline, "observations": "1"}


def test_every_canary_is_refused_or_harmless(
    service: ServiceProcess, world: dict[str, Path], counting_server: str
) -> None:
    s = _session()
    values = canaries(world, counting_server)
    accepted: list[tuple[str, str]] = []
    for pipeline, param in READ + TEXT:
        for kind, value in values.items():
            data = {**_base(pipeline), param: value, "PHASE": "RUN"}
            resp = s.post(f"{service.url}/uws/jobs", data=data, allow_redirects=False)
            assert not _leaks(resp.text), (param, kind, resp.text)
            if (pipeline, param) in READ:
                assert resp.status_code == 400, (param, kind, resp.status_code, resp.text)
                assert f"'{param}'" in resp.text, (param, kind, resp.text)
            else:
                assert resp.status_code == 303, (param, kind, resp.text)
                accepted.append((f"{param}={kind}", resp.headers["Location"]))
    # the list file given without list: is one observation like any other file
    plain = {"pipeline": "helloworld", "observations": str(world["root"] / "canaries.txt")}
    resp = s.post(f"{service.url}/uws/jobs", data={**plain, "PHASE": "RUN"}, allow_redirects=False)
    assert resp.status_code == 303, resp.text
    accepted.append(("plain list file", resp.headers["Location"]))
    for what, url in accepted:
        _wait_final(s, url)
        for text in _everything(s, url):
            assert not _leaks(text), (what, text[:500])
    listing = s.get(f"{service.url}/uws/jobs")
    assert listing.status_code == 200 and not _leaks(listing.text)
    assert _Counting.hits == 0, "the service fetched a URL given in a job parameter"


def test_errors_name_the_parameter_and_never_the_content(
    service: ServiceProcess, world: dict[str, Path]
) -> None:
    s = _session()
    resp = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": f"list:{world['root'] / 'canaries.txt'}"},
    )
    assert resp.status_code == 400
    assert "line 1 of the list file" in resp.text and "'observations'" in resp.text
    fifo = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "fifo.fits"},
    )
    assert fifo.status_code == 400 and "not a regular file" in fifo.text
    bad = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "nowhere\x1b[2J" + "x" * 500},
    )
    assert bad.status_code == 400
    assert "\x1b" not in bad.text and len(bad.text) < 400, bad.text


def test_results_show_paths_relative_to_the_data_root(
    service: ServiceProcess, world: dict[str, Path]
) -> None:
    s = _session()
    resp = s.post(
        f"{service.url}/uws/jobs",
        data={"pipeline": "helloworld", "observations": "run1.fits", "PHASE": "RUN"},
        allow_redirects=False,
    )
    assert resp.status_code == 303, resp.text
    url = resp.headers["Location"]
    assert _wait_final(s, url) == "COMPLETED", s.get(f"{url}/error").text
    summary = s.get(f"{url}/results/summary").json()
    assert summary["store"] == "store.zarr", summary["store"]
    provenance = s.get(f"{url}/results/provenance").text
    assert "run1.fits" in provenance
    server_paths = [str(world["root"]), str(service.data_dir.resolve())]
    for text in _everything(s, url):
        assert not [p for p in server_paths if p in text], text[:500]


def test_reproduce_runs_store_named_code_only_when_allowed(tmp_path: Path) -> None:
    """A store whose attrs name a .py file: reproduce refuses to import it without --allow-code."""
    marker = tmp_path / "imported"
    pipeline = tmp_path / "evil.py"
    pipeline.write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from esap_dask import Pipeline, Variable\n"
        "pipeline = Pipeline(name='evil', version='1', function=lambda obs: {'x': 1},\n"
        "    schema=[Variable('x', 'int64')])\n"
    )
    esap = [sys.executable, "-m", "esap_dask"]
    store = str(tmp_path / "a.zarr")
    made = subprocess.run(
        [*esap, "run", str(pipeline), "-o", "1..2", "-s", store],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    marker.unlink()
    import zarr  # an untrusted store: its attrs name the .py file to load

    group = zarr.open_group(store, mode="r+")
    group.attrs["esap"] = {**group.attrs["esap"], "pipeline": str(pipeline)}
    refused = subprocess.run(
        [*esap, "reproduce", store, "--store", str(tmp_path / "b.zarr")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "--allow-code" in refused.stderr, refused.stderr
    assert not marker.exists(), "reproduce imported the .py a store named"
    allowed = subprocess.run(
        [*esap, "reproduce", store, "--store", str(tmp_path / "c.zarr"), "--allow-code"],
        capture_output=True,
        text=True,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert marker.read_text() == "ran"


def _wait_final(s: requests.Session, url: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while (phase := s.get(f"{url}/phase").text) not in ("COMPLETED", "ERROR", "ABORTED"):
        assert time.monotonic() < deadline, f"{url} stuck in {phase}"
        s.get(url, params={"WAIT": "5"})
    return phase


def _everything(s: requests.Session, url: str) -> list[str]:
    """Every document a user can get about a job: its XML, error, results."""
    texts = [s.get(url).text, s.get(f"{url}/error").text, s.get(f"{url}/parameters").text]
    for rid in ("log", "ledger", "summary", "provenance"):
        resp = s.get(f"{url}/results/{rid}")
        texts.append(resp.text)
    return texts
