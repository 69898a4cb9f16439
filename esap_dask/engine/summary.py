"""What a run did: :class:`RunSummary`, the CLI's ``--json`` and the service's result."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from esap_dask.engine.ledger import Plan
from esap_dask.engine.task import BatchReport

__all__ = ["RunSummary", "summarise"]


@dataclass
class RunSummary:
    """What a run did; ``to_dict()`` is the CLI's ``--json`` output."""

    store: str
    run_id: str
    pipeline: str
    version: str
    facility: str
    total: int
    processed: int
    skipped: int
    succeeded: int
    failed: int
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    provenance: str | None = None
    dashboard: str | None = None
    #: failed observations not tried again (``max_attempts``): observation, attempts,
    #: error_type and message of the last failure
    given_up: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every observation of the run ended done and none was given up."""
        return self.failed == 0 and not self.given_up

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def summarise(
    store: str,
    run_id: str,
    name: str,
    version: str,
    facility: str,
    obs_list: Sequence[Any],
    todo: Plan,
    reports: Sequence[BatchReport],
    t0: float,
) -> RunSummary:
    """The summary of a run from its plan and the reports of its tasks."""
    failed = sum(r.failed for r in reports)
    processed = len(todo.todo)
    return RunSummary(
        store=store,
        run_id=run_id,
        pipeline=name,
        version=version,
        facility=facility,
        total=len(obs_list),
        processed=processed,
        skipped=todo.skipped,
        succeeded=sum(r.done for r in reports),
        failed=failed,
        seconds=round(time.perf_counter() - t0, 3),
        reasons=dict(todo.reasons),
        notes=list(todo.notes),
        failures=[
            {"observation": oid, "error_type": kind, "message": msg}
            for r in reports
            for oid, kind, msg in r.failures
        ],
        given_up=[
            {
                "observation": g.observation.id,
                "attempts": g.attempts,
                "error_type": g.error_type,
                "message": g.error,
            }
            for g in todo.given_up
        ],
    )
