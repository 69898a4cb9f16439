"""The facilities in JupyterLab's Dask extension (dask-labextension): its cluster factory.

dask-labextension's "NEW" button starts a cluster by calling the class named in the Dask
configuration ``labextension.factory`` (``module``, ``class``, ``args``, ``kwargs``) with
``asynchronous=True`` and awaiting what it returns; it then scales, adapts and closes it
(``await cluster.close()``). :func:`facility_cluster` is that factory for the facility
catalog: it opens the facility named in its first argument, else in the Dask configuration
``esap.labextension.facility`` (environment ``DASK_ESAP__LABEXTENSION__FACILITY``), else
``local``, as :func:`esap_dask.open_cluster` would, but asynchronous.

The YAML to drop into ``~/.config/dask/`` (see ``docs/notebooks.md``)::

    labextension:
      factory:
        module: esap_dask.catalogs.labextension
        class: facility_cluster
        args: []
        kwargs: {}
    esap:
      labextension:
        facility: slurm

A cluster of a TLS facility (every one unless it says ``tls: false``) takes only clients
that present its credentials: :func:`lab_client` connects a notebook's client to a
cluster started from the launcher by its address (the launcher's own client snippet,
``Client("tls://...")``, has no credentials), reading the credentials that
:func:`facility_cluster` recorded for it in the user's private runtime directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

import dask.config

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask.catalogs.facilities import FacilityError, open_cluster

__all__ = ["CONFIG_KEY", "facility_cluster", "lab_client", "lab_facility", "lab_security"]

#: The Dask configuration key that names the launcher's facility.
CONFIG_KEY = "esap.labextension.facility"


def lab_facility() -> str:
    """The facility the launcher opens: ``esap.labextension.facility``, default ``local``."""
    return str(dask.config.get(CONFIG_KEY, default=None) or "local")


def _registry() -> Path:
    """The private directory where launcher clusters' credential paths are recorded."""
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    folder = Path(base) / "esap-dask" / "labextension"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _record(address: str) -> Path:
    return _registry() / (hashlib.sha256(address.encode()).hexdigest()[:16] + ".json")


def facility_cluster(
    facility: str | None = None, /, *, asynchronous: bool = False, **overrides: Any
) -> Any:
    """Open a facility's cluster for dask-labextension (its ``labextension.factory``).

    Parameters
    ----------
    facility
        A facility of the catalog; default: Dask config ``esap.labextension.facility``,
        else ``local``.
    asynchronous
        dask-labextension passes True and awaits the cluster, which starts then.
    **overrides
        Cluster options over the facility's (the factory's ``kwargs``).

    Returns
    -------
    distributed.deploy.Cluster
        The facility's cluster manager; with ``asynchronous``, awaitable (it starts
        when awaited), and its TLS credentials recorded for :func:`lab_client`.
    """
    name = facility or lab_facility()
    try:
        cluster = open_cluster(name, asynchronous=asynchronous, **overrides)
    except FacilityError as err:
        raise FacilityError(
            f"{err} (the JupyterLab Dask launcher opens the facility of Dask config "
            f"{CONFIG_KEY} or DASK_ESAP__LABEXTENSION__FACILITY)"
        ) from err
    if not asynchronous:
        _remember(cluster)
        return cluster
    return _Started(cluster)


def _remember(cluster: Any) -> None:
    """Record the TLS credential paths of a started ``cluster`` under its address."""
    security = getattr(cluster, "security", None)
    address = getattr(cluster, "scheduler_address", "")
    if security is None or not str(address).startswith("tls://"):
        return
    paths = {
        "address": address,
        "ca_file": security.tls_ca_file,
        "cert": security.tls_client_cert,
        "key": security.tls_client_key,
    }
    record = _record(address)
    with open(os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(paths, f)
    weakref.finalize(cluster, _forget, record)


def _forget(record: Path) -> None:
    with contextlib.suppress(OSError):
        record.unlink()


class _Started:
    """An asynchronous cluster that records its credentials once started (awaitable)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> Any:
        cluster = await self.cluster
        _remember(cluster)
        return cluster


def lab_security(address: str) -> Any:
    """The ``distributed.Security`` of the launcher cluster at ``address``.

    Raises
    ------
    FacilityError
        No cluster started by :func:`facility_cluster` on this machine has that address
        (it was closed, or started elsewhere).
    """
    from distributed.security import Security

    record = _record(address)
    try:
        paths = json.loads(record.read_text())
    except OSError:
        raise FacilityError(
            f"no cluster started from the JupyterLab Dask launcher listens at {address}: "
            "check the address in the launcher's cluster panel (a cluster that was closed "
            "is forgotten)"
        ) from None
    return Security(
        tls_ca_file=paths["ca_file"],
        tls_client_cert=paths["cert"],
        tls_client_key=paths["key"],
        require_encryption=True,
    )


def lab_client(address: str, **kwargs: Any) -> Any:
    """A ``distributed.Client`` on the launcher cluster at ``address``, with its credentials.

    Examples
    --------
    >>> client = lab_client("tls://127.0.0.1:38407")  # the panel's address  # doctest: +SKIP
    """
    from distributed import Client

    security = lab_security(address) if address.startswith("tls://") else None
    return Client(address, security=security, **kwargs)
