"""concordia cannot run a user's command, read a server's file or exhaust its memory.

Issue 13's critical finding: a job chose ``corsika_image`` and ``corsika_executable``, and card
lines were copied verbatim to the program's stdin, so ``corsika_executable=sh`` with a card
line ``ATMOD 1; echo PWNED-$(id -un); head -c 80 <token file>`` ran as the service's account
and its output (every user's token) came back in the ledger error. Now CORSIKA installations
come from the configuration (``esap.corsika.images``) and a job names one; cards are parsed
strictly at parameter resolution; files are read through ``read_card``.

These tests try the attacks from the Python API and through the real job service
(``esap-dask serve`` on loopback), and look for canary bytes in every answer and file.
The configured CORSIKA is ``tests/fake_apptainer.py`` (no container runtime runs here; its
docstring says what it checks).
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import pytest
import requests

from esap_dask.catalogs.workflows import get_pipeline
from esap_dask.deploy.containers import container_python
from esap_dask.iact.corsika import (
    MAX_CARD_BYTES,
    RUNTIME_ENVIRONMENT,
    CardError,
    CorsikaError,
    corsika_command,
    corsika_image,
    format_card,
    parse_card,
    read_card,
)
from esap_dask.pipeline import ParameterError
from esap_dask.testing.service import ServiceProcess, wait_for_phase, write_tokens

HERE = Path(__file__).resolve().parent
concordia = get_pipeline("concordia")

CARD = """\
* a small card
NSHOW   4
PRMPAR  14
ERANGE  1.E3  1.E4
THETAP  0.  20.
SEED    11  0  0
SEED    12  0  0
LONGI   T  10.  T  T
ATMOD   1
MAGNET  20.0  42.8
EXIT
"""


def exploit(token_file: Path) -> str:
    """The card of issue 13's proof of concept, reading ``token_file``."""
    return CARD.replace("ATMOD   1", f"ATMOD 1; echo PWNED-$(id -un); head -c 80 {token_file}")


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, str]:
    """A token file outside every data root, and its secret bytes."""
    secret = f"CANARY-{secrets.token_hex(12)}"
    path = tmp_path / "outside" / "tokens"
    path.parent.mkdir()
    path.write_text(f"{secret} alice\n")
    return path, secret


@pytest.fixture
def fake_runtime(tmp_path: Path) -> Path:
    """tests/fake_apptainer.py with this interpreter in its #! line (PATH is not the venv's)."""
    text = (HERE / "fake_apptainer.py").read_text()
    path = tmp_path / "fake_apptainer"
    path.write_text(f"#!{sys.executable}\n" + text.split("\n", 1)[1])
    path.chmod(0o755)
    return path


def images(tmp_path: Path, runtime: Path, **programs: dict[str, Any]) -> dict[str, Any]:
    """``esap.corsika.images`` with one image file (``corsika.sif``) and these programs."""
    sif = tmp_path / "corsika.sif"
    sif.write_text("fake image")
    return {
        name: {"image": str(sif), "runtime": str(runtime), **options}
        for name, options in programs.items()
    }


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    """What the fake runtime was called with."""
    log = tmp_path / "corsika.sif.calls"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# --- the Python API ---------------------------------------------------------------------


def test_the_exploit_is_refused_at_parameter_resolution(canary: tuple[Path, str]) -> None:
    token_file, secret = canary
    with pytest.raises(ParameterError, match="has no parameter 'corsika_executable'"):
        concordia.resolve({"corsika_executable": "sh", "card": exploit(token_file)})
    for name in ("corsika_image", "corsika_engine"):
        with pytest.raises(ParameterError, match=f"has no parameter '{name}'"):
            concordia.resolve({name: "x"})
    with pytest.raises(CardError) as err:
        concordia.resolve({"card": exploit(token_file)})
    message = str(err.value)
    assert message.startswith("parameter 'card': the card text, line 9")
    assert "PWNED" not in message and "echo" not in message and str(token_file) not in message
    assert secret not in message
    with pytest.raises(ParameterError, match=r"parameter 'corsika': 'sh' is not a CORSIKA"):
        concordia.resolve({"corsika": "sh"})


@pytest.mark.parametrize(
    "line",
    [
        "ATMOD 1 ; id",
        "ATMOD 1 && id",
        "ATMOD $(id)",
        "ATMOD `id`",
        "ATMOD 1 | sh",
        "ATMOD 1 > /tmp/x",
        "TELFIL ../../x",
        "TELFIL /etc/passwd",
        "DIRECT /a/../../etc/",
        "DATDIR /etc",
        "INFILE /etc/shadow",
        "ATMOD 1\x00",
        "ATMOD 1\x1b[2J",
        "XYZZY 1",
        "ATMOD 1" + " " * 300,
        "ATMOD 1 'quoted'",
        "ATMOD 1 \\",
        "ATMOD -v/:/host",
    ],
)
def test_card_lines_that_are_not_corsika_values_are_refused(line: str) -> None:
    """Shell metacharacters, paths out of the run, control characters, unknown keywords."""
    with pytest.raises(CardError, match=r"^the card text, line 9") as err:
        parse_card(CARD.replace("ATMOD   1", line), source="the card text")
    rest = line.split(None, 1)[1] if " " in line else line[5:]
    assert rest.strip() not in str(err.value), "the error quotes no value"


def test_the_card_corsika_reads_is_formatted_from_parsed_values() -> None:
    card = parse_card(CARD.replace("ATMOD   1", "atmod 1.0E0   trailing comment"))
    text = format_card(card)
    assert "ATMOD   1" in text.splitlines() and "trailing" not in text
    assert parse_card(text).extra == card.extra


def test_too_many_lines_or_bytes_are_refused() -> None:
    with pytest.raises(CardError, match="more than 1000 lines"):
        parse_card("* c\n" * 1001 + "SEED 1\nEXIT\n")
    with pytest.raises(CardError, match=f"longer than {MAX_CARD_BYTES} characters"):
        parse_card("*" * (MAX_CARD_BYTES + 1))


@pytest.fixture
def root(tmp_path: Path, canary: tuple[Path, str]) -> Path:
    """A data root with a good card, a symlink out, a FIFO, a big file and a directory."""
    token_file, _ = canary
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.card").write_text(CARD)
    (data / "link.card").symlink_to(token_file)
    (data / "dir.card").mkdir()
    os.mkfifo(data / "fifo.card")
    (data / "big.card").write_text("*" * (MAX_CARD_BYTES + 10) + "\n")
    return data


def test_read_card_confines_paths_to_the_roots(root: Path, canary: tuple[Path, str]) -> None:
    token_file, secret = canary
    assert read_card(root / "good.card", roots=[root]) == CARD
    refused = {
        str(token_file): "outside the data roots",
        str(root / "link.card"): "outside the data roots",
        f"{root}/../outside/tokens": "outside the data roots",
        "/proc/self/environ": "outside the data roots",
        "/dev/zero": "outside the data roots",
        "good.card": "give an absolute path",
        "http://127.0.0.1:1/x": "a URL",
        "file:///etc/passwd": "a URL",
        "simplecache::http://127.0.0.1:1/x": "a URL",
        str(root / "fifo.card"): "not a regular file",
        str(root / "dir.card"): "not a regular file",
        str(root / "big.card"): f"larger than {MAX_CARD_BYTES} bytes",
        str(root / "missing.card"): "no such file",
    }
    for path, why in refused.items():
        with pytest.raises(CardError, match=why) as err:
            read_card(path, roots=[root], urls=True)
        assert secret not in str(err.value)


def test_read_card_without_roots_still_refuses_special_files(
    root: Path, canary: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's own machine: any path, but no FIFO, device, /proc file, or URL by default."""
    token_file, secret = canary
    monkeypatch.setenv("ESAP_CANARY", secret)
    for path, why in {
        "/proc/self/environ": "empty",
        "/dev/zero": "not a regular file",
        str(root / "fifo.card"): "not a regular file",
        "http://127.0.0.1:1/x": "a URL",
    }.items():
        with pytest.raises(CardError, match=why) as err:
            read_card(path)
        assert secret not in str(err.value)
    with pytest.raises(CardError) as err:
        concordia.resolve({"card": str(token_file)})
    assert "line 1: not a CORSIKA keyword" in str(err.value) and secret not in str(err.value)


def test_the_pipeline_reads_paths_under_the_configured_roots(
    root: Path, canary: tuple[Path, str]
) -> None:
    token_file, secret = canary
    with dask.config.set({"esap.corsika.card-roots": [str(root)]}):
        assert concordia.resolve({"card": str(root / "good.card")})["card"] == CARD
        for path in (str(token_file), str(root / "link.card"), "/proc/self/environ"):
            with pytest.raises(CardError, match=r"parameter 'card': card .* outside") as err:
                concordia.resolve({"card": path})
            assert secret not in str(err.value)


def test_an_image_or_bind_starting_with_a_dash_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="parameter 'corsika': a CORSIKA installation is"):
        concordia.resolve({"corsika": "-v/:/host"})
    evil = {"esap.corsika.images": {"evil": {"image": "-v/:/host"}}}
    with dask.config.set(evil), pytest.raises(CardError, match=r"esap.corsika.images.evil.image"):
        corsika_image("evil")
    with pytest.raises(CardError, match="the CORSIKA image: not starting with '-'"):
        corsika_command("-v/:/host", engine="docker")
    with pytest.raises(CardError, match="a bind: not starting with '-'"):
        corsika_command("img.sif", binds=["--privileged"])
    with pytest.raises(ValueError, match="does not start with '-'"):
        container_python("docker", image="-v/:/host")


@pytest.mark.parametrize(
    ("name", "value", "bound"),
    [
        ("n_core", 1_000_000_000, "maximum 1000"),
        ("nshow", 10_000_000, "maximum 100000"),
        ("r_max", 1e9, "maximum 100000"),
        ("emax", 1e30, "maximum 1000000000000"),
        ("primary", 99999, "maximum 5999"),
    ],
)
def test_parameter_maxima(name: str, value: float, bound: str) -> None:
    with pytest.raises(ParameterError, match=rf"parameter '{name}': .* is above the {bound}"):
        concordia.resolve({name: value})


def test_a_configured_corsika_runs_with_the_formatted_card(
    tmp_path: Path, fake_runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESAP_TEST_SECRET", "not for CORSIKA")
    config = images(tmp_path, fake_runtime, fake={"executable": "corsika"})
    with dask.config.set({"esap.corsika.images": config}):
        params = concordia.resolve({"corsika": "fake", "card": CARD})
        out = concordia.function(7, **params)
    np.testing.assert_array_equal(out["xmax"], [410.0, 420.0, 430.0, 440.0])
    np.testing.assert_array_equal(out["nmax"], [1000.0, 2000.0, 3000.0, 4000.0])
    (call,) = calls(tmp_path)
    workdir = call["argv"][3]
    assert call["argv"][-3:] == ["--", str(tmp_path / "corsika.sif"), "corsika"]
    card = parse_card(CARD)
    expected = format_card(
        card.replace(extra=(*card.extra, *parse_card(f"DIRECT {workdir}/\nSEED 1").extra)),
        run=7,
        seeds=[int(s) for s in out["seed"]],
    )
    assert call["stdin"] == expected
    assert set(call["environment"]) <= set(RUNTIME_ENVIRONMENT) | {"PWD", "LC_CTYPE"}
    assert not Path(workdir).exists(), "the run's directory is removed"


def test_a_failed_run_reports_its_exit_code_not_its_output(
    tmp_path: Path, fake_runtime: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = images(
        tmp_path,
        fake_runtime,
        fails={"executable": "exit3"},
        sleeps={"executable": "sleep", "timeout": 1},
        floods={"executable": "flood", "max_output": 100_000},
    )
    expected = {
        "fails": "exited 3; see the worker's log",
        "sleeps": "ran longer than 1 s",
        "floods": "wrote more than 100000 bytes",
    }
    with dask.config.set({"esap.corsika.images": config}), caplog.at_level(logging.WARNING):
        for name, why in expected.items():
            params = concordia.resolve({"corsika": name, "card": CARD})
            with pytest.raises(CorsikaError, match=f"CORSIKA run 3 \\({name}\\) {why}") as err:
                concordia.function(3, **params)
            assert "MARKER" not in str(err.value) and len(str(err.value)) < 200
    assert "FAKE-CORSIKA-OUTPUT-MARKER" in caplog.text, "the output's end is in the worker's log"


# --- through the job service ------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The job service with a data root, a configured fake CORSIKA and canaries around it."""
    base = tmp_path_factory.mktemp("concordia-service")
    secret = f"CANARY-{secrets.token_hex(12)}"
    token = f"tok-{secrets.token_hex(8)}"
    tokens = write_tokens(base / "tokens", {token: "alice"})
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.card").write_text(f"{secret}\n")
    data = base / "data-root"
    data.mkdir()
    (data / "good.card").write_text(CARD)
    (data / "link.card").symlink_to(outside / "secret.card")
    (data / "tokens-link").symlink_to(tokens)
    os.mkfifo(data / "fifo.card")
    text = (HERE / "fake_apptainer.py").read_text()
    runtime = base / "fake_apptainer"
    runtime.write_text(f"#!{sys.executable}\n" + text.split("\n", 1)[1])
    runtime.chmod(0o755)
    config = images(base, runtime, fake={"executable": "corsika"}, fails={"executable": "exit3"})
    env = {
        "DASK_ESAP__CORSIKA__IMAGES": repr(config),
        "DASK_ESAP__CORSIKA__CARD_ROOTS": repr([str(data)]),
        "ESAP_CANARY": secret,
    }
    extra = ["--max-wait", "5", "--data-root", str(data)]
    with ServiceProcess(base / "service", tokens, extra=extra, env=env) as svc:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        yield {
            "svc": svc,
            "session": s,
            "canaries": [secret, token],
            "data": data,
            "tokens": tokens,
            "outside": outside,
            "base": base,
        }


def post(service: dict[str, Any], **params: Any) -> requests.Response:
    params = {"pipeline": "concordia", "observations": "1..2", **params}
    return service["session"].post(
        f"{service['svc'].url}/uws/jobs", data=params, allow_redirects=False
    )


def no_canary(service: dict[str, Any], text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    for canary in service["canaries"]:
        assert canary.encode() not in data


@pytest.mark.slow
def test_the_exploit_gets_400_from_the_service(service: dict[str, Any]) -> None:
    card = exploit(service["tokens"])
    resp = post(service, corsika_executable="sh", card=card)
    assert resp.status_code == 400 and "'corsika_executable'" in resp.text, resp.text
    no_canary(service, resp.text)
    resp = post(service, card=card)
    assert resp.status_code == 400 and "parameter 'card'" in resp.text, resp.text
    assert "PWNED" not in resp.text and "echo" not in resp.text
    no_canary(service, resp.text)
    for name, value in [("corsika_image", "-v/:/host"), ("corsika", "-v/:/host")]:
        resp = post(service, **{name: value})
        assert resp.status_code == 400 and f"parameter '{name}'" in resp.text, resp.text
    resp = post(service, corsika="sh")
    assert resp.status_code == 400 and "'sh' is not a CORSIKA installation" in resp.text
    resp = post(service, n_core="1000000000")
    assert resp.status_code == 400, resp.text
    assert "parameter 'n_core'" in resp.text and "maximum 1000" in resp.text


@pytest.mark.slow
def test_server_files_and_urls_as_cards_get_400(service: dict[str, Any]) -> None:
    data, outside = service["data"], service["outside"]
    for card in [
        "/proc/self/environ",
        "http://127.0.0.1:1/x",
        str(outside / "secret.card"),
        str(data / "link.card"),
        str(data / "tokens-link"),
        str(service["tokens"]),
        str(data / "fifo.card"),
        "/dev/zero",
    ]:
        resp = post(service, card=card)
        assert resp.status_code == 400 and "parameter 'card'" in resp.text, (card, resp.text)
        no_canary(service, resp.text)


@pytest.mark.slow
def test_a_configured_corsika_runs_and_no_canary_reaches_any_result(
    service: dict[str, Any],
) -> None:
    s, url = service["session"], service["svc"].url
    jobs = {}
    for name in ("fake", "fails"):
        resp = post(service, corsika=name, card=str(service["data"] / "good.card"), PHASE="RUN")
        assert resp.status_code == 303, resp.text
        jobs[name] = resp.headers["Location"]
    for name, job in jobs.items():
        assert wait_for_phase(s, job, {"COMPLETED", "ERROR"}) in {"COMPLETED", "ERROR"}
        ledger = s.get(f"{job}/results/ledger").json()
        if name == "fake":
            assert ledger["counts"] == {"pending": 0, "done": 2, "failed": 0}, ledger
            archive = zipfile.ZipFile(io.BytesIO(s.get(f"{job}/results/store").content))
            assert "store.zarr/zarr.json" in archive.namelist()
        else:
            assert ledger["counts"]["failed"] == 2, ledger
            assert "exited 3; see the worker's log" in json.dumps(ledger)
            assert "MARKER" not in json.dumps(ledger)
        for part in ("", "/error", "/parameters", "/results", "/results/log"):
            no_canary(service, s.get(f"{job}{part}").content)
        no_canary(service, s.get(f"{job}/results/provenance").content)
        no_canary(service, json.dumps(ledger))
    no_canary(service, s.get(f"{url}/uws/jobs").content)
    for path in (service["base"] / "service").rglob("*"):
        if path.is_file():
            no_canary(service, path.read_bytes())
