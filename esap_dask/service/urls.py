"""URL observations in the job service: accepted only under the operator's URL data roots.

``esap-dask serve --data-root s3://bucket/runs/`` (or ``https://data.example.org/dr1/``)
lets jobs name observations at URLs under that prefix; the workers read them (see
:mod:`esap_dask.engine.remote`). A URL from a request is hostile until shown otherwise:

- its scheme and its host (with port) must be a root's, exactly, and its path must lie
  under the root's path at a ``/`` boundary (``https://data.example.org@127.0.0.1/``
  and ``s3://bucket/runs-other/`` are not under ``.../runs/``);
- ``file://`` is never a URL root (give the directory as a path), and never accepted;
- no user name or password, query, fragment, backslash, ``.``/``..`` segment (also
  percent-encoded) or control character;
- an HTTP(S) host that resolves to a loopback, link-local (the cloud metadata address
  169.254.169.254), unspecified or multicast address is refused, unless the operator's
  root names that host itself as an address literal or ``localhost`` (a test server);
  a name that resolves there is refused (DNS rebinding).

Errors name the parameter and the user's own value (shortened), never what a server sent.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["UrlRoot", "confine_url", "parse_url_root"]

#: Schemes whose hosts are network hosts to check (object stores name buckets instead).
_HTTP = ("http", "https")


@dataclass(frozen=True)
class UrlRoot:
    """A URL data root: scheme, host (with port, lower case) and a path prefix ending in ``/``."""

    scheme: str
    netloc: str
    path: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    @property
    def literal_host(self) -> bool:
        """Whether the root names its host as an IP address or ``localhost`` (trusted as is)."""
        host = (urlsplit(str(self)).hostname or "").lower()
        if host == "localhost":
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True


def parse_url_root(text: str) -> UrlRoot:
    """The :class:`UrlRoot` of ``--data-root URL``; ValueError saying what to give instead."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme == "file":
        raise ValueError(f"data root {text}: give a local directory as a path, not a file:// URL")
    if not scheme or not parts.netloc:
        raise ValueError(f"data root {text}: not a URL with a host or bucket")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"data root {text}: no user, password, query or fragment, please")
    import fsspec

    if scheme not in fsspec.available_protocols():
        raise ValueError(f"data root {text}: fsspec knows no protocol {scheme!r}")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return UrlRoot(scheme, parts.netloc.lower(), path)


def _segments_ok(path: str) -> bool:
    decoded = unquote(path)
    return not any(seg in (".", "..") for seg in decoded.split("/")) and "\\" not in decoded


def _private_addresses(host: str) -> list[str]:
    """The loopback/link-local/unspecified/multicast addresses ``host`` resolves to."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return []  # unresolvable: the workers' read fails, naming the URL
    bad = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if (
            address.is_loopback
            or address.is_link_local
            or address.is_unspecified
            or address.is_multicast
        ):
            bad.append(str(address))
    return bad


def confine_url(text: str, roots: tuple[UrlRoot, ...], *, glob: bool = False) -> str | None:
    """Why ``text`` is refused (a sentence), or None when it lies under one of ``roots``.

    ``glob``: wildcards are allowed in the path (a pattern to expand).
    """
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return "is a file:// URL; give a path under the data roots"
    if not roots:
        return (
            "is a URL, and this service has no URL data roots (esap-dask serve --data-root "
            "s3://bucket/prefix/); give a path under its data roots"
        )
    if "@" in parts.netloc or parts.query or parts.fragment:
        return "carries a user name, password, query or fragment; give a plain URL"
    if not _segments_ok(parts.path):
        return "contains '.', '..' or a backslash; give a URL without them"
    if not glob and any(c in parts.path for c in "*?["):
        return "contains wildcards where a single URL is expected"
    netloc = parts.netloc.lower()
    root = next(
        (
            r
            for r in roots
            if r.scheme == scheme and r.netloc == netloc and parts.path.startswith(r.path)
        ),
        None,
    )
    if root is None:
        return f"is not under this service's URL data roots ({', '.join(map(str, roots))})"
    if scheme in _HTTP and not root.literal_host:
        bad = _private_addresses(parts.hostname or "")
        if bad:
            return (
                f"names a host that resolves to a loopback or link-local address ({bad[0]}); "
                "such hosts are refused unless the operator gives the address itself as a "
                "data root"
            )
    return None
