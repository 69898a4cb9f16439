"""Who is calling: tokens from ``Authorization: Bearer`` or HTTP Basic (token as password).

Two validators, tried in order:

- a local token file (``TOKEN USERNAME`` per line, ``#`` comments), the embedded default;
- OIDC: the token is a JWT signed by the configured issuer, checked against the
  issuer's keys (JWKS from a URL, a file, or the issuer's discovery document),
  with its ``iss``, ``exp`` and (when configured) ``aud``.

HTTP Basic carries the token as the password (the user name is ignored), the
convention pyvo and other IVOA clients support.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import jwt

from esap_dask.service.config import ServiceConfig

__all__ = ["AuthError", "Authenticator", "read_token_file", "token_from_header"]


class AuthError(Exception):
    """No credentials, or credentials that do not name a user."""


def read_token_file(path: Path) -> dict[str, str]:
    """Token -> user name, from a file of ``TOKEN USERNAME`` lines.

    Raises
    ------
    ValueError
        Naming the file and line of a malformed entry.
    """
    tokens: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{n}: expected 'TOKEN USERNAME' (two words), got {len(parts)} word(s)"
            )
        tokens[parts[0]] = parts[1]
    return tokens


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


class Authenticator:
    """Maps a token to a user name, from the token file or the OIDC issuer's keys."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.tokens = read_token_file(config.tokens_file) if config.tokens_file else {}
        self._keys: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any validator is configured."""
        return bool(self.tokens) or bool(self.config.oidc_issuer or self.config.jwks)

    def user(self, authorization: str | None) -> str:
        """The user name for an ``Authorization`` header value; raise AuthError otherwise."""
        token = token_from_header(authorization)
        if token in self.tokens:
            return self.tokens[token]
        if self.config.oidc_issuer or self.config.jwks:
            return self._jwt_user(token)
        raise AuthError("unknown token")

    def _jwt_user(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("unknown token (neither a local token nor a JWT)") from None
        key = self._key(header.get("kid"))
        required = ["exp", "iss"] if self.config.oidc_issuer else ["exp"]
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name or "RS256"],
                issuer=self.config.oidc_issuer,
                audience=self.config.oidc_audience,
                options={"require": required, "verify_aud": bool(self.config.oidc_audience)},
            )
        except jwt.PyJWTError as err:
            raise AuthError(f"invalid token: {err}") from None
        user = claims.get(self.config.username_claim) or claims.get("sub")
        if not user:
            raise AuthError(f"the token names no user (no {self.config.username_claim!r} or sub)")
        return str(user)

    def _key(self, kid: str | None) -> jwt.PyJWK:
        for attempt in range(2):
            with self._lock:
                if self._keys is None or attempt:
                    self._keys = jwt.PyJWKSet.from_dict(self._fetch_jwks())
                keys = self._keys
            for key in keys.keys:
                if kid is None or key.key_id == kid:
                    return key
        raise AuthError(f"invalid token: the issuer has no key {kid!r}")

    def _fetch_jwks(self) -> dict[str, Any]:
        source = self.config.jwks
        if source is None:
            issuer = str(self.config.oidc_issuer).rstrip("/")
            discovery = _get_json(f"{issuer}/.well-known/openid-configuration")
            source = str(discovery["jwks_uri"])
        if "://" in source:
            return _get_json(source)
        data = json.loads(Path(source).read_text())
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
