"""The FastAPI application: UWS jobs, ESAP catalog, web page, OpenAPI document.

``create_app(config)`` builds one service; :mod:`esap_dask.service.cli` serves it
with uvicorn. The OpenAPI document is at ``/openapi.json`` (browsable at ``/docs``).
"""

# No `from __future__ import annotations`: FastAPI must see the local dependencies.

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)

from esap_dask import __version__
from esap_dask.service import catalog, uws, web
from esap_dask.service.auth import Authenticator, AuthError
from esap_dask.service.config import ServiceConfig
from esap_dask.service.jobs import JobService, ServiceError
from esap_dask.service.tls import PEER_EXTENSION

__all__ = ["create_app"]


class Unauthorized(ServiceError):
    """No or bad credentials (HTTP 401)."""

    status = 401


def create_app(config: ServiceConfig) -> FastAPI:
    """The job service as an ASGI application.

    Parameters
    ----------
    config
        Data directory, database, token file or OIDC issuer, limits.

    Raises
    ------
    ValueError
        When no authentication is configured (give a token file, an OIDC issuer and
        audience, client certificates or a trusted proxy), or OIDC lacks an audience.
    """
    authenticator = Authenticator(config)
    if not authenticator.enabled:
        raise ValueError(
            "the job service needs users: give --tokens FILE (lines 'TOKEN USERNAME'), "
            "--oidc-issuer URL with --oidc-audience, --client-ca (with --tls-cert) or "
            "--trusted-proxy ADDRESS"
        )
    service = JobService(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            try:
                service.close()
            finally:
                # uvicorn ends a SIGTERM shutdown by re-raising the signal with its
                # default action: no atexit handler runs, so the TLS credentials of
                # the clusters this service opened (shared and per job) go here.
                from esap_dask.deploy.tls import remove_all_credentials

                remove_all_credentials()

    app = FastAPI(
        title="esap-dask job service",
        version=__version__,
        description="IVOA UWS 1.1 jobs running esap-dask pipelines over observations, "
        "with ESAP catalog endpoints. Authenticate with 'Authorization: Bearer <token>' "
        "or HTTP Basic with the token as password.",
        lifespan=lifespan,
    )
    app.state.service = service

    bearer = HTTPBearer(auto_error=False, description="a token of the token file, or an OIDC JWT")
    basic = HTTPBasic(auto_error=False, description="any user name, the token as password")

    def user(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        _basic: Annotated[HTTPBasicCredentials | None, Depends(basic)],
    ) -> str:
        # The security dependencies document both schemes in the OpenAPI document;
        # the header itself is checked here, the same way for every scheme. The TLS
        # chain and the TCP peer come from esap_dask.service.tls's uvicorn protocol.
        extensions = request.scope.get("extensions") or {}
        tls = extensions.get("tls") or {}
        chain = [ssl.PEM_cert_to_DER_cert(pem) for pem in tls.get("client_cert_chain") or ()]
        peer = (extensions.get(PEER_EXTENSION) or {}).get("client") or (None,)
        try:
            name = authenticator.user(
                request.headers.get("authorization"),
                peer=peer[0],
                client_chain=chain,
                headers=request.headers,
            )
        except AuthError as err:
            raise Unauthorized(str(err)) from None
        request.state.vo_authenticated = name
        return name

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, err: ServiceError) -> PlainTextResponse:
        response = PlainTextResponse(str(err), status_code=err.status)
        if err.status == 401:
            # IVOA SSO 2.0 / AuthVO: a 401 names every way to authenticate here.
            metadata = str(request.url_for("protected_resource_metadata"))
            for challenge in authenticator.challenges(metadata):
                response.headers.append("WWW-Authenticate", challenge)
        return response

    @app.get("/.well-known/oauth-protected-resource", include_in_schema=False)
    def protected_resource_metadata(request: Request) -> JSONResponse:
        """RFC 9728: which authorization server issues tokens for this service."""
        document: dict[str, Any] = {
            "resource": str(request.url_for("list_jobs")),
            "bearer_methods_supported": ["header"],
        }
        if config.oidc_issuer:
            document["authorization_servers"] = [config.oidc_issuer]
        return JSONResponse(document)

    @app.middleware("http")
    async def vo_authenticated(request: Request, call_next: Any) -> Any:
        # IVOA AuthVO: an authenticated answer names the identity it was given to.
        response = await call_next(request)
        name = getattr(request.state, "vo_authenticated", None)
        if name:
            response.headers["X-VO-Authenticated"] = name
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> PlainTextResponse:
        lines = []
        for e in err.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
            lines.append(f"parameter {where!r}: {e.get('msg')}")
        return PlainTextResponse("\n".join(lines) or "invalid request", status_code=400)

    @app.middleware("http")
    async def same_origin(request: Request, call_next: Any) -> Any:
        # Browsers resend cached Basic credentials to any site's form posts: refuse
        # state-changing requests that a browser says come from another origin.
        origin = request.headers.get("origin")
        unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
        foreign = bool(origin) and urlsplit(origin or "").netloc != request.headers.get("host")
        if unsafe and foreign:
            return PlainTextResponse(
                f"cross-origin {request.method} from {origin} refused", status_code=403
            )
        return await call_next(request)

    app.include_router(uws.make_router(service, user))
    app.include_router(catalog.make_router(user))
    app.include_router(web.make_router(service, user))
    app.middleware("http")(web.security_headers)  # outermost: on every response
    return app
