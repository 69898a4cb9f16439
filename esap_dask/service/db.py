"""Job records in a real database: SQLAlchemy, SQLite by default, PostgreSQL when shared.

Every phase change goes through :meth:`JobDB.transition`, a single
``UPDATE ... WHERE phase IN (...)``: two requests racing on one job (RUN and
ABORT, ABORT and completion) cannot both win, whatever the database.

A SQLite database file is created with mode 0600 (and made so when it exists): it
holds every user's parameters and errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = ["ACTIVE", "FINAL", "JobDB", "JobRow", "utc"]

#: Phases in which a job may still change by itself.
ACTIVE = ("PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED")
#: Phases a job never leaves.
FINAL = ("COMPLETED", "ERROR", "ABORTED", "ARCHIVED")


def utc(t: datetime | None) -> datetime | None:
    """``t`` as an aware UTC datetime (databases may hand back naive ones)."""
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _naive(t: datetime | None) -> datetime | None:
    return None if t is None else utc(t).replace(tzinfo=None)  # type: ignore[union-attr]


class _Base(DeclarativeBase):
    pass


class JobRow(_Base):
    """One UWS job. Times are stored as naive UTC (portable across databases)."""

    __tablename__ = "esap_uws_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    run_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    creation_time: Mapped[datetime] = mapped_column(DateTime, index=True)
    start_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    execution_duration: Mapped[int] = mapped_column(Integer, default=0)
    destruction: Mapped[datetime] = mapped_column(DateTime, index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    error_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The service instance whose threads run the job (QUEUED or EXECUTING), and when it
    #: last said it is alive: jobs of a dead instance are adopted by a live one.
    runner: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    def time(self, name: str) -> datetime | None:
        """The aware UTC value of a time column."""
        return utc(getattr(self, name))


_TIME_FIELDS = ("creation_time", "start_time", "end_time", "destruction", "heartbeat")
#: ``held_by=ANY`` in :meth:`JobDB.transition`: whoever runs the job.
ANY = object()


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (_naive(v) if k in _TIME_FIELDS else v) for k, v in fields.items()}


class JobDB:
    """The job table: create, read, filter, transition, delete.

    Parameters
    ----------
    url
        A SQLAlchemy database URL (``sqlite:///...``, ``postgresql+psycopg://...``).
    """

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=30)
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            _private_file(self.engine.url.database)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def add(self, row: JobRow) -> JobRow:
        """Insert a new job."""
        for name in _TIME_FIELDS:
            setattr(row, name, _naive(getattr(row, name)))
        with self._session.begin() as s:
            s.add(row)
        return row

    def get(self, job_id: str, owner: str | None = None) -> JobRow | None:
        """The job ``job_id`` (only if it belongs to ``owner``, when given)."""
        with self._session() as s:
            row = s.get(JobRow, job_id)
        if row is None or (owner is not None and row.owner != owner):
            return None
        return row

    def owned(
        self,
        owner: str,
        *,
        phases: Sequence[str] = (),
        after: datetime | None = None,
        last: int | None = None,
    ) -> list[JobRow]:
        """The owner's jobs, filtered as UWS 1.1 says.

        Without ``phases`` ARCHIVED jobs are left out; ``after`` keeps jobs created
        after that instant; ``last`` keeps the ``last`` most recently created ones.
        Jobs come newest first when ``last`` is given, oldest first otherwise.
        """
        q = select(JobRow).where(JobRow.owner == owner)
        if phases:
            q = q.where(JobRow.phase.in_(list(phases)))
        else:
            q = q.where(JobRow.phase != "ARCHIVED")
        if after is not None:
            q = q.where(JobRow.creation_time > _naive(after))
        if last is not None:
            q = q.order_by(JobRow.creation_time.desc(), JobRow.id.desc()).limit(last)
        else:
            q = q.order_by(JobRow.creation_time, JobRow.id)
        with self._session() as s:
            return list(s.scalars(q))

    def count(self, owner: str, phases: Iterable[str]) -> int:
        """How many jobs of ``owner`` are in one of ``phases``."""
        q = select(func.count()).where(JobRow.owner == owner, JobRow.phase.in_(list(phases)))
        with self._session() as s:
            return int(s.execute(q).scalar_one())

    def in_phases(self, phases: Iterable[str]) -> list[JobRow]:
        """Every job (of any owner) in one of ``phases``, oldest first."""
        q = select(JobRow).where(JobRow.phase.in_(list(phases))).order_by(JobRow.creation_time)
        with self._session() as s:
            return list(s.scalars(q))

    def expired(self, now: datetime) -> list[JobRow]:
        """Jobs whose destruction time has passed."""
        q = select(JobRow).where(JobRow.destruction <= _naive(now))
        with self._session() as s:
            return list(s.scalars(q))

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set ``fields`` of a job; False when it does not exist."""
        with self._session.begin() as s:
            res = s.execute(update(JobRow).where(JobRow.id == job_id).values(**_clean(fields)))
        return bool(res.rowcount)  # type: ignore[attr-defined]

    def transition(
        self,
        job_id: str,
        allowed: Iterable[str],
        phase: str,
        *,
        held_by: object = ANY,
        **fields: Any,
    ) -> bool:
        """Move a job to ``phase`` if it is in one of ``allowed`` (atomically); True if it moved.

        With ``held_by``, only if that instance (``None``: no instance) runs the job.
        """
        values = _clean({"phase": phase, **fields})
        q = update(JobRow).where(JobRow.id == job_id, JobRow.phase.in_(list(allowed)))
        if held_by is None:
            q = q.where(JobRow.runner.is_(None))
        elif held_by is not ANY:
            q = q.where(JobRow.runner == held_by)
        with self._session.begin() as s:
            res = s.execute(q.values(**values))
        return bool(res.rowcount)  # type: ignore[attr-defined]

    def phases(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The phase of each existing job among ``job_ids``."""
        ids = list(job_ids)
        if not ids:
            return {}
        q = select(JobRow.id, JobRow.phase).where(JobRow.id.in_(ids))
        with self._session() as s:
            return {job_id: phase for job_id, phase in s.execute(q)}

    def beat(self, runner: str, t: datetime) -> None:
        """Record that ``runner`` is alive, on every job it runs."""
        q = update(JobRow).where(JobRow.runner == runner, JobRow.phase.in_(["QUEUED", "EXECUTING"]))
        with self._session.begin() as s:
            s.execute(q.values(heartbeat=_naive(t)))

    def release(self, runner: str) -> None:
        """Give up the QUEUED jobs of ``runner`` (at shutdown), for any instance to adopt."""
        q = update(JobRow).where(JobRow.runner == runner, JobRow.phase == "QUEUED")
        with self._session.begin() as s:
            s.execute(q.values(runner=None))

    def delete(self, job_id: str) -> bool:
        """Remove a job's record; False when it did not exist."""
        with self._session.begin() as s:
            res = s.execute(delete(JobRow).where(JobRow.id == job_id))
        return bool(res.rowcount)  # type: ignore[attr-defined]


def _private_file(database: str | None) -> None:
    """Create the SQLite file ``database`` with mode 0600, or make an existing one so."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    fd = os.open(database, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def now() -> datetime:
    """The current instant, aware UTC, to the millisecond (what UWS documents show)."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)
