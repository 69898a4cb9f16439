"""Who is calling: tokens, OIDC JWTs and X.509 client certificates, each in its own namespace.

Validators, tried in order:

- ``Authorization`` header (``Bearer <token>``, or HTTP Basic with the token as password,
  the convention pyvo and other IVOA clients support):

  - a local token file (``TOKEN USERNAME`` per line, ``#`` comments), the embedded default.
    Tokens are compared by their SHA-256 digest (a dictionary lookup of a digest leaks
    nothing usable about a token); the user is the bare ``USERNAME``, which may not
    contain ``:``;
  - OIDC: a JWT signed by the configured issuer, checked against the issuer's keys (JWKS
    from a URL, a file, or the issuer's discovery document) with its ``iss``, ``aud`` and
    ``exp`` always required and verified. The user is ``oidc:<issuer>:<sub>`` (the issuer
    without its scheme), so that an OIDC subject can never own a token user's jobs.

- an X.509 client certificate (a grid certificate or an RFC 3820 proxy of one): verified
  by the service's own TLS (:mod:`esap_dask.service.tls`, the chain arrives in the ASGI
  ``tls`` extension) or by a reverse proxy at a trusted address that forwards the verified
  subject DN in ``X-SSL-Client-DN`` with ``X-SSL-Client-Verify: SUCCESS``. The user is
  ``x509:<DN>`` (RFC 4514, most specific RDN first, as nginx's ``$ssl_client_s_dn``); for
  a proxy certificate, the DN of the end-entity certificate it was derived from.

The issuer's keys are cached: a token whose ``kid`` is unknown triggers at most one fetch
per ``jwks_min_interval`` seconds, and that fetch holds no lock that a request with a
known ``kid`` needs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import stat
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from esap_dask.service.config import ServiceConfig

__all__ = [
    "PROXY_CERT_INFO",
    "AuthError",
    "Authenticator",
    "KeySet",
    "loose_permissions",
    "read_token_file",
    "token_from_header",
    "x509_user_dn",
]

logger = logging.getLogger(__name__)

#: The RFC 3820 ``proxyCertInfo`` extension, which marks a proxy certificate.
PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.5.5.7.1.14")

#: Headers a trusted reverse proxy sets after verifying a client certificate (nginx:
#: ``$ssl_client_verify`` and ``$ssl_client_s_dn``).
VERIFY_HEADER = "x-ssl-client-verify"
DN_HEADER = "x-ssl-client-dn"

_TOKEN_USER = re.compile(r"[A-Za-z0-9_.@+-]+\Z")


class AuthError(Exception):
    """No credentials, or credentials that do not name a user."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def read_token_file(path: Path) -> dict[bytes, str]:
    """SHA-256 digest of each token -> user name, from a file of ``TOKEN USERNAME`` lines.

    Raises
    ------
    ValueError
        Naming the file and line of a malformed entry, or of a user name with characters
        outside ``A-Z a-z 0-9 _ . @ + -`` (``:`` is reserved for the OIDC and X.509
        namespaces).
    """
    tokens: dict[bytes, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{n}: expected 'TOKEN USERNAME' (two words), got {len(parts)} word(s)"
            )
        if not _TOKEN_USER.match(parts[1]):
            raise ValueError(
                f"{path}:{n}: user name {parts[1]!r} may contain only letters, digits and "
                "'_.@+-' (':' is reserved for oidc: and x509: users)"
            )
        tokens[_digest(parts[0])] = parts[1]
    return tokens


def loose_permissions(path: Path) -> str | None:
    """A warning when ``path`` is readable or writable by its group or others, else None."""
    mode = Path(path).stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"the token file {path} has mode {stat.S_IMODE(mode):04o}: other accounts on "
            f"this machine can read every user's token; run 'chmod 600 {path}'"
        )
    return None


def token_from_header(value: str | None) -> str:
    """The token carried by an ``Authorization`` header value."""
    if not value:
        raise AuthError("no credentials: send 'Authorization: Bearer <token>'")
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError("malformed HTTP Basic credentials") from None
        _, sep, password = decoded.partition(":")
        if sep and password:
            return password
        raise AuthError("HTTP Basic credentials carry no token as password")
    raise AuthError("unsupported Authorization scheme: use Bearer, or Basic with the token")


def x509_user_dn(chain: Sequence[bytes]) -> str:
    """The user's DN of a verified client chain (DER, the client's certificate first).

    The first certificate of the chain that is not an RFC 3820 proxy (no
    ``proxyCertInfo`` extension) is the user's certificate; its subject is returned in
    RFC 4514 form. A proxy's subject is its issuer's subject plus one ``CN``, which
    OpenSSL checks when it verifies a chain with proxy certificates allowed.

    Raises
    ------
    AuthError
        When the chain is empty or holds only proxies.
    """
    for der in chain:
        cert = x509.load_der_x509_certificate(der)
        try:
            cert.extensions.get_extension_for_oid(PROXY_CERT_INFO)
        except x509.ExtensionNotFound:
            return cert.subject.rfc4514_string()
    raise AuthError("the client certificate chain holds no end-entity certificate")


def _normalized_dn(text: str) -> str:
    try:
        return x509.Name.from_rfc4514_string(text).rfc4514_string()
    except ValueError:
        raise AuthError(f"the proxy forwarded a DN that is not RFC 4514: {text!r}") from None


class KeySet:
    """An issuer's signing keys by ``kid``, fetched lazily, refetched at most once per interval.

    Parameters
    ----------
    load
        Returns the JWKS document (``{"keys": [...]}``); raises AuthError when it cannot.
    min_interval
        Seconds between two fetches. A token naming an unknown ``kid`` within that time of
        the last fetch is refused without a fetch; while a fetch is under way, other
        requests with unknown ``kid``s are refused at once instead of waiting for it, and
        requests with known ``kid``s never wait (they read the current key set).
    """

    def __init__(
        self,
        load: Callable[[], dict[str, Any]],
        *,
        min_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.min_interval = float(min_interval)
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._last_attempt = -float("inf")
        self._last_failed = False
        self._fetching = threading.Lock()
        self.fetches = 0

    def get(self, kid: str | None) -> jwt.PyJWK:
        """The key named ``kid`` (or the only key, for a token without ``kid``)."""
        key = self._lookup(kid)
        if key is None:
            self._refresh()
            key = self._lookup(kid)
        if key is None:
            raise AuthError(f"invalid token: the issuer has no key {kid!r}")
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        keys = self._keys  # one snapshot; refreshes replace the dictionary whole
        if not keys:
            return None
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    def _due(self) -> bool:
        wait = min(self.min_interval, 5.0) if self._last_failed else self.min_interval
        return self._clock() - self._last_attempt >= wait

    def _refresh(self) -> None:
        if self._keys is not None and not self._due():
            return
        # Before the first key set, requests wait for the one fetch (there is nothing to
        # check them against anyway); afterwards nobody waits for a refetch.
        got = (
            self._fetching.acquire(timeout=30)
            if self._keys is None
            else self._fetching.acquire(False)
        )
        if not got:
            return
        try:
            if not self._due():
                return
            self._last_attempt = self._clock()
            self.fetches += 1
            try:
                data = self._load()
                keys: dict[str, jwt.PyJWK] = {}
                for i, key in enumerate(jwt.PyJWKSet.from_dict(data).keys):
                    if key.public_key_use in (None, "sig"):
                        keys[key.key_id or f"#{i}"] = key
            except (jwt.PyJWKError, jwt.PyJWKSetError) as err:
                self._last_failed = True
                raise AuthError(f"the issuer's key set is unusable: {err}") from None
            except AuthError:
                self._last_failed = True
                raise
            self._last_failed = False
            self._keys = keys
        finally:
            self._fetching.release()


class Authenticator:
    """Maps a request's credentials to a namespaced owner name.

    Parameters
    ----------
    config
        The token file, the OIDC issuer/audience/keys, the JWKS refetch interval, whether
        client certificates are accepted, and the trusted reverse proxies.

    Raises
    ------
    ValueError
        For an OIDC configuration without an audience, or keys without an issuer.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.tokens: dict[bytes, str] = {}
        if config.tokens_file:
            self.tokens = read_token_file(config.tokens_file)
            warning = loose_permissions(config.tokens_file)
            if warning:
                logger.warning("warning: %s", warning)
        self.oidc = bool(config.oidc_issuer or config.jwks)
        if self.oidc and not config.oidc_issuer:
            raise ValueError(
                "--jwks needs --oidc-issuer: every token's 'iss' is checked against it"
            )
        if self.oidc and not config.oidc_audience:
            raise ValueError(
                "--oidc-issuer needs --oidc-audience: without it, a token the issuer gave "
                "to any other service would be accepted here (use the client id or "
                "audience your identity provider puts in tokens for this service)"
            )
        self.keys = KeySet(self._fetch_jwks, min_interval=config.jwks_min_interval)
        issuer = urlsplit(str(config.oidc_issuer or ""))
        self._issuer_id = (issuer.netloc + issuer.path).rstrip("/")
        self.trusted_proxies = frozenset(config.trusted_proxies)
        self.x509 = bool(config.client_certificates or self.trusted_proxies)

    @property
    def enabled(self) -> bool:
        """Whether any validator is configured."""
        return bool(self.tokens) or self.oidc or self.x509

    def challenges(self, resource_metadata: str | None = None) -> list[str]:
        """``WWW-Authenticate`` challenges of a 401 answer, one per accepted scheme.

        ``Bearer`` (RFC 6750; with RFC 9728's ``resource_metadata`` when OIDC is on),
        ``Basic`` (the token as password), ``ivoa_bearer`` naming the OIDC issuer (IVOA
        SSO_next draft, ``standard_id`` from SSO 2.0) and ``ivoa_x509`` (IVOA AuthVO draft)
        when client certificates are accepted.
        """
        out = []
        if self.tokens or self.oidc:
            bearer = 'Bearer realm="esap-dask"'
            if self.oidc and resource_metadata:
                bearer += f', resource_metadata="{resource_metadata}"'
            out += [bearer, 'Basic realm="esap-dask"']
        if self.oidc:
            out.append(
                'ivoa_bearer standard_id="ivo://ivoa.net/sso#OpenID", '
                f'access_url="{self.config.oidc_issuer}"'
            )
        if self.x509:
            out.append("ivoa_x509")
        return out

    def user(
        self,
        authorization: str | None,
        *,
        peer: str | None = None,
        client_chain: Sequence[bytes] = (),
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """The owner name of a request; raise AuthError otherwise.

        Parameters
        ----------
        authorization
            The ``Authorization`` header value; when given, it alone decides.
        peer
            The address of the TCP peer (before any ``X-Forwarded-For`` rewriting).
        client_chain
            The verified client certificate chain (DER, client's certificate first).
        headers
            The request headers (the DN headers count only from a trusted ``peer``).
        """
        if authorization:
            token = token_from_header(authorization)
            name = self.tokens.get(_digest(token))
            if name is not None:
                return name
            if self.oidc:
                return self._jwt_user(token)
            raise AuthError("unknown token")
        if self.x509 and client_chain:
            return f"x509:{x509_user_dn(client_chain)}"
        if self.x509 and headers is not None and peer is not None and peer in self.trusted_proxies:
            dn = headers.get(DN_HEADER)
            if dn and headers.get(VERIFY_HEADER) == "SUCCESS":
                return f"x509:{_normalized_dn(dn)}"
        what = "a client certificate or 'Authorization: Bearer <token>'"
        raise AuthError(
            f"no credentials: send {what}"
            if self.x509
            else "no credentials: send 'Authorization: Bearer <token>'"
        )

    def _jwt_user(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("unknown token (neither a local token nor a JWT)") from None
        key = self.keys.get(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name or "RS256"],
                issuer=self.config.oidc_issuer,
                audience=self.config.oidc_audience,
                leeway=30,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as err:
            raise AuthError(f"invalid token: {err}") from None
        user = claims.get(self.config.username_claim)
        if not user:
            raise AuthError(f"the token names no user (no {self.config.username_claim!r} claim)")
        return f"oidc:{self._issuer_id}:{user}"

    def _fetch_jwks(self) -> dict[str, Any]:
        source = self.config.jwks
        if source is None:
            issuer = str(self.config.oidc_issuer).rstrip("/")
            discovery = _get_json(f"{issuer}/.well-known/openid-configuration")
            source = str(discovery.get("jwks_uri", ""))
            if not source:
                raise AuthError(f"{issuer}'s discovery document names no jwks_uri")
        if "://" in source:
            return _get_json(source)
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, ValueError) as err:
            raise AuthError(f"cannot read the issuer's keys from {source}: {err}") from None
        return data if isinstance(data, dict) else {"keys": data}


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = json.load(resp)
    except (OSError, ValueError) as err:
        raise AuthError(f"cannot read the issuer's keys from {url}: {err}") from None
    if not isinstance(data, dict):
        raise AuthError(f"{url} did not return a JSON object")
    return data
