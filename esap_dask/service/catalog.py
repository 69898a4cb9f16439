"""Catalog endpoints for ESAP: facilities (``batch.facility``) and workflows (``batch.workflow``).

The records are those of :meth:`esap_dask.Facility.as_record` and
:meth:`esap_dask.Pipeline.describe` (name, description, version, parameters with
type, default, description and constraints, output schema), plus the UWS
parameters a job needs to run the workflow.
"""

# No `from __future__ import annotations`: FastAPI must see the local `User` alias.

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from esap_dask.catalogs.facilities import ready_facilities
from esap_dask.catalogs.workflows import list_pipelines
from esap_dask.service.jobs import NotFound
from esap_dask.service.params import RESERVED, JobParameterError, catalog_pipeline

__all__ = ["make_router", "workflow_record"]

_SERVICE_PARAMETERS = [
    {"name": "pipeline", "type": "str", "description": "the workflow's name"},
    {
        "name": "facility",
        "type": "str",
        "default": "local",
        "description": "where the workflow runs (see /esap/facilities)",
    },
    {
        "name": "observations",
        "type": "str",
        "description": "a glob, a list (comma or newline separated, or repeated), a GADF "
        "obs-index file, or a run-number range A..B",
    },
]


def workflow_record(name: str) -> dict[str, Any]:
    """The ESAP workflow record of a pipeline, with the job's service parameters."""
    record = catalog_pipeline(name).describe()
    record["workflowtype"] = "esap-dask"
    record["service_parameters"] = _SERVICE_PARAMETERS
    record["reserved"] = list(RESERVED)
    return record


def make_router(user: Any) -> APIRouter:
    """The ``/esap`` router (authenticated like the rest of the service)."""
    router = APIRouter(prefix="/esap", tags=["ESAP catalog"])
    User = Annotated[str, Depends(user)]

    @router.get("/facilities")
    def facilities(_: User) -> list[dict[str, Any]]:
        """Every facility jobs can run on (ESAP ``batch.facility`` records; no templates)."""
        return [f.as_record() for f in ready_facilities()]

    @router.get("/workflows")
    def workflows(_: User) -> list[dict[str, Any]]:
        """Every pipeline with its parameters (ESAP ``batch.workflow`` records)."""
        return [workflow_record(p.name) for p in list_pipelines()]

    @router.get("/workflows/{name}")
    def workflow(name: str, _: User) -> dict[str, Any]:
        """One pipeline's record."""
        try:
            return workflow_record(name)
        except JobParameterError as err:
            raise NotFound(str(err)) from None

    return router
