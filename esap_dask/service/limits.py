"""Per-user quotas and what the service shows of a job: used by :class:`~.jobs.JobService`.

Quotas (each a :class:`~esap_dask.service.config.ServiceConfig` field and an
``esap-dask serve`` option):

- ``max_jobs_per_user``: jobs a user may have that are not finished (PENDING,
  QUEUED, EXECUTING, HELD, SUSPENDED); checked after the new job is inserted and
  undone when over, so concurrent requests (or several service instances) cannot
  slip past it together.
- ``max_queued_per_user``: jobs of a user waiting for or holding an execution
  thread (QUEUED, EXECUTING), checked at ``PHASE=RUN``.

Both are answered **429 Too Many Requests**: the request is valid and the user
may make it again once some of their jobs have finished or been deleted (RFC 6585:
"the user has sent too many requests"); 403 stays what UWS makes it, an operation
the job's phase forbids. Values out of bounds (observations per job, parameter
maxima, control characters) are 400, naming the limit. ``DESTRUCTION`` later than
``max_destruction_days`` ahead is moved to that bound, as UWS 1.1 lets a service do
(the client reads the instant it got back).

What users see of a job passes through :meth:`Limits.shown` (text a UWS document can
carry; server paths made relative) and result files through :meth:`Limits.shown_file`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from esap_dask.service.config import ServiceConfig
from esap_dask.service.db import JobDB, JobRow, now
from esap_dask.service.errors import BadRequest, TooMany
from esap_dask.service.params import check_pairs
from esap_dask.service.sandbox import XML_INVALID, JobParameterError, Redactor

__all__ = ["Limits"]

#: Phases counted by ``max_jobs_per_user`` and ``max_queued_per_user``.
UNFINISHED = ("PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED")
RUNNING = ("QUEUED", "EXECUTING")
#: Where redacted copies of a job's result files are kept (inside its directory).
SHOWN_DIR = ".shown"


def _clean(text: str) -> str:
    return XML_INVALID.sub("\ufffd", text)


class Limits:
    """The quotas and the redaction of one service.

    Parameters
    ----------
    config
        The service settings (its sandbox is built here: bad data roots raise ValueError).
    db
        The job table.
    """

    def __init__(self, config: ServiceConfig, db: JobDB) -> None:
        self.config = config
        self.db = db
        self.sandbox = config.sandbox
        self.redact = Redactor(self.sandbox.roots, config.data_dir)
        # concordia reads a card named by a path with esap_dask.iact.corsika.read_card, under
        # these roots, never from a URL (the service process is the one that reads it)
        import dask.config

        import esap_dask.config  # noqa: F401 - the esap.* defaults, before they are set

        dask.config.set(
            {"esap.corsika.card-roots": list(self.sandbox.roots), "esap.corsika.card-urls": False}
        )

    # -- requests --------------------------------------------------------------------------

    def check_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        """BadRequest for names or values a UWS document cannot carry."""
        try:
            check_pairs(pairs)
        except JobParameterError as err:
            raise BadRequest(str(err)) from None

    def admitted(self, row: JobRow) -> None:
        """Undo the just-inserted ``row`` when its owner is now over ``max_jobs_per_user``."""
        cap = self.config.max_jobs_per_user
        if self.db.count(row.owner, UNFINISHED) <= cap:
            return
        self.db.delete(row.id)
        raise TooMany(
            f"user {row.owner!r} has {cap} unfinished jobs, the most this service allows "
            "(max_jobs_per_user, esap-dask serve --max-jobs-per-user); wait for some to "
            "finish, or abort or delete some"
        )

    def may_queue(self, owner: str) -> None:
        """TooMany when ``owner`` already has ``max_queued_per_user`` queued or executing jobs."""
        cap = self.config.max_queued_per_user
        if self.db.count(owner, RUNNING) >= cap:
            raise TooMany(
                f"user {owner!r} has {cap} jobs queued or executing, the most this service "
                "allows (max_queued_per_user, esap-dask serve --max-queued-per-user); run "
                "this job once one of them has finished"
            )

    def destruction(self, when: datetime) -> datetime:
        """``when``, or the latest destruction instant the service allows if it is later."""
        return min(when, now() + timedelta(days=self.config.max_destruction_days))

    # -- what users see --------------------------------------------------------------------

    def shown(self, row: JobRow) -> JobRow:
        """``row`` as users see it (in memory only): XML-safe text, no server paths."""
        if row.run_id and XML_INVALID.search(row.run_id):
            row.run_id = _clean(row.run_id)
        if any(isinstance(v, str) and XML_INVALID.search(v) for v in _values(row.parameters)):
            row.parameters = {
                _clean(k): [_clean(str(x)) for x in v] if isinstance(v, list) else _clean(str(v))
                for k, v in row.parameters.items()
            }
        if row.error_message:
            row.error_message = _clean(self.redact(row.error_message, self.config.job_dir(row.id)))
        return row

    def shown_file(self, row: JobRow, path: Path) -> Path:
        """A copy of a result file with server paths redacted (kept until the file changes)."""
        st = path.stat()
        copy = path.parent / SHOWN_DIR / path.name
        stamp = f"{st.st_size}-{st.st_mtime_ns}"
        marker = copy.with_name(copy.name + ".source")
        try:
            if marker.read_text() == stamp and copy.is_file():
                return copy
        except OSError:
            pass
        text = path.read_text(errors="replace")
        copy.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
        tmp.write_text(self.redact(text, self.config.job_dir(row.id)))
        os.replace(tmp, copy)
        marker.write_text(stamp)
        return copy

    def shown_provenance(
        self, row: JobRow, found: tuple[Any, str, int] | None
    ) -> tuple[Any, str, int] | None:
        """A redacted local copy of the provenance document ``(fs, path, size)``."""
        if found is None:
            return None
        from fsspec.implementations.local import LocalFileSystem

        fs, path, size = found
        directory = self.config.job_dir(row.id) / SHOWN_DIR
        copy = directory / "provenance.json"
        marker = directory / "provenance.json.source"
        stamp = f"{path}-{size}"
        try:
            fresh = marker.read_text() == stamp and copy.is_file()
        except OSError:
            fresh = False
        if not fresh:
            text = fs.cat_file(path).decode("utf-8", errors="replace")
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = directory / f".provenance.{os.getpid()}.tmp"
            tmp.write_text(self.redact(text, self.config.job_dir(row.id)))
            os.replace(tmp, copy)
            marker.write_text(stamp)
        return LocalFileSystem(), str(copy), copy.stat().st_size


def _values(parameters: dict[str, Any]) -> list[Any]:
    out: list[Any] = list(parameters)
    for value in parameters.values():
        out.extend(value if isinstance(value, list) else [value])
    return out
