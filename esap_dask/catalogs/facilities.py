"""The facility catalog: where a run's Dask workers come from.

A facility is one YAML file in a catalog directory, in the shape of ESAP's
``batch.facility`` record plus the options of its cluster manager::

    name: slurm
    description: The local SLURM test cluster
    url: https://slurm.schedmd.com
    facilitytype: slurm        # local, slurm, pbs, sge, htcondor, lsf, ssh, dirac
    runtimeengine: none        # none, apptainer, singularity, docker, podman
    options:                   # passed to the cluster manager
      queue: debug
      cores: 1
      memory: 1GiB

Catalog directories are searched in this order (a later file of the same name
wins): the built-in ``clusters/`` of esap-dask, then each directory in the Dask
config key ``esap.facilities-path``, then ``~/.config/esap-dask/clusters``.

Options merge with Dask's configuration, so a site configures esap-dask the
Dask way: ``esap.facilities.<name>.<option>`` in a YAML file of the Dask config
directory, or ``DASK_ESAP__FACILITIES__SLURM__QUEUE=long`` in the environment.
Keyword arguments of :func:`open_cluster` win over both.

Cluster managers register per facility type in :data:`MANAGERS` as
``"module:function"`` strings, imported only when a facility of that type is
opened; the function takes ``(facility, options)`` and returns a started
``distributed.deploy.Cluster``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import dask.config
import yaml

from esap_dask.deploy.facility import FACILITY_TYPES, RUNTIME_ENGINES, Facility, FacilityError
from esap_dask.extras import FACILITY_EXTRAS, MissingExtra, require

__all__ = [
    "FACILITY_TYPES",
    "MANAGERS",
    "RUNTIME_ENGINES",
    "Facility",
    "FacilityError",
    "catalog_dirs",
    "list_facilities",
    "load_facility",
    "open_cluster",
]

#: facility type -> "module:function" of its cluster manager factory.
MANAGERS: dict[str, str] = {
    "local": "esap_dask.deploy.local:open_local",
    "slurm": "esap_dask.deploy.jobqueue:open_jobqueue",
    "pbs": "esap_dask.deploy.jobqueue:open_jobqueue",
    "sge": "esap_dask.deploy.jobqueue:open_jobqueue",
    "htcondor": "esap_dask.deploy.jobqueue:open_jobqueue",
    "lsf": "esap_dask.deploy.jobqueue:open_jobqueue",
    "ssh": "esap_dask.deploy.ssh:open_ssh",
    "dirac": "esap_dask.deploy.dirac.cluster:open_dirac",
}

_REQUIRED = ("name", "facilitytype")
_KNOWN_KEYS = {"name", "description", "url", "facilitytype", "runtimeengine", "options"}


def catalog_dirs() -> list[Path]:
    """The catalog directories, in search order (later ones override earlier ones)."""
    here = Path(__file__).resolve().parent.parent
    dirs = [
        here.parent / "clusters",  # a source checkout or editable install
        Path(sys.prefix) / "share" / "esap-dask" / "clusters",  # a wheel install
    ]
    extra = dask.config.get("esap.facilities-path") or []
    if isinstance(extra, str):
        extra = extra.split(os.pathsep)
    dirs += [Path(p).expanduser() for p in extra]
    dirs.append(Path("~/.config/esap-dask/clusters").expanduser())
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.append(d.resolve())
    return seen


def _parse(path: Path) -> Facility:
    try:
        record = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise FacilityError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(record, dict):
        raise FacilityError(f"{path}: expected a mapping with 'name' and 'facilitytype'")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise FacilityError(f"{path}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(record) - _KNOWN_KEYS)
    if unknown:
        raise FacilityError(
            f"{path}: unknown field(s) {', '.join(unknown)}; cluster options go under 'options:'"
        )
    ftype = record["facilitytype"]
    if ftype not in FACILITY_TYPES:
        raise FacilityError(
            f"{path}: facilitytype {ftype!r} is not one of {', '.join(FACILITY_TYPES)}"
        )
    engine = record.get("runtimeengine") or "none"
    if engine not in RUNTIME_ENGINES:
        raise FacilityError(
            f"{path}: runtimeengine {engine!r} is not one of {', '.join(RUNTIME_ENGINES)}"
        )
    options = record.get("options") or {}
    if not isinstance(options, dict):
        raise FacilityError(f"{path}: 'options' must be a mapping")
    return Facility(
        name=str(record["name"]),
        facilitytype=ftype,
        description=str(record.get("description", "")),
        url=str(record.get("url", "")),
        runtimeengine=engine,
        options=options,
        path=path,
    )


def _catalog() -> dict[str, Facility]:
    found: dict[str, Facility] = {}
    for d in catalog_dirs():
        for path in sorted(d.glob("*.yaml")):
            fac = _parse(path)
            found[fac.name] = fac
    return found


def list_facilities() -> list[Facility]:
    """All facilities of the catalog, sorted by name."""
    return sorted(_catalog().values(), key=lambda f: f.name)


def load_facility(name: str, /, **overrides: Any) -> Facility:
    """The facility called ``name``, its options merged with ``dask.config`` and ``overrides``.

    Raises
    ------
    FacilityError
        When no catalog file defines ``name``; the message lists the known ones.
    """
    catalog = _catalog()
    if name not in catalog:
        known = ", ".join(sorted(catalog)) or "none"
        dirs = ", ".join(str(d) for d in catalog_dirs()) or "none"
        raise FacilityError(
            f"unknown facility {name!r} (known: {known}); add a clusters/{name}.yaml "
            f"to one of the catalog directories ({dirs})"
        )
    fac = catalog[name]
    configured = dask.config.get(f"esap.facilities.{name}", default=None) or {}
    options = dask.config.merge(dict(fac.options), dict(configured), overrides)
    return Facility(
        name=fac.name,
        facilitytype=fac.facilitytype,
        description=fac.description,
        url=fac.url,
        runtimeengine=fac.runtimeengine,
        options=options,
        path=fac.path,
    )


def open_cluster(name: str = "local", /, **overrides: Any) -> Any:
    """Start the Dask cluster of facility ``name`` and return its cluster manager.

    Parameters
    ----------
    name
        A facility of the catalog (``esap-dask facilities`` lists them).
    **overrides
        Cluster options that win over the facility file and ``dask.config``.

    Examples
    --------
    >>> cluster = open_cluster("local", n_workers=2)   # doctest: +SKIP
    >>> client = distributed.Client(cluster)            # doctest: +SKIP
    """
    fac = load_facility(name, **overrides)
    target = MANAGERS[fac.facilitytype]
    module_name, func_name = target.split(":")
    try:
        if fac.facilitytype in FACILITY_EXTRAS:
            require(FACILITY_EXTRAS[fac.facilitytype], f"facility {name!r}")
        module = importlib.import_module(module_name)
    except MissingExtra as err:
        raise FacilityError(str(err)) from err
    except ModuleNotFoundError as err:
        raise FacilityError(
            f"facility {name!r}: the {fac.facilitytype} cluster manager is not available "
            f"({err}); install the extra it needs"
        ) from err
    factory = getattr(module, func_name)
    # Options of the store and of the job service, not of the cluster manager:
    store_keys = ("storage_options", "shared_filesystem")
    return factory(fac, {k: v for k, v in fac.options.items() if k not in store_keys})


def __getattr__(name: str) -> Any:
    if name == "storage_options_for":  # moved to the store, which owns its options
        import warnings

        warnings.warn(
            "esap_dask.facilities.storage_options_for moved to "
            "esap_dask.store.options.storage_options_for",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("esap_dask.store.options"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
