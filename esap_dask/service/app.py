"""The FastAPI application: UWS jobs, ESAP catalog, web page, OpenAPI document.

``create_app(config)`` builds one service; :mod:`esap_dask.service.cli` serves it
with uvicorn. The OpenAPI document is at ``/openapi.json`` (browsable at ``/docs``).
"""

# No `from __future__ import annotations`: FastAPI must see the local dependencies.

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
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

__all__ = ["create_app"]

_CHALLENGE = 'Bearer realm="esap-dask", Basic realm="esap-dask"'


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
        When no authentication is configured (give a token file or an OIDC issuer).
    """
    authenticator = Authenticator(config)
    if not authenticator.enabled:
        raise ValueError(
            "the job service needs users: give --tokens FILE (lines 'TOKEN USERNAME') or "
            "--oidc-issuer URL"
        )
    service = JobService(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.close()

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
        # the header itself is checked here, the same way for every scheme.
        try:
            return authenticator.user(request.headers.get("authorization"))
        except AuthError as err:
            raise Unauthorized(str(err)) from None

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, err: ServiceError) -> PlainTextResponse:
        headers = {"WWW-Authenticate": _CHALLENGE} if err.status == 401 else None
        return PlainTextResponse(str(err), status_code=err.status, headers=headers)

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
    return app
