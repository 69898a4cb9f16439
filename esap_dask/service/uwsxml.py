"""UWS 1.1 XML documents, built with vo-models (pydantic-xml), never by hand.

:func:`job_document` and :func:`jobs_document` return bytes with an XML declaration,
``version="1.1"`` and UTC times ending in ``Z``; they validate against ``UWS.xsd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_xml import BaseXmlModel, element
from vo_models.uws import (
    ErrorSummary,
    Jobs,
    JobSummary,
    Parameter,
    Parameters,
    ResultReference,
    Results,
    ShortJobDescription,
)
from vo_models.uws.types import ErrorType, ExecutionPhase

from esap_dask.service.db import JobRow

__all__ = ["JobParameters", "job_document", "jobs_document", "parameters_model", "results_model"]


class JobParameters(Parameters):
    """The ``uws:parameters`` of a job whose parameter names are known only at run time."""

    parameter: list[Parameter] = element(tag="parameter", default_factory=list)

    def __init__(self, **data: Any) -> None:
        # vo-models' Parameters maps parameters onto one declared field per name;
        # ours are dynamic (the pipeline's own), so they stay one list.
        BaseXmlModel.__init__(self, **data)


def _xml(model: BaseXmlModel) -> bytes:
    return model.to_xml(skip_empty=False, encoding="UTF-8", xml_declaration=True)  # type: ignore[return-value]


def parameters_model(parameters: dict[str, Any]) -> JobParameters:
    """The parameters element: one ``uws:parameter`` per value (repeated ones repeat)."""
    items: list[Parameter] = []
    for name, value in parameters.items():
        values = value if isinstance(value, list) else [value]
        items += [Parameter(id=name, value=str(v)) for v in values]
    return JobParameters(parameter=items)


def results_model(results: Sequence[dict[str, Any]]) -> Results:
    """The results element from ``{"id", "href", "mime_type", "size"}`` records."""
    return Results(results=[ResultReference(**r) for r in results])


def _error(row: JobRow) -> ErrorSummary | None:
    if not row.error_message or row.phase not in ("ERROR", "ABORTED"):
        return None
    return ErrorSummary(
        message=row.error_message.splitlines()[0][:500] if row.error_message else "",
        type=ErrorType(row.error_type or "fatal"),
        has_detail=True,
    )


def job_model(row: JobRow, results: Sequence[dict[str, Any]]) -> JobSummary[JobParameters]:
    """The vo-models ``uws:job`` of a job record."""
    return JobSummary[JobParameters](
        job_id=row.id,
        run_id=row.run_id,
        owner_id=row.owner,
        phase=ExecutionPhase(row.phase),
        quote=None,
        creation_time=row.time("creation_time"),
        start_time=row.time("start_time"),
        end_time=row.time("end_time"),
        execution_duration=row.execution_duration,
        destruction=row.time("destruction"),
        parameters=parameters_model(row.parameters),
        results=results_model(results),
        error_summary=_error(row),
    )


def job_document(row: JobRow, results: Sequence[dict[str, Any]]) -> bytes:
    """The ``uws:job`` document of a job record."""
    return _xml(job_model(row, results))


def jobs_document(rows: Sequence[JobRow], base: str) -> bytes:
    """The ``uws:jobs`` list; ``base`` is the job list's URL (job links are below it)."""
    refs = [
        ShortJobDescription(
            job_id=row.id,
            phase=ExecutionPhase(row.phase),
            run_id=row.run_id,
            owner_id=row.owner,
            creation_time=row.time("creation_time"),
            href=f"{base.rstrip('/')}/{row.id}",
        )
        for row in rows
    ]
    return _xml(Jobs(jobref=refs))


def results_document(results: Sequence[dict[str, Any]]) -> bytes:
    """The ``uws:results`` document."""
    return _xml(results_model(results))


def parameters_document(parameters: dict[str, Any]) -> bytes:
    """The ``uws:parameters`` document."""
    return _xml(parameters_model(parameters))
