"""Run the job service as a real process on loopback, for tests and demos.

>>> with ServiceProcess(data_dir, tokens_file) as svc:      # doctest: +SKIP
...     requests.get(f"{svc.url}/uws/jobs", headers={"Authorization": "Bearer t"})
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ServiceProcess", "free_port", "uws_schema", "wait_for_phase", "write_tokens"]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """``esap-dask serve`` in its own process group, on ``127.0.0.1:<port>``.

    Parameters
    ----------
    data_dir, tokens
        The service's ``--data`` and ``--tokens``.
    port
        Default: a free port.
    extra
        More command-line options (``["--database", url]``, ``["--oidc-issuer", ...]``).
    env
        Environment variables added to the service's (``DASK_...`` configuration).
    """

    def __init__(
        self,
        data_dir: Path,
        tokens: Path | None,
        *,
        port: int | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.tokens = tokens
        self.port = port or free_port()
        self.extra = list(extra or [])
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The service's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        """Start the process and wait until it answers HTTP."""
        cmd = [
            sys.executable,
            "-m",
            "esap_dask.service.cli",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data",
            str(self.data_dir),
            *self.extra,
        ]
        if self.tokens is not None:
            cmd += ["--tokens", str(self.tokens)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "service.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.data_dir / "service.log").read_text()[-3000:]
                raise RuntimeError(f"the service exited with {self.proc.returncode}:\n{tail}")
            try:
                urllib.request.urlopen(f"{self.url}/openapi.json", timeout=2).close()
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the service did not answer on {self.url} within {timeout} s")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the service (a graceful shutdown), then SIGKILL of its group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the service and everything it started (its Dask workers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_tokens(path: Path, users: dict[str, str]) -> Path:
    """A token file (``TOKEN USERNAME`` lines) for ``{token: user}``."""
    path.write_text("".join(f"{token} {user}\n" for token, user in users.items()))
    return path


def uws_schema(schema_dir: Path) -> object:
    """An ``lxml.etree.XMLSchema`` of ``UWS.xsd`` whose xlink import is the local ``xlink.xsd``.

    Needs lxml (a test dependency).
    """
    from lxml import etree

    doc = etree.parse(str(schema_dir / "UWS.xsd"))
    for imp in doc.getroot().iter("{http://www.w3.org/2001/XMLSchema}import"):
        if imp.get("namespace") == "http://www.w3.org/1999/xlink":
            imp.set("schemaLocation", str(schema_dir / "xlink.xsd"))
    return etree.XMLSchema(doc)


def wait_for_phase(session: Any, url: str, phases: set[str], timeout: float = 120) -> str:
    """Wait until a job's phase is one of ``phases``; return it.

    Final phases are awaited with blocking WAITs. An active phase (QUEUED, EXECUTING) is
    polled every 0.1 s instead: a WAIT that starts while the job is already in that phase
    blocks until the job leaves it, and a short job would be missed.
    """
    deadline = time.monotonic() + timeout
    active = bool(phases & {"QUEUED", "EXECUTING"})
    while (phase := session.get(f"{url}/phase").text) not in phases:
        assert time.monotonic() < deadline, f"{url} stuck in {phase}"
        if active:
            time.sleep(0.1)
        else:
            session.get(url, params={"WAIT": "5"})
    return phase
