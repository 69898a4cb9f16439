# ruff: noqa: E501 - the HTML templates keep their lines whole
"""A small server-rendered web page: the job list, a job's detail, a submission form.

Plain HTML from Jinja2 templates (autoescaped), no JavaScript and no build step.
Authentication is the service's: the browser sends ``Authorization`` (HTTP Basic
with the token as password, which browsers prompt for, or a bearer token set by
a proxy); a job of another user is not found.

:func:`security_headers` (a middleware of the whole application) forbids framing,
MIME sniffing and referrers on every response, and gives every response but the
OpenAPI browsers (``/docs``, ``/redoc``, which load their scripts) a Content-Security-Policy
that allows nothing but this page's own style sheet (by its hash) and forms posted
back to the service.
"""

# No `from __future__ import annotations`: FastAPI must see the local `User` alias.

import base64
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import DictLoader, Environment, select_autoescape
from starlette.concurrency import run_in_threadpool

from esap_dask.catalogs.facilities import ready_facilities
from esap_dask.catalogs.workflows import list_pipelines
from esap_dask.service.jobs import JobService

__all__ = ["CONTENT_SECURITY_POLICY", "make_router", "security_headers"]

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}{% endblock %} · esap-dask</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3em .5em;
text-align:left}.phase{font-weight:bold}.COMPLETED{color:#070}.ERROR,.ABORTED{color:#a00}
.EXECUTING,.QUEUED{color:#a60}pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}
label{display:block;margin:.4em 0}input,select{min-width:20em;max-width:40em}
form.inline{display:inline}
</style></head><body>
<p><a href="{{ root }}">jobs</a> · <a href="{{ root }}docs">API</a> · signed in as <b>{{ user }}</b></p>
{% block body %}{% endblock %}</body></html>"""

_INDEX = """{% extends "base" %}{% block title %}Jobs{% endblock %}{% block body %}
<h1>Your jobs</h1>
<table id="jobs"><tr><th>job</th><th>pipeline</th><th>facility</th><th>phase</th><th>created</th></tr>
{% for job in jobs %}<tr>
<td><a href="{{ root }}web/jobs/{{ job.id }}">{{ job.run_id or job.id }}</a></td>
<td>{{ job.parameters.get("pipeline", "") }}</td><td>{{ job.parameters.get("facility", "local") }}</td>
<td class="phase {{ job.phase }}">{{ job.phase }}</td><td>{{ iso(job.creation_time) }}</td></tr>
{% else %}<tr><td colspan="5">no jobs yet</td></tr>{% endfor %}</table>
<h2>Submit a pipeline</h2>
{% if error %}<p class="ERROR" id="error">{{ error }}</p>{% endif %}
<form method="post" action="{{ root }}web/jobs" id="submit">
<label>pipeline <select name="pipeline">{% for p in pipelines %}
<option value="{{ p.name }}" title="{{ p.description }}">{{ p.name }} {{ p.version }}</option>{% endfor %}
</select></label>
<label>facility <select name="facility">{% for f in facilities %}
<option value="{{ f.name }}"{% if f.name == "local" %} selected{% endif %}>{{ f.name }}</option>{% endfor %}
</select></label>
<label>observations <input name="observations" placeholder="runs/*.fits.gz, a list, or 1..10" required></label>
<label>run id <input name="RUNID"></label>
<label>parameters (one <code>name=value</code> a line)<br><textarea name="params" rows="3" cols="50"></textarea></label>
<button type="submit">Run</button></form>
{% endblock %}"""

_JOB = """{% extends "base" %}{% block title %}Job {{ job.id }}{% endblock %}{% block body %}
<h1>Job {{ job.run_id or job.id }}</h1>
<p>phase: <span class="phase {{ job.phase }}" id="phase">{{ job.phase }}</span>
· created {{ iso(job.creation_time) }} · started {{ iso(job.start_time) }} · ended {{ iso(job.end_time) }}
· <a href="{{ root }}uws/jobs/{{ job.id }}">UWS document</a></p>
<h2>Parameters</h2><table id="parameters">{% for k, v in job.parameters.items() %}
<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Results</h2><ul id="results">{% for r in results %}
<li><a href="{{ r.href }}">{{ r.id }}</a> ({{ r.mime_type }})</li>{% else %}<li>none yet</li>{% endfor %}</ul>
{% if job.error_message %}<h2>Error</h2><pre id="error">{{ job.error_message }}</pre>{% endif %}
<p>{% if job.phase in ("PENDING", "QUEUED", "EXECUTING") %}<form method="post" action="{{ root }}web/jobs/{{ job.id }}/abort" class="inline"><button id="abort">Abort</button></form>{% endif %}
<form method="post" action="{{ root }}web/jobs/{{ job.id }}/delete" class="inline"><button id="delete">Delete job and results</button></form></p>
{% endblock %}"""

_STYLE = _BASE.split("<style>", 1)[1].split("</style>", 1)[0]
#: The page's policy: its one style sheet, forms to itself, nothing else (no script at all).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with
    # the page's own form POST, and the cross-origin check then refuses it
    "Referrer-Policy": "same-origin",
}
#: The OpenAPI browsers load FastAPI's scripts and styles: no page policy there.
_OPENAPI_PAGES = ("/docs", "/redoc")


async def security_headers(request: Request, call_next: Any) -> Response:
    """A middleware: the security headers above on every response."""
    response: Response = await call_next(request)
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.url.path.startswith(_OPENAPI_PAGES):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


_env = Environment(
    loader=DictLoader({"base": _BASE, "index": _INDEX, "job": _JOB}),
    autoescape=select_autoescape(default=True),
)


def _iso(t: Any) -> str:
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M:%SZ")


def make_router(service: JobService, user: Any) -> APIRouter:
    """The web page router (``/`` and ``/web/...``)."""
    router = APIRouter(tags=["web page"], include_in_schema=False)
    User = Annotated[str, Depends(user)]

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        root = str(request.url_for("index"))
        html = _env.get_template(name).render(root=root, iso=_iso, **context)
        return HTMLResponse(html, status_code=status)

    def index_page(
        request: Request, owner: str, error: str = "", status: int = 200
    ) -> HTMLResponse:
        jobs = service.list_jobs(owner, [], None, None)
        return render(
            request,
            "index",
            status,
            user=owner,
            jobs=jobs,
            error=error,
            pipelines=list_pipelines(),
            facilities=ready_facilities(),
        )

    @router.get("/", name="index", response_class=HTMLResponse)
    def index(request: Request, owner: User) -> HTMLResponse:
        """The job list and the submission form."""
        return index_page(request, owner)

    @router.get("/web/jobs/{job_id}", name="web_job", response_class=HTMLResponse)
    def job(request: Request, job_id: str, owner: User) -> HTMLResponse:
        """One job: phase, parameters, results, error."""
        row = service.get(owner, job_id)
        base = str(request.url_for("get_job", job_id=job_id))
        return render(request, "job", user=owner, job=row, results=service.results(row, base))

    @router.post("/web/jobs", response_class=HTMLResponse)
    async def submit(request: Request, owner: User) -> Any:
        """Create and run a job from the form."""
        form = await request.form()
        pairs = [
            (k, str(v))
            for k, v in form.multi_items()
            if k != "params" and isinstance(v, str) and v.strip()
        ]
        for line in str(form.get("params") or "").splitlines():
            if line.strip():
                name, _, value = line.partition("=")
                pairs.append((name.strip(), value.strip()))
        pairs.append(("PHASE", "RUN"))
        from esap_dask.service.jobs import BadRequest

        try:
            row = await run_in_threadpool(service.create, owner, pairs)
        except BadRequest as err:
            return await run_in_threadpool(index_page, request, owner, str(err), 400)
        return RedirectResponse(str(request.url_for("web_job", job_id=row.id)), status_code=303)

    @router.post("/web/jobs/{job_id}/abort")
    def abort(request: Request, job_id: str, owner: User) -> RedirectResponse:
        """Abort the job (its finished observations stay in its store)."""
        service.set_phase(owner, job_id, "ABORT")
        return RedirectResponse(str(request.url_for("web_job", job_id=job_id)), status_code=303)

    @router.post("/web/jobs/{job_id}/delete")
    def delete(request: Request, job_id: str, owner: User) -> RedirectResponse:
        """Destroy the job and its results."""
        service.delete(owner, job_id)
        return RedirectResponse(str(request.url_for("index")), status_code=303)

    return router
