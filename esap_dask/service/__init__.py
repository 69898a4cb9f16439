"""The job service: IVOA UWS 1.1 over the observation mapper.

``esap-dask serve`` (:mod:`esap_dask.service.cli`) starts it; :func:`create_app`
builds the ASGI application for a :class:`ServiceConfig`. Parts, one module each:
``config`` (settings), ``db`` (job records, SQLAlchemy), ``auth`` (tokens, OIDC),
``params`` (job parameters), ``runner`` (execution, abort, shutdown), ``reaper`` (the
loop: leases, adoption after a crash, execution durations, destruction), ``joblog``
(run log, ledger summary), ``jobs`` (operations and the phase machine), ``uwsxml``
(UWS documents via vo-models), ``uws`` (the ``/uws/jobs`` tree), ``catalog`` (ESAP
records), ``web`` (the page), ``app`` (the FastAPI application), ``cli`` (``serve``),
``testing`` (the service as a process, for tests).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esap_dask.service.app import create_app
    from esap_dask.service.config import ServiceConfig

__all__ = ["ServiceConfig", "create_app"]

_LAZY = {"create_app": "esap_dask.service.app", "ServiceConfig": "esap_dask.service.config"}


def __getattr__(name: str) -> Any:
    # FastAPI (the optional extra 'service') loads when the service is used, not when
    # ``esap-dask`` registers its ``serve`` command from esap_dask.service.cli.
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
