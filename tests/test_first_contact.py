"""A new user's first contact: a plain install works, and bad input is one clear line.

- Without the optional extras (FastAPI & co., asyncssh, s3fs, gammapy, pyvo made
  unimportable in the CLI's process and its workers), every command that needs none
  works, and those that need one exit 2 naming ``pip install 'esap-dask[extra]'``.
- ``scripts/setup.sh`` fails when the installed command cannot run.
- A store that cannot be written, a misspelt facility option and a directory as the
  observation list each exit 2 with one line naming it, before any cluster starts, and
  nothing already in the store changes.
- UWS ``AFTER`` takes the ISO 8601 forms clients send (unit and over HTTP).
- The documented ways of connecting to the (TLS) ``local`` facility work.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import zarr

from esap_dask.service.jobs import BadRequest, parse_time
from tests.conftest import ESAP_DASK, ROOT

#: The optional extras' modules (and the test extras' science libraries) a plain install lacks.
BLOCKED = ("fastapi", "uvicorn", "sqlalchemy", "asyncssh", "s3fs", "gammapy", "pyvo")

_SITECUSTOMIZE = """
import sys

BLOCKED = {blocked!r}


class _NotInstalled:
    # Python asks every meta-path finder first: these modules are "not installed".
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``esap-dask ARGS`` as a user runs it, in ``cwd``."""
    return subprocess.run(
        [*ESAP_DASK, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The command's error: exit 2, one ``error:`` line on stderr, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh HOME: a cluster that starts leaves ``~/.esap-dask/tls`` in it."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def user_env(home: Path) -> dict[str, str]:
    """The environment of a user of the full install, with a fresh HOME."""
    return {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def plain_env(tmp_path: Path, user_env: dict[str, str]) -> dict[str, str]:
    """The environment of a plain ``pip install esap-dask``: the extras cannot be imported."""
    site = tmp_path / "no-extras"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(blocked=BLOCKED))
    env = {**user_env, "PYTHONPATH": str(site)}
    for module in BLOCKED:  # the blocker works (else this test could not fail)
        probe = subprocess.run(
            [sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True
        )
        assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr, module
    return env


def nothing_started(home: Path) -> bool:
    """No cluster was opened: none made its TLS directory under ``~/.esap-dask``."""
    return not (home / ".esap-dask").exists()


# -- 1. a plain install ----------------------------------------------------------------------


def test_version_loads_none_of_the_heavy_libraries(plain_env: dict[str, str], tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "esap_dask", "--version"],
        env=plain_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("esap-dask, version ")
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in done.stderr.splitlines() if "|" in ln}
    for heavy in ("zarr", "distributed", "xarray", "fastapi", "esap_dask.engine.mapper"):
        assert heavy not in imported, f"esap-dask --version imports {heavy}"


@pytest.mark.slow
def test_every_command_without_the_optional_extras(
    plain_env: dict[str, str], tmp_path: Path
) -> None:
    assert run_cli("--version", env=plain_env, cwd=tmp_path).returncode == 0

    listed = run_cli("pipelines", env=plain_env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for name in ("helloworld", "dl3-products", "concordia"):
        assert name in listed.stdout
    assert "failed to load" not in listed.stderr, listed.stderr

    facilities = run_cli("facilities", "--json", env=plain_env, cwd=tmp_path)
    assert facilities.returncode == 0, facilities.stderr
    assert "local" in facilities.stdout

    done = run_cli(
        "run", "helloworld", "-o", "1..3", "--store", "hello.zarr", env=plain_env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    group = zarr.open_group(str(tmp_path / "hello.zarr"), mode="r")
    assert list(group["obs"][...]) == ["1", "2", "3"]

    demo = run_cli("demo", "-n", "2", "-d", "tmp", env=plain_env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert zarr.open_group(str(tmp_path / "tmp" / "dl3-products.zarr"), mode="r")["obs"].shape == (
        2,
    )

    serve = run_cli("serve", "--port", "0", env=plain_env, cwd=tmp_path)
    line = one_line_error(serve)
    assert "pip install 'esap-dask[service]'" in line, line
    help_ = run_cli("serve", "--help", env=plain_env, cwd=tmp_path)
    assert help_.returncode == 0 and "--tokens" in help_.stdout


def test_features_that_need_an_extra_name_it(
    plain_env: dict[str, str], tmp_path: Path, home: Path
) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "cluster-ssh.yaml").write_text(
        "name: cluster-ssh\nfacilitytype: ssh\noptions:\n  hosts: [127.0.0.1, 127.0.0.1]\n"
    )
    env = {**plain_env, "DASK_ESAP__FACILITIES_PATH": str(catalog)}
    ssh = run_cli("run", "helloworld", "-o", "1..3", "-s", "s.zarr", "-f", "cluster-ssh", env=env,
                  cwd=tmp_path)  # fmt: skip
    line = one_line_error(ssh)
    assert "facility 'cluster-ssh'" in line and "pip install 'esap-dask[ssh]'" in line, line

    s3 = run_cli("run", "helloworld", "-o", "1..3", "-s", "s3://bucket/run.zarr", env=env,
                 cwd=tmp_path)  # fmt: skip
    line = one_line_error(s3)
    assert "s3://bucket/run.zarr" in line and "pip install 'esap-dask[s3]'" in line, line
    assert nothing_started(home)


def _fake_venv(root: Path, esap_dask_script: str, python_script: str = "exit 0") -> Path:
    """A copy of scripts/setup.sh beside a .venv whose pip succeeds (or runs
    ``python_script``) and whose esap-dask is given."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    bin_ = root / ".venv" / "bin"
    bin_.mkdir(parents=True)
    for name, body in (("python", python_script), ("esap-dask", esap_dask_script)):
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    return root / "scripts" / "setup.sh"


def test_setup_fails_when_the_installed_command_cannot_run(tmp_path: Path) -> None:
    broken = _fake_venv(
        tmp_path / "broken",
        "echo \"ModuleNotFoundError: No module named 'fastapi'\" >&2; exit 1",
    )
    done = subprocess.run(["bash", str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout
    assert "esap-dask --version" in done.stderr and "fastapi" in done.stderr

    calls = tmp_path / "calls.log"
    working = _fake_venv(
        tmp_path / "working", 'echo "esap-dask, version 0.1.0"', f'echo "$*" >> {calls}'
    )
    done = subprocess.run(["bash", str(working)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "esap-dask, version 0.1.0" in done.stdout
    # uv installed esap-dask; pip only installed uv
    made = calls.read_text().splitlines()
    assert made == [
        "-m pip install --quiet uv",
        "-m uv pip install --quiet --python .venv/bin/python --compile-bytecode --editable .",
    ], made


def test_setup_installs_with_pip_where_uv_cannot(tmp_path: Path) -> None:
    """uv reads neither pip's configuration nor its local indexes: where it fails, pip installs."""
    calls = tmp_path / "calls.log"
    python = (
        f'echo "$*" >> {calls}\n'
        'case "$*" in *"-m uv "*) echo "error: no route to pypi.org" >&2; exit 1;; esac\nexit 0'
    )
    setup = _fake_venv(tmp_path / "site", 'echo "esap-dask, version 0.1.0"', python)
    done = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "uv could not install esap-dask" in done.stderr and "installing with pip" in done.stderr
    made = calls.read_text().splitlines()
    assert made[1].startswith("-m uv pip install "), made  # uv was tried first
    assert made[-1] == "-m pip install --quiet --editable .", made
    assert "esap-dask, version 0.1.0" in done.stdout


# -- 2. bad input: exit 2, one line, nothing lost ---------------------------------------------


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[None]:
    """Make ``path`` (with what is in it) unwritable for the user running the tests.

    For root, file modes are no obstacle (CAP_DAC_OVERRIDE), so ``chmod 0555`` would test
    nothing: a read-only file system stops root too (EROFS). ``path`` is a tmpfs, mounted
    read-write by the caller's ``mount_tmpfs`` and remounted read-only here. For another
    user, ``chmod 0555`` is what really fails (EACCES).
    """
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(mode)


@pytest.fixture
def writable_mount(tmp_path: Path) -> Iterator[Path]:
    """A directory that :func:`read_only_directory` can make read-only (a tmpfs for root)."""
    path = tmp_path / "mnt"
    path.mkdir()
    if os.geteuid() != 0:
        yield path
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(
            "this test, run as root, needs to mount a tmpfs (CAP_SYS_ADMIN) to make a "
            f"directory root cannot write: {mounted.stderr.strip()}; run it as another user"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.slow
def test_a_store_that_cannot_be_written(
    writable_mount: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    store = writable_mount / "hello.zarr"
    first = run_cli("run", "helloworld", "-o", "1..3", "-s", str(store), env=user_env,
                    cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = {
        p.relative_to(writable_mount): p.read_bytes() for p in store.rglob("*") if p.is_file()
    }

    with read_only_directory(writable_mount):
        more = run_cli("run", "helloworld", "-o", "1..5", "-s", str(store), env=user_env,
                       cwd=tmp_path)  # fmt: skip
        line = one_line_error(more)
        assert str(store) in line and "give a --store in a directory you can write" in line
        new = writable_mount / "sub" / "new.zarr"
        fresh = run_cli("run", "helloworld", "-o", "1..3", "-s", str(new), env=user_env,
                        cwd=tmp_path)  # fmt: skip
        line = one_line_error(fresh)
        assert str(new) in line and str(writable_mount) in line, line

    after = {p.relative_to(writable_mount): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert after == before, "the store changed"
    status = run_cli("status", str(store), "--json", env=user_env, cwd=tmp_path)
    assert '"done": 3' in status.stdout, status.stdout


def test_the_library_refuses_an_unwritable_store_before_writing(writable_mount: Path) -> None:
    from esap_dask import map_observations
    from esap_dask.store import StoreError

    with (
        read_only_directory(writable_mount),
        pytest.raises(StoreError, match=r"hello\.zarr: cannot write its directory"),
    ):
        map_observations("helloworld", "1..3", writable_mount / "hello.zarr")


def _typo_catalog(tmp_path: Path, text: str) -> Path:
    catalog = tmp_path / "catalog"
    catalog.mkdir(exist_ok=True)
    path = catalog / "mine.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_misspelt_option_in_a_facility_file(
    tmp_path: Path, user_env: dict[str, str], home: Path
) -> None:
    path = _typo_catalog(tmp_path, "name: mine\nfacilitytype: local\noptions:\n  n_worker: 2\n")
    env = {**user_env, "DASK_ESAP__FACILITIES_PATH": str(path.parent)}
    done = run_cli("run", "helloworld", "-o", "1..3", "-s", "h.zarr", "-f", "mine", env=env,
                   cwd=tmp_path)  # fmt: skip
    line = one_line_error(done)
    assert "facility 'mine': unknown option 'n_worker' (did you mean 'n_workers'?)" in line
    assert str(path) in line, line
    assert nothing_started(home) and not (tmp_path / "h.zarr").exists()


def test_a_misspelt_option_in_the_environment(
    tmp_path: Path, user_env: dict[str, str], home: Path
) -> None:
    env = {**user_env, "DASK_ESAP__FACILITIES__LOCAL__N_WORKER": "2"}
    done = run_cli("run", "helloworld", "-o", "1..3", "-s", "h.zarr", env=env, cwd=tmp_path)
    line = one_line_error(done)
    assert "facility 'local': unknown option 'n_worker' (did you mean 'n_workers'?)" in line
    assert "DASK_ESAP__FACILITIES__LOCAL__N_WORKER" in line, line
    assert nothing_started(home) and not (tmp_path / "h.zarr").exists()


def test_a_misspelt_option_of_a_batch_facility(
    tmp_path: Path, user_env: dict[str, str], home: Path
) -> None:
    """Refused before dask-jobqueue submits anything (no SLURM needed to see it)."""
    path = _typo_catalog(
        tmp_path,
        "name: mine\nfacilitytype: slurm\noptions:\n  queu: debug\n  cores: 1\n  memory: 1GiB\n",
    )
    env = {**user_env, "DASK_ESAP__FACILITIES_PATH": str(path.parent)}
    done = run_cli("run", "helloworld", "-o", "1..3", "-s", "h.zarr", "-f", "mine", env=env,
                   cwd=tmp_path)  # fmt: skip
    line = one_line_error(done)
    assert "facility 'mine': unknown option 'queu' (did you mean 'queue'?)" in line, line
    assert str(path) in line and nothing_started(home)


def test_a_directory_as_the_observation_list(
    tmp_path: Path, user_env: dict[str, str], home: Path
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(3):
        (runs / f"run{i}.fits.gz").write_bytes(b"")
    done = run_cli("run", "helloworld", "-o", "runs", "-s", "h.zarr", env=user_env, cwd=tmp_path)
    line = one_line_error(done)
    assert "'runs' is a directory" in line and "'runs/*.fits.gz'" in line, line

    (runs / "obs-index.fits.gz").write_bytes(b"")
    done = run_cli("run", "helloworld", "-o", "runs/", "-s", "h.zarr", env=user_env, cwd=tmp_path)
    line = one_line_error(done)
    assert "'runs/obs-index.fits.gz'" in line, line
    assert nothing_started(home) and not (tmp_path / "h.zarr").exists()


# -- 3. UWS AFTER ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2015", "2015-01-01T00:00:00"),
        ("2015-10", "2015-10-01T00:00:00"),
        ("2015-10-26", "2015-10-26T00:00:00"),
        ("20151026", "2015-10-26T00:00:00"),
        ("20151026T101500Z", "2015-10-26T10:15:00"),
        ("20151026T101500+0100", "2015-10-26T09:15:00"),
        ("2015-10-26 10:15:00", "2015-10-26T10:15:00"),
        ("2015-10-26T10:15", "2015-10-26T10:15:00"),
        ("2015-10-26T10:15:00.5Z", "2015-10-26T10:15:00.500000"),
        ("2015-10-26T10:15:00,25Z", "2015-10-26T10:15:00.250000"),
        ("2015-10-26T10:15:00.123456789Z", "2015-10-26T10:15:00.123456"),
        ("2015-10-26T10:15:00+01:00", "2015-10-26T09:15:00"),
        ("2015-10-26T10:15:00-05", "2015-10-26T15:15:00"),
        ("2015-10-26T10:15:00 01:00", "2015-10-26T09:15:00"),  # '+' unencoded in a query
        ("2015-10-26 10:15:00 0100", "2015-10-26T09:15:00"),
        ("2015-299", "2015-10-26T00:00:00"),
        ("2015-W44-1", "2015-10-26T00:00:00"),
        (" 2015-10-26T10:15:00.123Z ", "2015-10-26T10:15:00.123000"),
    ],
)
def test_after_accepts_iso_8601_as_clients_send_it(text: str, instant: str) -> None:
    assert parse_time("AFTER", text) == datetime.fromisoformat(instant).replace(tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "2015-13", "2015-10-32", "", "10:15", "2015-1"])
def test_after_refuses_what_is_not_an_instant(text: str) -> None:
    with pytest.raises(BadRequest, match=r"AFTER=.* is not an ISO 8601 instant; give e\.g\."):
        parse_time("AFTER", text)


@pytest.mark.slow
def test_after_over_http_with_a_creation_time_from_the_job_list(tmp_path: Path) -> None:
    import requests
    from pyvo.io.uws import parse_job_list

    from esap_dask.testing.service import ServiceProcess, write_tokens

    tokens = write_tokens(tmp_path / "tokens", {"tok-carol": "carol"})
    with ServiceProcess(tmp_path / "data", tokens) as svc:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer tok-carol"
        jobs_url = f"{svc.url}/uws/jobs"
        urls = []
        for _ in range(3):
            resp = s.post(jobs_url, data={"pipeline": "helloworld", "observations": "1..2"},
                          allow_redirects=False)  # fmt: skip
            assert resp.status_code == 303, resp.text
            urls.append(resp.headers["Location"])
        ids = [u.rsplit("/", 1)[1] for u in urls]

        def listed(query: str) -> list[str]:
            resp = s.get(f"{jobs_url}?{query}")  # as typed: a '+' stays unencoded
            assert resp.status_code == 200, resp.text
            return [j.jobid for j in parse_job_list(io.BytesIO(resp.content))]

        first = s.get(urls[0]).text
        shown = first.split("<uws:creationTime>", 1)[1].split("<", 1)[0]
        assert shown.endswith("Z")
        assert listed(f"AFTER={shown}") == ids[1:], "creationTime of job 1 as AFTER"
        year = datetime.now(UTC).year
        assert listed(f"AFTER={year - 1}") == ids
        assert listed(f"AFTER={year + 1}") == []
        basic = shown.replace("-", "").replace(":", "")
        assert listed(f"AFTER={basic}") == ids[1:]
        paris = parse_time("AFTER", shown).astimezone(timezone(timedelta(hours=1)))
        assert listed(f"AFTER={paris.isoformat()}") == ids[1:]  # '+01:00' arrives as ' 01:00'
        assert listed(f"AFTER={paris.isoformat().replace('T', ' ')}") == ids[1:]
        assert s.get(jobs_url, params={"AFTER": "yesterday"}).status_code == 400


# -- 4. connecting to the local facility --------------------------------------------------------

_SECOND_PROCESS = """
import sys
from distributed import Client
from distributed.security import Security

address, ca, cert, key = sys.argv[1:5]
security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                    require_encryption=True)
with Client(address, security=security, timeout=30) as client:
    print(client.submit(sum, [1, 2, 3]).result())
"""

_BY_CONFIG = """
import sys
from distributed import Client

with Client(sys.argv[1], timeout=sys.argv[2]) as client:
    print(client.submit(sum, [1, 2, 3]).result())
"""


@pytest.mark.slow
def test_the_documented_ways_of_connecting_to_local(tmp_path: Path) -> None:
    """docs/facilities/local.md#tls: each way it shows, and the failure it describes."""
    from distributed import Client

    import esap_dask

    with esap_dask.open_cluster("local", n_workers=1) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        with Client(address, security=cluster.security) as client:
            assert client.submit(sum, [2, 2]).result() == 4

        sec = cluster.security
        files = [sec.tls_ca_file, sec.tls_client_cert, sec.tls_client_key]
        second = subprocess.run(
            [sys.executable, "-c", _SECOND_PROCESS, address, *files],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert second.returncode == 0 and second.stdout.strip() == "6", second.stderr

        env = {
            **os.environ,
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": files[0],
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": files[1],
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": files[2],
        }
        by_config = subprocess.run(
            [sys.executable, "-c", _BY_CONFIG, address, "30"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert by_config.returncode == 0 and by_config.stdout.strip() == "6", by_config.stderr

        with pytest.raises(TypeError, match="TLS expects a `ssl_context` argument"):
            Client(address, timeout=10)

        outsider = subprocess.run(
            [sys.executable, "-c", _BY_CONFIG, address.replace("tls://", "tcp://"), "5"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert outsider.returncode != 0, "a plain-TCP client got in"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = esap_dask.open_cluster("local", n_workers=1, tls=False)
    from esap_dask.deploy.local import PlainTCPWarning

    said = [str(w.message) for w in caught if issubclass(w.category, PlainTCPWarning)]
    assert len(said) == 1 and "plain TCP" in said[0] and plain.scheduler_address in said[0]
    with plain, Client(plain.scheduler_address) as client:
        assert plain.scheduler_address.startswith("tcp://127.0.0.1:")
        assert client.submit(sum, [3, 3]).result() == 6
