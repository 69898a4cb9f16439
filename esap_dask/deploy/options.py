"""Facility options are checked by name before a cluster starts.

A misspelt option (``n_worker: 2``) would otherwise travel to a worker process
and fail there, minutes later on a batch system, as a long traceback ("Nanny
failed to start"). :func:`check_options` refuses it up front with a
:class:`~esap_dask.deploy.facility.FacilityError` that names the option, the closest
accepted name, and where the option was set: the facility file, a Dask
configuration key or environment variable, or the ``open_cluster`` call.

Examples
--------
>>> from esap_dask.deploy.facility import Facility
>>> check_options(Facility("local", "local"), {"n_worker": 2}, {"n_workers"}, "LocalCluster's")
Traceback (most recent call last):
...
esap_dask.deploy.facility.FacilityError: facility 'local': unknown option 'n_worker' (did you mean \
'n_workers'?), set in the open_cluster() call; the options are LocalCluster's keywords and \
esap-dask's (see docs/facilities/local.md)
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dask.config
import yaml

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask.deploy.facility import Facility, FacilityError

__all__ = ["check_options", "keywords", "option_source"]


def keywords(*functions: Callable[..., Any]) -> set[str]:
    """The names of the keyword parameters of ``functions`` (not ``self``, ``*args``, ``**kw``)."""
    names: set[str] = set()
    for function in functions:
        for p in inspect.signature(function).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                names.add(p.name)
    return names


def _in_file(facility: Facility, key: str) -> bool:
    if facility.path is None:
        return False
    try:
        record = yaml.safe_load(facility.path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    options = record.get("options") if isinstance(record, dict) else None
    return isinstance(options, dict) and key in options


def _env_name(facility: Facility, key: str) -> str | None:
    want = ["esap", "facilities", facility.name, key]

    def norm(parts: list[str]) -> list[str]:
        return [p.lower().replace("-", "_") for p in parts]

    for name in os.environ:
        if name.startswith("DASK_") and norm(name[5:].split("__")) == norm(want):
            return name
    return None


def option_source(facility: Facility, key: str) -> str:
    """Where the option ``key`` of ``facility`` was set, in words a user can act on."""
    sources = []
    if _in_file(facility, key):
        sources.append(str(facility.path))
    configured = dask.config.get(f"esap.facilities.{facility.name}", default=None) or {}
    if key in configured:
        env = _env_name(facility, key)
        if env:
            sources.append(f"the environment variable {env}")
        else:
            sources.append(
                f"the Dask config key esap.facilities.{facility.name}.{key} (a YAML file "
                f"in {dask.config.PATH}, or dask.config.set)"
            )
    return " and ".join(sources) or "the open_cluster() call"


def check_options(
    facility: Facility, options: Mapping[str, Any], accepted: Iterable[str], what: str
) -> None:
    """Raise FacilityError naming every option of ``options`` that is not in ``accepted``.

    Parameters
    ----------
    facility
        The facility the options belong to (its name, type and file go in the message).
    options
        The options as the cluster manager receives them.
    accepted
        Every name the cluster manager takes.
    what
        What takes the options, e.g. ``"LocalCluster's and Worker's"``.
    """
    known = sorted(set(accepted))
    unknown = sorted(set(options) - set(known))
    if not unknown:
        return
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown option {key!r}{hint}, set in {option_source(facility, key)}")
    raise FacilityError(
        f"facility {facility.name!r}: {'; '.join(problems)}; the options are {what} keywords "
        f"and esap-dask's (see docs/facilities/{_page(facility.facilitytype)}.md)"
    )


def _page(facilitytype: str) -> str:
    return "jobqueue" if facilitytype in ("pbs", "sge", "htcondor", "lsf") else facilitytype
