"""A small asynchronous client for the DiracX REST API, over plain HTTP (httpx).

It speaks only the endpoints esap-dask needs; each is listed in :data:`ENDPOINTS`
and checked against the server's OpenAPI document by the contract test.
Tested against DiracX 0.7.0 (``scripts/diracx.sh`` pins it); the calls are those
of DiracX's own client (``diracx-client``), without its generated code.

Credentials are those the DiracX CLI leaves after ``dirac login <vo>``: a JSON
file with ``access_token``, ``refresh_token`` and ``expires_on`` (Unix seconds),
at ``$DIRACX_CREDENTIALS_PATH`` or ``~/.cache/diracx/credentials.json``. The
access token is refreshed (``POST /api/auth/token``, ``grant_type=refresh_token``)
before it expires, and the rotated tokens are written back to the same file, as
the DiracX CLI does. Many processes of one user (jobs of the service, a
notebook, cron runs) share that file: the read, the refresh and the write happen
under one exclusive ``flock`` on ``<credentials>.lock``, the file is replaced
atomically (mode 0600), and a process that finds the tokens refreshed by another
uses them. Two refreshes with one refresh token would make DiracX revoke all of
the user's tokens.

Examples
--------
>>> async with DiracXClient("https://diracx.example.org") as dx:   # doctest: +SKIP
...     jobs = await dx.submit_jdl(['Executable = "echo"; Arguments = "hi";'])
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "ENDPOINTS",
    "DiracXAuthError",
    "DiracXClient",
    "DiracXError",
    "default_credentials_path",
    "format_jdl",
    "sandbox_archive",
]

#: (method, path) of every DiracX endpoint this client calls.
ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("post", "/api/jobs/jdl"),
    ("post", "/api/jobs/search"),
    ("patch", "/api/jobs/status"),
    ("patch", "/api/jobs/heartbeat"),
    ("post", "/api/jobs/sandbox"),
    ("get", "/api/jobs/sandbox"),
    ("post", "/api/auth/token"),
)

#: Refresh the access token when it has less than this many seconds left.
REFRESH_MARGIN = 300.0
#: Seconds to wait for another process's token refresh before giving up.
LOCK_TIMEOUT = 120.0
#: The OAuth client id of DIRAC's own clients (``AuthSettings.dirac_client_id``).
DIRAC_CLIENT_ID = "myDIRACClientID"
#: The seconds DiracX's ``write_credentials`` subtracts from ``expires_in``.
_EXPIRES_GRACE = 15


class DiracXError(RuntimeError):
    """DiracX refused a request or could not be reached; the message says which and why."""


class DiracXAuthError(DiracXError):
    """No usable DiracX credentials; the message says how to log in."""


def default_credentials_path() -> Path:
    """Where the DiracX CLI keeps credentials: ``$DIRACX_CREDENTIALS_PATH`` or the cache dir."""
    env = os.environ.get("DIRACX_CREDENTIALS_PATH")
    return Path(env) if env else Path.home() / ".cache" / "diracx" / "credentials.json"


def _jwt_claims(token: str) -> dict[str, Any]:
    """The (unverified) claims of a JWT, for messages only; ``{}`` if it is not one."""
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        return {}


class DiracXClient:
    """An authenticated connection to one DiracX server.

    Parameters
    ----------
    url
        The server, e.g. ``https://diracx.example.org``; default ``$DIRACX_URL``.
    credentials_path
        The DiracX credentials file; default :func:`default_credentials_path`.
    verify
        TLS verification: ``True``, ``False`` or a CA bundle path (default
        ``$DIRACX_CA_PATH`` when set, as for the DiracX CLI).
    timeout
        Seconds per HTTP request.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        credentials_path: str | Path | None = None,
        verify: bool | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        url = url or os.environ.get("DIRACX_URL")
        if not url:
            raise DiracXError(
                "no DiracX server given: set the facility option 'url' or the environment "
                "variable DIRACX_URL (e.g. DIRACX_URL=https://diracx.example.org)"
            )
        self.url = url.rstrip("/")
        self.credentials_path = (
            Path(credentials_path).expanduser() if credentials_path else default_credentials_path()
        )
        if verify is None:
            verify = os.environ.get("DIRACX_CA_PATH") or True
        self._http = httpx.AsyncClient(base_url=self.url, verify=verify, timeout=timeout)
        self._access: str | None = None
        self._expires_on = 0.0
        self._local_refresh = asyncio.Lock()

    async def __aenter__(self) -> DiracXClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    # -- credentials ------------------------------------------------------------------

    def _login_hint(self, vo: str | None = None) -> str:
        return (
            f"log in with `DIRACX_URL={self.url} dirac login {vo or '<vo>'}` (DiracX CLI), "
            f"or point DIRACX_CREDENTIALS_PATH at a valid credentials file"
        )

    def _read_file(self) -> dict[str, Any]:
        try:
            with open(self.credentials_path) as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                data = json.load(f)
        except FileNotFoundError:
            raise DiracXAuthError(
                f"no DiracX credentials at {self.credentials_path}; {self._login_hint()}"
            ) from None
        except (OSError, ValueError) as err:
            raise DiracXAuthError(
                f"cannot read DiracX credentials {self.credentials_path} ({err}); "
                f"{self._login_hint()}"
            ) from err
        if not isinstance(data, dict) or "access_token" not in data:
            raise DiracXAuthError(
                f"{self.credentials_path} is not a DiracX credentials file; {self._login_hint()}"
            )
        return data

    def _write_file(self, token: Mapping[str, Any]) -> None:
        """Write refreshed tokens by atomic replace (temporary file, fsync, rename), mode 0600.

        A reader (this process or the DiracX CLI) sees the old file or the new one,
        never a truncated one. Call it holding :meth:`_refresh_lock`.
        """
        expires = datetime.now(tz=UTC) + timedelta(
            seconds=int(token["expires_in"]) - _EXPIRES_GRACE
        )
        record = {
            "access_token": token["access_token"],
            "refresh_token": token.get("refresh_token"),
            "expires_on": int(expires.timestamp()),
        }
        folder = self.credentials_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.credentials_path.name}.{os.getpid()}.{time.time_ns()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.credentials_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._access, self._expires_on = record["access_token"], float(record["expires_on"])

    @contextlib.asynccontextmanager
    async def _refresh_lock(self) -> AsyncIterator[None]:
        """Hold the exclusive lock on ``<credentials>.lock`` (``flock``), polling without blocking.

        One refresh at a time across all processes of this user: DiracX rotates the
        refresh token on every use and, when a used one comes back, revokes every
        token of the user. Polling (not a blocking ``flock`` in a thread) keeps the
        event loop free and leaves no thread holding the lock after a cancellation.
        """
        path = self.credentials_path.with_name(self.credentials_path.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DiracXError(
                            f"another process has held {path} for {LOCK_TIMEOUT:.0f} s while "
                            "refreshing the DiracX token; if no esap-dask or dirac process is "
                            "running, delete that file"
                        ) from None
                    await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the flock

    async def access_token(self) -> str:
        """A valid access token, refreshed first when it expires within :data:`REFRESH_MARGIN`.

        The credentials file is re-read, refreshed and written under one exclusive
        lock (:meth:`_refresh_lock`); a process that finds the tokens already
        refreshed by another once it holds the lock uses them instead of spending
        the (already rotated) refresh token again.

        Raises
        ------
        DiracXAuthError
            When there are no credentials, or they expired and cannot be refreshed;
            the message says how to log in.
        """
        if self._access and self._expires_on - time.time() > REFRESH_MARGIN:
            return self._access
        data = self._read_file()  # another process may have refreshed it
        self._access, self._expires_on = data["access_token"], float(data.get("expires_on", 0))
        if self._expires_on - time.time() > REFRESH_MARGIN:
            return self._access
        async with self._local_refresh, self._refresh_lock():
            data = self._read_file()  # the re-read, under the lock
            self._access, self._expires_on = data["access_token"], float(data.get("expires_on", 0))
            if self._expires_on - time.time() > REFRESH_MARGIN:
                return self._access  # refreshed by another process or task meanwhile
            return await self._refresh(data)

    async def _refresh(self, data: Mapping[str, Any]) -> str:
        assert self._access is not None
        vo = _jwt_claims(self._access).get("vo")
        refresh = data.get("refresh_token")
        if not refresh:
            if self._expires_on > time.time():
                return self._access
            raise DiracXAuthError(
                f"the DiracX access token in {self.credentials_path} expired at "
                f"{datetime.fromtimestamp(self._expires_on, tz=UTC):%Y-%m-%d %H:%M:%S} UTC "
                f"and there is no refresh token; {self._login_hint(vo)}"
            )
        try:
            r = await self._http.post(
                "/api/auth/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": refresh,
                    "client_id": DIRAC_CLIENT_ID,
                },
            )
        except httpx.HTTPError as err:
            raise DiracXError(f"cannot reach DiracX at {self.url}: {err}") from err
        if r.status_code != 200:
            raise DiracXAuthError(
                f"DiracX refused to refresh the access token in {self.credentials_path} "
                f"({r.status_code}: {_detail(r)}); your session has expired: {self._login_hint(vo)}"
            )
        self._write_file(r.json())
        assert self._access is not None
        return self._access

    # -- requests ---------------------------------------------------------------------

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send an authenticated request; raise :class:`DiracXError` unless it succeeded."""
        token = await self.access_token()
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        try:
            r = await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as err:
            raise DiracXError(
                f"cannot reach DiracX at {self.url} ({method} {path}): {err!r}"
            ) from err
        if r.status_code == 401:
            vo = _jwt_claims(token).get("vo")
            raise DiracXAuthError(
                f"DiracX rejected the access token from {self.credentials_path} "
                f"({_detail(r)}); {self._login_hint(vo)}"
            )
        if r.status_code >= 400:
            raise DiracXError(f"DiracX {method} {path} failed ({r.status_code}): {_detail(r)}")
        return r

    async def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document (no authentication needed)."""
        r = await self._http.get("/api/openapi.json")
        r.raise_for_status()
        return dict(r.json())

    async def submit_jdl(self, jdls: list[str]) -> list[dict[str, Any]]:
        """Submit JDLs (one parametric JDL, or several plain ones); the inserted jobs."""
        return list((await self.request("POST", "/api/jobs/jdl", json=jdls)).json())

    async def search(
        self,
        job_ids: Iterable[int] | None = None,
        parameters: Iterable[str] = ("JobID", "JobName", "Status", "MinorStatus"),
        conditions: Iterable[Mapping[str, Any]] = (),
        per_page: int = 1000,
    ) -> list[dict[str, Any]]:
        """Jobs matching ``job_ids`` and the DiracX search ``conditions``, all pages."""
        search = [dict(c) for c in conditions]
        if job_ids is not None:
            search.append({"parameter": "JobID", "operator": "in", "values": list(job_ids)})
        body = {"parameters": list(parameters), "search": search, "sort": []}
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            r = await self.request(
                "POST", "/api/jobs/search", json=body, params={"page": page, "per_page": per_page}
            )
            rows = r.json()
            found += rows
            if len(rows) < per_page:
                return found
            page += 1

    async def set_status(
        self,
        updates: Mapping[int, Iterable[Mapping[str, str]]],
        *,
        source: str = "esap-dask",
    ) -> dict[str, Any]:
        """Apply status updates (``Status``, ``MinorStatus``, ``ApplicationStatus``) in order.

        The updates of one job get increasing timestamps ending now: DiracX applies
        them through its job state machine and **silently ignores** invalid
        transitions, so read the status back when it matters.
        """
        now = datetime.now(tz=UTC)
        body: dict[str, dict[str, dict[str, str]]] = {}
        for job_id, steps in updates.items():
            steps = list(steps)
            body[str(job_id)] = {
                (now - timedelta(microseconds=1000 * (len(steps) - i))).isoformat(): {
                    "Source": source,
                    **step,
                }
                for i, step in enumerate(steps)
            }
        return dict((await self.request("PATCH", "/api/jobs/status", json=body)).json())

    async def heartbeat(self, data: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Report heartbeats; the pending job commands (e.g. ``Kill``) for these jobs."""
        body = {str(k): dict(v) for k, v in data.items()}
        return list((await self.request("PATCH", "/api/jobs/heartbeat", json=body)).json())

    async def upload_sandbox(self, archive: bytes) -> str:
        """Store a ``tar.bz2`` sandbox in DiracX's sandbox store; its PFN for ``InputSandbox``."""
        info = {
            "checksum_algorithm": "sha256",
            "checksum": hashlib.sha256(archive).hexdigest(),
            "size": len(archive),
            "format": "tar.bz2",
        }
        reply = (await self.request("POST", "/api/jobs/sandbox", json=info)).json()
        if reply.get("url"):
            async with httpx.AsyncClient(timeout=self._http.timeout) as s3:
                r = await s3.post(
                    reply["url"], data=reply.get("fields") or {}, files={"file": archive}
                )
            if r.status_code >= 300:
                raise DiracXError(
                    f"uploading the sandbox to {reply['url']} failed ({r.status_code}): {r.text}"
                )
        return str(reply["pfn"])

    async def download_sandbox(self, pfn: str) -> bytes:
        """The bytes of the sandbox ``pfn`` (``SB:SandboxSE|/S3/...``)."""
        reply = (await self.request("GET", "/api/jobs/sandbox", params={"pfn": pfn})).json()
        async with httpx.AsyncClient(timeout=self._http.timeout) as s3:
            r = await s3.get(reply["url"])
        if r.status_code != 200:
            raise DiracXError(f"downloading sandbox {pfn} failed ({r.status_code}): {r.text}")
        return r.content


def format_jdl(attributes: Mapping[str, str | int | Iterable[str]]) -> str:
    """A JDL (ClassAd) from attributes: strings quoted, integers bare, lists as ``{...}``.

    Examples
    --------
    >>> print(format_jdl({"Executable": "echo", "CPUTime": 60, "Tags": ["a"]}))
    Executable = "echo";
    CPUTime = 60;
    Tags = {"a"};
    """

    def literal(value: str | int | Iterable[str]) -> str:
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return "{" + ", ".join(literal(str(v)) for v in value) + "}"

    return "\n".join(f"{k} = {literal(v)};" for k, v in attributes.items())


def sandbox_archive(files: Mapping[str, bytes]) -> bytes:
    """A ``tar.bz2`` sandbox (DiracX's format) holding ``files`` (name -> bytes), mode 0600."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _detail(r: httpx.Response) -> str:
    with contextlib.suppress(ValueError):
        body = r.json()
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])
    return r.text[:500]
