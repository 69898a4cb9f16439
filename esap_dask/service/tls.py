"""The service's own HTTPS: an ``ssl`` context that accepts grid and RFC 3820 proxy
certificates, and a uvicorn protocol that hands the verified client chain to the app.

uvicorn does not put TLS details into the ASGI scope. :func:`http_protocol` subclasses
uvicorn's HTTP protocol: when a connection is made it reads the verified chain from the
connection's ``ssl.SSLObject`` and adds, to every request of that connection,

- ``scope["extensions"]["tls"]``: the ASGI TLS extension (``client_cert_chain``: PEM
  strings, the client's certificate first, as OpenSSL verified them), and
- ``scope["extensions"]["esap_dask.peer"]``: the TCP peer's address, taken before
  uvicorn's proxy-header middleware may rewrite ``scope["client"]`` (the address that
  decides whether forwarded DN headers are trusted).

A presented client certificate that does not verify (expired, unknown CA, not yet valid)
aborts the TLS handshake: Python's ``ssl`` has no verify callback that would let the
handshake finish so that HTTP could answer 401. Clients without a certificate connect
(``CERT_OPTIONAL``) and authenticate with tokens.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

__all__ = ["PEER_EXTENSION", "http_protocol", "peer_chain", "server_context"]

PEER_EXTENSION = "esap_dask.peer"


def server_context(cert: Path, key: Path | None, client_ca: Path | None) -> ssl.SSLContext:
    """A TLS server context; with ``client_ca``, client certificates are asked for and verified.

    Parameters
    ----------
    cert, key
        The server's certificate chain and private key (PEM; ``key`` may be in ``cert``).
    client_ca
        A PEM file of trusted CA certificates, or a directory of them (as
        ``/etc/grid-security/certificates``: every ``*.pem``, ``*.crt`` and ``*.0``-``*.9``
        file is loaded). RFC 3820 proxy certificates are accepted
        (``VERIFY_ALLOW_PROXY_CERTS``); strict RFC 5280 checks are off, since proxies and
        older grid CAs do not pass them.

    Raises
    ------
    ValueError
        Naming the file that cannot be loaded, or a directory without CA certificates.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as err:
        raise ValueError(f"cannot load the TLS certificate {cert} / key {key}: {err}") from None
    if client_ca is None:
        return ctx
    ca = Path(client_ca)
    files = [ca] if not ca.is_dir() else sorted(p for p in ca.iterdir() if _is_ca_file(p))
    for path in files:
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"cannot load the client CA {path}: {err}") from None
    if not ctx.get_ca_certs():
        raise ValueError(f"no CA certificate in {ca} (give a PEM file or a directory of them)")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return ctx


def _is_ca_file(path: Path) -> bool:
    suffix = path.suffix
    return path.is_file() and (
        suffix in (".pem", ".crt") or (len(suffix) == 2 and suffix[1].isdigit())
    )


def peer_chain(ssl_object: Any) -> list[bytes]:
    """The verified client chain of a TLS connection, DER, the client's certificate first.

    Empty when the client sent no certificate. Python 3.13 has
    ``SSLObject.get_verified_chain()``; 3.10-3.12 have it on the underlying ``_ssl`` object.
    """
    if ssl_object is None or ssl_object.getpeercert(binary_form=True) is None:
        return []
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = ssl_object._sslobj.get_verified_chain
    out = []
    for cert in getter() or []:
        if isinstance(cert, bytes):
            out.append(cert)
        else:
            out.append(cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    return out


def http_protocol() -> type:
    """uvicorn's HTTP protocol class, adding the TLS and peer extensions to every scope."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Protocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            extensions: dict[str, Any] = {PEER_EXTENSION: {"client": self.client}}
            if ssl_object is not None:
                chain = peer_chain(ssl_object)
                extensions["tls"] = {
                    "server_cert": None,
                    "client_cert_chain": [ssl.DER_cert_to_PEM_cert(c) for c in chain],
                    "client_cert_name": None,
                    "client_cert_error": None,
                    "tls_version": None,
                    "cipher_suite": None,
                }
            app: Any = self.app  # type: ignore[has-type]

            async def with_extensions(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] in ("http", "websocket"):
                    scope.setdefault("extensions", {}).update(extensions)
                await app(scope, receive, send)

            self.app = with_extensions

    return Protocol
