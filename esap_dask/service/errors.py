"""The service's errors, each with its HTTP status; the messages say what to do."""

from __future__ import annotations

__all__ = ["BadRequest", "Forbidden", "NotFound", "ServiceError", "TooMany"]


class ServiceError(Exception):
    """An error with its HTTP status; the message says what to do."""

    status = 500


class BadRequest(ServiceError):
    """An invalid value (HTTP 400)."""

    status = 400


class Forbidden(ServiceError):
    """An operation the job's phase does not allow (HTTP 403)."""

    status = 403


class TooMany(ServiceError):
    """A user quota is exhausted (HTTP 429; see :mod:`esap_dask.service.limits`)."""

    status = 429


class NotFound(ServiceError):
    """No such job for this owner, or no such result (HTTP 404)."""

    status = 404
