"""What a run did: :class:`RunSummary`, the CLI's ``--json`` and the service's result."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from esap_dask.engine.ledger import Plan
from esap_dask.engine.task import BatchReport

__all__ = ["HTML_FAILURES", "RunSummary", "summarise"]

#: Failures listed in a summary's HTML repr (the ledger has them all: ``esap-dask status``).
HTML_FAILURES = 20
#: Characters of one failure's message shown in the HTML repr.
HTML_MESSAGE = 300


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

    def _repr_html_(self) -> str:
        """A table for Jupyter: counts, timings, reasons, notes, the first failures, links.

        Every text that comes from the run (messages, ids, paths) is escaped.
        """
        e = html.escape
        state = (
            '<span style="color:#1a7f37">ok</span>'
            if self.ok
            else f'<span style="color:#cf222e">{self.failed} failed</span>'
        )
        rate = f", {self.processed / self.seconds:.3g} obs/s" if self.seconds else ""
        rows = [
            ("pipeline", f"{e(self.pipeline)} {e(self.version)} on {e(self.facility)}"),
            ("result", state),
            (
                "observations",
                f"{self.total} total: {self.processed} processed ({self.succeeded} succeeded, "
                f"{self.failed} failed), {self.skipped} skipped",
            ),
            ("time", f"{self.seconds:g} s{rate}"),
        ]
        if self.reasons:
            why = ", ".join(f"{e(str(k))}: {v}" for k, v in sorted(self.reasons.items()))
            rows.append(("why processed", why))
        rows.append(("store", f"<code>{e(self.store)}</code>"))
        rows.append(("run", f"<code>{e(self.run_id)}</code>"))
        if self.provenance:
            rows.append(("provenance", f"<code>{e(self.provenance)}</code>"))
        if self.dashboard:
            link = e(self.dashboard, quote=True)
            rows.append(("dashboard", f'<a href="{link}" target="_blank">{link}</a>'))
        cell = 'style="text-align:left;vertical-align:top"'
        parts = ["<div><strong>esap-dask RunSummary</strong><table>"]
        parts += [f"<tr><th {cell}>{k}</th><td {cell}>{v}</td></tr>" for k, v in rows]
        parts.append("</table>")
        if self.notes:
            parts.append("<details open><summary>notes</summary><ul>")
            parts += [f"<li>{e(note)}</li>" for note in self.notes]
            parts.append("</ul></details>")
        if self.failures:
            shown = self.failures[:HTML_FAILURES]
            parts.append(f"<details open><summary>failures ({len(self.failures)})</summary>")
            parts.append(
                f"<table><tr><th {cell}>observation</th><th {cell}>error</th>"
                f"<th {cell}>message</th></tr>"
            )
            for f in shown:
                message = str(f.get("message", ""))
                if len(message) > HTML_MESSAGE:
                    message = message[:HTML_MESSAGE] + "…"
                parts.append(
                    f"<tr><td {cell}><code>{e(str(f.get('observation', '')))}</code></td>"
                    f"<td {cell}>{e(str(f.get('error_type', '')))}</td>"
                    f'<td {cell}><pre style="margin:0;white-space:pre-wrap">{e(message)}</pre>'
                    "</td></tr>"
                )
            parts.append("</table>")
            if len(self.failures) > len(shown):
                parts.append(
                    f"<p>and {len(self.failures) - len(shown)} more: "
                    f"<code>esap-dask status {e(self.store)}</code> lists them all</p>"
                )
            parts.append("</details>")
        parts.append("</div>")
        return "".join(parts)


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
