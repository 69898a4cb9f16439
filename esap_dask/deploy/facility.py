"""A facility as the cluster managers see it: its type, runtime engine and options.

The catalog (:mod:`esap_dask.catalogs.facilities`) reads facilities from YAML files and
dispatches each to its manager here in :mod:`esap_dask.deploy`; the managers own the type
they receive, so that nothing in ``deploy`` imports the catalog above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FACILITY_TYPES", "RUNTIME_ENGINES", "Facility", "FacilityError"]

FACILITY_TYPES = ("local", "slurm", "pbs", "sge", "htcondor", "lsf", "ssh", "dirac")
RUNTIME_ENGINES = ("none", "apptainer", "singularity", "docker", "podman")


class FacilityError(ValueError):
    """A facility is unknown or its YAML file is invalid."""


@dataclass(frozen=True)
class Facility:
    """One entry of the facility catalog.

    Attributes
    ----------
    name
        The catalog name, as given to
        :func:`~esap_dask.catalogs.facilities.open_cluster` and ``--facility``.
    facilitytype
        One of :data:`FACILITY_TYPES`; selects the cluster manager.
    runtimeengine
        One of :data:`RUNTIME_ENGINES`; how workers are wrapped in a container.
    options
        Cluster-manager options, already merged with ``dask.config``.
    path
        The YAML file it came from (``None`` for facilities built in code).
    """

    name: str
    facilitytype: str
    description: str = ""
    url: str = ""
    runtimeengine: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def as_record(self) -> dict[str, Any]:
        """The ESAP ``batch.facility`` record: name, description, url, type, runtime."""
        return {
            "name": self.name,
            "description": self.description,
            "url": self.url,
            "facilitytype": self.facilitytype,
            "runtimeengine": self.runtimeengine,
        }
