"""The job service's operations, shared by the UWS API and the web page.

Every operation takes the authenticated owner: a job of anyone else is
reported as not found. Illegal phase transitions raise :class:`Forbidden`
(HTTP 403), invalid values :class:`BadRequest` (HTTP 400).

The phase machine (UWS 1.1)::

    PENDING --RUN--> QUEUED --(a thread takes it)--> EXECUTING --> COMPLETED | ERROR
    PENDING, QUEUED, EXECUTING --ABORT--> ABORTED
    EXECUTING --(executionDuration exceeded)--> ABORTED
    any phase --(DELETE, destruction time)--> destroyed (record and files removed)

RUN on a QUEUED or EXECUTING job and ABORT on an ABORTED one change nothing;
RUN or ABORT on a finished job, and changing parameters or the execution
duration once a job has left PENDING, are refused with 403.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from esap_dask.service.config import ServiceConfig
from esap_dask.service.db import FINAL, JobDB, JobRow, now
from esap_dask.service.errors import BadRequest, Forbidden, NotFound, ServiceError, TooMany
from esap_dask.service.events import PhaseEvents
from esap_dask.service.joblog import write_ledger
from esap_dask.service.limits import Limits
from esap_dask.service.params import JobParameterError, merge_parameters, parse_spec
from esap_dask.service.runner import JobRunner
from esap_dask.service.stores import JobStore, StoreRootError, open_job_store, require_store_root

__all__ = [
    "BadRequest",
    "Forbidden",
    "JobService",
    "NotFound",
    "ServiceError",
    "TooMany",
    "parse_time",
]

#: UWS control parameters accepted when creating a job.
CONTROL = ("PHASE", "RUNID", "EXECUTIONDURATION", "DESTRUCTION")
#: Result id -> (file inside the job directory, MIME type).
RESULT_FILES = {
    "provenance": ("", "application/json"),
    "log": ("run.log", "text/plain"),
    "ledger": ("ledger.json", "application/json"),
    "summary": ("summary.json", "application/json"),
}


#: A reduced-precision date: a year, or a year and a month (``2015``, ``2015-10``).
_REDUCED = re.compile(r"(\d{4})(?:-(\d{2}))?")
#: An ordinal date, extended or basic (``2015-299``, ``2015299``).
_ORDINAL = re.compile(r"(\d{4})-?(\d{3})")
#: A UTC offset after a space (``-05:00``; ``01``, ``0100``, ``01:00``: a ``+`` that an
#: unencoded query string turned into a space).
_OFFSET = re.compile(r"([+-]?)(\d{2}(?::?\d{2})?)")


def _iso_instant(text: str) -> datetime:
    """Parse one ISO 8601 date or date-time, as clients send them (ValueError otherwise)."""
    if m := _REDUCED.fullmatch(text):
        return datetime(int(m[1]), int(m[2] or 1), 1)
    if m := _ORDINAL.fullmatch(text):
        return datetime(int(m[1]), 1, 1) + timedelta(days=int(m[2]) - 1)
    parts = text.split()
    if len(parts) == 2 and "T" in parts[0].upper():  # date-time, offset
        parts = [*parts[0].upper().split("T", 1), parts[1]]
    if len(parts) == 3 and (m := _OFFSET.fullmatch(parts[2])):  # date, time, offset
        text = f"{parts[0]}T{parts[1]}{m[1] or '+'}{m[2]}"
    # Python's parser takes the rest: basic and extended formats, a space or T, week
    # dates, reduced times (T10, T10:15), fractional seconds with . or , (any number of
    # digits), Z and offsets +01, +0100, +01:00.
    return datetime.fromisoformat(text)


def parse_time(name: str, value: str) -> datetime:
    """An ISO 8601 instant as aware UTC, or BadRequest naming ``name``.

    Every form clients send is accepted: a date alone (``2015-10-26``, ``20151026``),
    reduced precision (``2015``, ``2015-10``: the start of that year or month), the
    basic format (``20151026T101500Z``), a space instead of ``T``, fractional
    seconds, ``Z`` or an offset (``+01``, ``+0100``, ``-05:00``; a ``+`` that an
    unencoded query string turned into a space is read as ``+``), and the
    ``creationTime`` of a job as the job list shows it. Without an offset the time
    is UTC.

    Examples
    --------
    >>> parse_time("AFTER", "2015-10").isoformat()
    '2015-10-01T00:00:00+00:00'
    >>> parse_time("AFTER", "20151026T101500+0100").isoformat()
    '2015-10-26T09:15:00+00:00'
    """
    text = value.strip()
    try:
        t = _iso_instant(text)
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadRequest(
            f"{name}={value!r} is not an ISO 8601 instant; give e.g. 2030-01-31T12:00:00Z, "
            "2030-01-31 or 2030-01"
        ) from None


def _int(name: str, value: str, *, minimum: int = 0) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise BadRequest(f"{name}={value!r} must be at least {minimum}")
    return number


class JobService:
    """Jobs of authenticated owners: create, read, run, abort, change, delete, results.

    Parameters
    ----------
    config
        The service settings.
    """

    def __init__(self, config: ServiceConfig) -> None:
        config.prepare()
        self.config = config
        self.db = JobDB(config.database)
        self.limits = Limits(config, self.db)
        self.events = PhaseEvents()
        self.runner = JobRunner(config, self.db, self.events.notify)

    def start(self) -> None:
        """Recover interrupted jobs and start the reaper (call once the app starts)."""
        self.runner.start()

    def close(self) -> None:
        """Stop running jobs and close the database."""
        self.runner.close()
        self.db.close()

    # -- reading ---------------------------------------------------------------------------

    def get(self, owner: str, job_id: str) -> JobRow:
        """The owner's job ``job_id``; NotFound otherwise."""
        row = self.db.get(job_id, owner)
        if row is None:
            raise NotFound(f"no job {job_id!r} of user {owner!r}; list yours at /uws/jobs")
        return self.limits.shown(row)

    def list_jobs(
        self, owner: str, phases: Sequence[str], after: str | None, last: str | None
    ) -> list[JobRow]:
        """The owner's jobs filtered by UWS ``PHASE`` (repeatable), ``AFTER`` and ``LAST``."""
        known = {
            p.upper()
            for p in ("PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED", *FINAL, "UNKNOWN")
        }
        wanted = [p.upper() for p in phases]
        bad = [p for p in wanted if p not in known]
        if bad:
            names = ", ".join(sorted(known))
            raise BadRequest(f"PHASE={bad[0]!r} is not a UWS phase (one of {names})")
        when = parse_time("AFTER", after) if after else None
        count = min(_int("LAST", last, minimum=1), 1_000_000) if last else None
        rows = self.db.owned(owner, phases=wanted, after=when, last=count)
        return [self.limits.shown(row) for row in rows]

    # -- creating and changing -------------------------------------------------------------

    def create(self, owner: str, pairs: Sequence[tuple[str, str]]) -> JobRow:
        """A new job from UWS parameters; with ``PHASE=RUN`` it is queued at once."""
        self.limits.check_pairs(pairs)
        control = {k.upper(): v for k, v in pairs if k.upper() in CONTROL}
        rest = [(k, v) for k, v in pairs if k.upper() not in CONTROL]
        parameters = merge_parameters({}, rest)
        self._check(parameters)
        phase = control.get("PHASE", "").upper()
        if phase not in ("", "RUN"):
            raise BadRequest(f"PHASE={control['PHASE']!r} at creation: only PHASE=RUN is allowed")
        created = now()
        duration = self.config.default_execution_duration
        if "EXECUTIONDURATION" in control:
            duration = self._duration(control["EXECUTIONDURATION"])
        destruction = created + timedelta(days=self.config.destruction_days)
        if "DESTRUCTION" in control:
            destruction = parse_time("DESTRUCTION", control["DESTRUCTION"])
        row = JobRow(
            id=uuid.uuid4().hex,
            owner=owner,
            run_id=control.get("RUNID") or None,
            phase="PENDING",
            creation_time=created,
            execution_duration=duration,
            destruction=self.limits.destruction(destruction),
            parameters=parameters,
            attempts=0,
        )
        if phase == "RUN":
            self.limits.may_queue(owner)
        self.db.add(row)
        self.limits.admitted(row)
        if phase == "RUN":
            self.set_phase(owner, row.id, "RUN")
        return self.get(owner, row.id)

    def _check(self, parameters: dict[str, Any]) -> None:
        try:
            require_store_root(self.config, parse_spec(parameters, self.limits.sandbox).facility)
        except (JobParameterError, StoreRootError) as err:
            raise BadRequest(str(err)) from None

    def _duration(self, value: str) -> int:
        seconds = _int("EXECUTIONDURATION", value)
        limit = self.config.max_execution_duration
        return limit if seconds == 0 or seconds > limit else seconds

    def set_phase(self, owner: str, job_id: str, value: str) -> None:
        """Apply ``PHASE=RUN`` or ``PHASE=ABORT``."""
        row = self.get(owner, job_id)
        phase = value.strip().upper()
        if phase == "RUN":
            if row.phase in ("QUEUED", "EXECUTING"):
                return
            self.limits.may_queue(owner)
            if self.runner.queue(job_id):
                return
            raise Forbidden(
                f"job {job_id} is {self.get(owner, job_id).phase}: it cannot run "
                "again; create a new job (POST /uws/jobs)"
            )
        if phase == "ABORT":
            if row.phase == "ABORTED" or self.runner.abort(job_id):
                return
            raise Forbidden(
                f"job {job_id} is {self.get(owner, job_id).phase}: a finished job "
                "cannot be aborted; DELETE it to remove it"
            )
        raise BadRequest(f"PHASE={value!r}: give PHASE=RUN or PHASE=ABORT")

    def set_execution_duration(self, owner: str, job_id: str, value: str) -> None:
        """Change the execution duration (seconds; 0 means the service's maximum)."""
        self.get(owner, job_id)
        seconds = self._duration(value)
        if not self.db.transition(job_id, ["PENDING"], "PENDING", execution_duration=seconds):
            raise Forbidden(f"job {job_id} has left PENDING: its executionDuration is fixed")

    def set_destruction(self, owner: str, job_id: str, value: str) -> None:
        """Change the destruction instant."""
        self.get(owner, job_id)
        when = self.limits.destruction(parse_time("DESTRUCTION", value))
        self.db.update(job_id, destruction=when)

    def set_parameters(self, owner: str, job_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        """Add or replace parameters of a PENDING job."""
        row = self.get(owner, job_id)
        if row.phase != "PENDING":
            raise Forbidden(f"job {job_id} is {row.phase}: parameters can only change in PENDING")
        self.limits.check_pairs(pairs)
        if any(k.upper() in CONTROL for k, _ in pairs):
            raise BadRequest(
                "PHASE, RUNID, EXECUTIONDURATION and DESTRUCTION have their own "
                "resources (/phase, /executionduration, /destruction)"
            )
        parameters = merge_parameters(row.parameters, pairs)
        self._check(parameters)
        if not self.db.transition(job_id, ["PENDING"], "PENDING", parameters=parameters):
            raise Forbidden(f"job {job_id} left PENDING: parameters can only change in PENDING")

    def delete(self, owner: str, job_id: str) -> None:
        """Destroy a job: abort it if active, remove its record and files."""
        self.get(owner, job_id)
        if self.db.get(job_id) is not None:
            self.runner.abort(job_id, "deleted by its owner")
        self.runner.destroy(job_id)

    # -- results ---------------------------------------------------------------------------

    def results(self, row: JobRow, base: str) -> list[dict[str, Any]]:
        """The job's result records (id, href, MIME type, size); ``base`` is the job's URL."""
        found: list[dict[str, Any]] = []
        store = self.store(row)
        with contextlib.suppress(OSError):  # an object store that does not answer
            if store.exists():
                # GET gives a zip archive; the keys under it are the store over HTTP.
                found.append(
                    {"id": "store", "href": f"{base}/results/store", "mime_type": "application/zip"}
                )
                if not store.is_local:
                    found.append({"id": "store-url", "href": store.url})
            prov = self.limits.shown_provenance(row, store.provenance())
            if prov is not None:
                found.append(
                    {
                        "id": "provenance",
                        "href": f"{base}/results/provenance",
                        "mime_type": RESULT_FILES["provenance"][1],
                        "size": prov[2],
                    }
                )
        for rid, (_, mime) in RESULT_FILES.items():
            path = self.result_path(row, rid)
            if path is not None and rid != "provenance":
                found.append(
                    {
                        "id": rid,
                        "href": f"{base}/results/{rid}",
                        "mime_type": mime,
                        "size": path.stat().st_size,
                    }
                )
        return found

    def result_path(self, row: JobRow, result_id: str) -> Path | None:
        """The file of a result in the job's directory, or None when the job has none yet.

        Neither the store nor the provenance (beside the store, which may be on an
        object store): see :meth:`store`.
        """
        directory = self.runner.job_dir(row.id)
        if result_id not in RESULT_FILES or result_id == "provenance":
            return None
        path = directory / RESULT_FILES[result_id][0]
        return self.limits.shown_file(row, path) if path.is_file() else None

    def ledger_result(self, row: JobRow) -> Path | None:
        """The ``ledger`` result, written again from the job's store when it is fetched.

        So it counts what committed after the run wrote it (the batches running when a
        job was aborted). Only here: the job's result list, polled with WAIT, does not
        read the store.
        """
        store = self.store(row)
        write_ledger(self.runner.job_dir(row.id), store.url, store.storage_options)
        return self.result_path(row, "ledger")

    def store(self, row: JobRow) -> JobStore:
        """The job's Zarr store (on the service's disk or under its store root)."""
        return open_job_store(self.config, row.id)
