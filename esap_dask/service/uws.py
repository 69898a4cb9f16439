"""The UWS 1.1 resource tree at ``/uws/jobs``, over :class:`~esap_dask.service.jobs.JobService`.

Responses are UWS XML (``application/xml``) for the job list, a job, its
results and parameters; plain text for the single-valued resources (phase,
executionduration, destruction, error, quote, owner). Every POST and DELETE
answers 303 See Other: to the job after a change, to the job list after a
deletion.
"""

# No `from __future__ import annotations`: FastAPI must see the local `User` alias.

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import (
    FileResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from esap_dask.service import uwsxml
from esap_dask.service.db import JobRow
from esap_dask.service.jobs import BadRequest, JobService, NotFound
from esap_dask.service.stores import BadKey, parse_range, read_blocks

__all__ = ["make_router"]

XML = "application/xml"
_WAITING = ("PENDING", "QUEUED", "EXECUTING")
_FORM_BODY = {
    "requestBody": {
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "pipeline": {"type": "string", "description": "pipeline name"},
                        "facility": {"type": "string", "description": "facility (default local)"},
                        "observations": {
                            "type": "string",
                            "description": "glob, list, obs-index file or A..B",
                        },
                        "PHASE": {"type": "string", "enum": ["RUN"]},
                        "RUNID": {"type": "string"},
                    },
                    "additionalProperties": {"type": "string"},
                }
            }
        },
        "required": False,
    }
}


def _form_body(field: str, description: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {field: {"type": "string", "description": description}},
        "required": [field],
    }
    return {
        "requestBody": {
            "content": {"application/x-www-form-urlencoded": {"schema": schema}},
            "required": True,
        }
    }


async def _pairs(request: Request) -> list[tuple[str, str]]:
    form = await request.form()
    return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]


async def _one(request: Request, name: str) -> str:
    values = [v for k, v in await _pairs(request) if k.upper() == name]
    if len(values) != 1:
        raise BadRequest(f"give the form field {name} exactly once (got {len(values)})")
    return values[0]


def _xml(body: bytes) -> Response:
    return Response(body, media_type=XML)


def make_router(service: JobService, user: Any) -> APIRouter:
    """The ``/uws`` router; ``user`` is the dependency naming the authenticated user."""
    router = APIRouter(prefix="/uws", tags=["UWS 1.1"])
    User = Annotated[str, Depends(user)]

    def job_url(request: Request, job_id: str) -> str:
        return str(request.url_for("get_job", job_id=job_id))

    def see(request: Request, job_id: str | None = None) -> RedirectResponse:
        target = job_url(request, job_id) if job_id else str(request.url_for("list_jobs"))
        return RedirectResponse(target, status_code=303)

    def document(request: Request, row: JobRow) -> bytes:
        return uwsxml.job_document(row, service.results(row, job_url(request, row.id)))

    @router.get(
        "/jobs", name="list_jobs", response_class=Response, responses={200: {"content": {XML: {}}}}
    )
    def list_jobs(
        request: Request,
        owner: User,
        PHASE: Annotated[list[str] | None, Query(description="repeatable phase filter")] = None,
        AFTER: Annotated[str | None, Query(description="created after (ISO-8601)")] = None,
        LAST: Annotated[str | None, Query(description="the N most recent jobs")] = None,
    ) -> Response:
        """The caller's jobs (UWS ``uws:jobs``), filtered by PHASE, AFTER and LAST."""
        rows = service.list_jobs(owner, PHASE or [], AFTER, LAST)
        return _xml(uwsxml.jobs_document(rows, str(request.url_for("list_jobs"))))

    @router.post(
        "/jobs",
        status_code=303,
        openapi_extra=_FORM_BODY,
        responses={303: {"description": "See Other: the new job"}},
    )
    async def create_job(request: Request, owner: User) -> RedirectResponse:
        """Create a job from UWS parameters; ``PHASE=RUN`` runs it at once."""
        pairs = await _pairs(request)
        row = await run_in_threadpool(service.create, owner, pairs)
        return see(request, row.id)

    @router.get(
        "/jobs/{job_id}",
        name="get_job",
        response_class=Response,
        responses={200: {"content": {XML: {}}}},
    )
    async def get_job(
        request: Request,
        job_id: str,
        owner: User,
        WAIT: Annotated[str | None, Query(description="block up to N s (-1: max)")] = None,
        PHASE: Annotated[str | None, Query(description="wait only while in PHASE")] = None,
    ) -> Response:
        """The job (UWS ``uws:job``); with WAIT, block until its phase changes."""
        row = await run_in_threadpool(service.get, owner, job_id)
        if WAIT is not None:
            row = await _wait(service, owner, row, WAIT, PHASE)
        return _xml(await run_in_threadpool(document, request, row))

    @router.delete(
        "/jobs/{job_id}",
        status_code=303,
        responses={303: {"description": "See Other: the job list"}},
    )
    def delete_job(request: Request, job_id: str, owner: User) -> RedirectResponse:
        """Destroy the job and its results."""
        service.delete(owner, job_id)
        return see(request)

    @router.post("/jobs/{job_id}", status_code=303, openapi_extra=_form_body("ACTION", "DELETE"))
    async def post_job(request: Request, job_id: str, owner: User) -> RedirectResponse:
        """``ACTION=DELETE``: destroy the job (for clients that cannot send DELETE)."""
        action = await _one(request, "ACTION")
        if action.upper() != "DELETE":
            raise BadRequest(f"ACTION={action!r}: only ACTION=DELETE is defined")
        await run_in_threadpool(service.delete, owner, job_id)
        return see(request)

    @router.get("/jobs/{job_id}/phase", response_class=PlainTextResponse)
    def get_phase(job_id: str, owner: User) -> str:
        """The job's phase."""
        return service.get(owner, job_id).phase

    @router.post(
        "/jobs/{job_id}/phase", status_code=303, openapi_extra=_form_body("PHASE", "RUN or ABORT")
    )
    async def post_phase(request: Request, job_id: str, owner: User) -> RedirectResponse:
        """``PHASE=RUN`` or ``PHASE=ABORT``; 403 when the job's phase does not allow it."""
        value = await _one(request, "PHASE")
        await run_in_threadpool(service.set_phase, owner, job_id, value)
        return see(request, job_id)

    @router.get("/jobs/{job_id}/executionduration", response_class=PlainTextResponse)
    def get_execution_duration(job_id: str, owner: User) -> str:
        """Seconds the job may execute before it is aborted."""
        return str(service.get(owner, job_id).execution_duration)

    @router.post(
        "/jobs/{job_id}/executionduration",
        status_code=303,
        openapi_extra=_form_body("EXECUTIONDURATION", "seconds"),
    )
    async def post_execution_duration(
        request: Request, job_id: str, owner: User
    ) -> RedirectResponse:
        """Change the execution duration (only while PENDING)."""
        value = await _one(request, "EXECUTIONDURATION")
        await run_in_threadpool(service.set_execution_duration, owner, job_id, value)
        return see(request, job_id)

    @router.get("/jobs/{job_id}/destruction", response_class=PlainTextResponse)
    def get_destruction(job_id: str, owner: User) -> str:
        """When the job and its results will be destroyed (ISO-8601, UTC)."""
        return _iso(service.get(owner, job_id), "destruction")

    @router.post(
        "/jobs/{job_id}/destruction",
        status_code=303,
        openapi_extra=_form_body("DESTRUCTION", "ISO-8601 instant"),
    )
    async def post_destruction(request: Request, job_id: str, owner: User) -> RedirectResponse:
        """Change the destruction instant."""
        value = await _one(request, "DESTRUCTION")
        await run_in_threadpool(service.set_destruction, owner, job_id, value)
        return see(request, job_id)

    @router.get("/jobs/{job_id}/error", response_class=PlainTextResponse)
    def get_error(job_id: str, owner: User) -> str:
        """The full error message of an ERROR or ABORTED job (empty otherwise)."""
        return service.get(owner, job_id).error_message or ""

    @router.get("/jobs/{job_id}/quote", response_class=PlainTextResponse)
    def get_quote(job_id: str, owner: User) -> str:
        """When the job is expected to end: unknown, so empty."""
        service.get(owner, job_id)
        return ""

    @router.get("/jobs/{job_id}/owner", response_class=PlainTextResponse)
    def get_owner(job_id: str, owner: User) -> str:
        """The job's owner."""
        return service.get(owner, job_id).owner

    @router.get(
        "/jobs/{job_id}/parameters",
        response_class=Response,
        responses={200: {"content": {XML: {}}}},
    )
    def get_parameters(job_id: str, owner: User) -> Response:
        """The job's parameters (UWS ``uws:parameters``)."""
        return _xml(uwsxml.parameters_document(service.get(owner, job_id).parameters))

    @router.post("/jobs/{job_id}/parameters", status_code=303, openapi_extra=_FORM_BODY)
    async def post_parameters(request: Request, job_id: str, owner: User) -> RedirectResponse:
        """Add or replace parameters (only while PENDING)."""
        pairs = await _pairs(request)
        await run_in_threadpool(service.set_parameters, owner, job_id, pairs)
        return see(request, job_id)

    @router.get(
        "/jobs/{job_id}/results", response_class=Response, responses={200: {"content": {XML: {}}}}
    )
    def get_results(request: Request, job_id: str, owner: User) -> Response:
        """The job's results (UWS ``uws:results``)."""
        row = service.get(owner, job_id)
        return _xml(uwsxml.results_document(service.results(row, job_url(request, job_id))))

    @router.get("/jobs/{job_id}/results/store", response_class=FileResponse)
    def get_store(job_id: str, owner: User) -> FileResponse:
        """The job's Zarr store as a zip archive."""
        store = service.store(service.get(owner, job_id))
        if not store.exists():
            raise NotFound(f"job {job_id} has no store yet; wait until it ran")
        fd, name = tempfile.mkstemp(suffix=".zip")
        os.close(fd)
        try:
            store.write_zip(Path(name))
        except BaseException:
            os.unlink(name)
            raise
        return FileResponse(
            name,
            media_type="application/zip",
            filename=f"{job_id}.zarr.zip",
            background=BackgroundTask(os.unlink, name),
        )

    @router.api_route(
        "/jobs/{job_id}/results/store/{key:path}",
        methods=["GET", "HEAD"],
        response_class=Response,
        responses={206: {"description": "Partial Content (a Range request)"}},
    )
    def get_store_key(request: Request, job_id: str, key: str, owner: User) -> Response:
        """One key of the job's Zarr store, read-only: the store opens over HTTP.

        ``xr.open_zarr(f"{job_url}/results/store", storage_options={"headers": ...})``
        reads the consolidated metadata from ``zarr.json``, then the chunks it needs;
        a missing key is 404 (zarr reads it as the fill value). ``Range: bytes=...``
        (one range) gives 206 Partial Content.
        """
        store = service.store(service.get(owner, job_id))
        try:
            found = store.key(key)
        except BadKey as err:
            raise BadRequest(f"job {job_id}'s store: {err}") from None
        if found is None:
            raise NotFound(f"job {job_id}'s store has no key {key!r}")
        fs, path, size = found
        media = "application/json" if key.endswith(".json") else "application/octet-stream"
        return _stream(request, fs, path, size, media)

    @router.get("/jobs/{job_id}/results/{result_id}", response_class=FileResponse)
    def get_result(request: Request, job_id: str, result_id: str, owner: User) -> Response:
        """One result: provenance (PROV-JSON), log, ledger or summary."""
        row = service.get(owner, job_id)
        if result_id == "provenance":
            prov = service.limits.shown_provenance(row, service.store(row).provenance())
            if prov is not None:
                return _stream(request, *prov, "application/json")
        if result_id == "ledger":
            path = service.ledger_result(row)
        else:
            path = service.result_path(row, result_id)
        if path is None:
            ids = ", ".join(r["id"] for r in service.results(row, "")) or "none yet"
            raise NotFound(f"job {job_id} has no result {result_id!r} (its results: {ids})")
        media = "text/plain" if result_id == "log" else "application/json"
        return FileResponse(path, media_type=media)

    return router


def _iso(row: JobRow, name: str) -> str:
    t = row.time(name)
    return "" if t is None else t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _wait(
    service: JobService, owner: str, row: JobRow, wait: str, phase: str | None
) -> JobRow:
    try:
        seconds = float(int(wait))
    except ValueError:
        raise BadRequest(
            f"WAIT={wait!r} is not an integer number of seconds (-1: the "
            "longest the service allows)"
        ) from None
    limit = service.config.max_wait
    seconds = limit if seconds < 0 else min(seconds, limit)
    start_phase = row.phase
    if start_phase not in _WAITING or (phase and phase.upper() != start_phase) or seconds <= 0:
        return row
    # Woken at once by this instance's phase changes; the database is read again every
    # second for changes made by another instance of the service.
    deadline = asyncio.get_running_loop().time() + seconds
    fut = service.events.register(row.id)
    try:
        while True:
            row = await run_in_threadpool(service.get, owner, row.id)
            remaining = deadline - asyncio.get_running_loop().time()
            if row.phase != start_phase or fut.done() or remaining <= 0:
                return row
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), timeout=min(remaining, 1.0))
    finally:
        service.events.unregister(row.id, fut)


def _stream(request: Request, fs: Any, path: str, size: int, media_type: str) -> Response:
    """A file of ``size`` bytes on ``fs``, streamed in bounded blocks; HEAD and one Range."""
    headers = {"Accept-Ranges": "bytes"}
    try:
        span = parse_range(request.headers.get("range"), size)
    except ValueError as err:
        return PlainTextResponse(
            str(err), status_code=416, headers={"Content-Range": f"bytes */{size}"}
        )
    start, stop = span or (0, size)
    status = 206 if span else 200
    if span:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        read_blocks(fs, path, start, stop - start),
        status_code=status,
        headers=headers,
        media_type=media_type,
    )
