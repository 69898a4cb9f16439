"""The ``local`` facility: a :class:`distributed.LocalCluster` on this machine.

Like every cluster esap-dask starts, it speaks TLS by default, with a CA made for
this cluster alone: on a shared machine (a login node, the job service's host) a
plain-TCP scheduler would take work from any local user's client, as the
cluster's owner. ``tls: false`` in the facility's options turns TLS off.
"""

from __future__ import annotations

import shutil
import warnings
import weakref
from typing import Any

import dask.config
from distributed import LocalCluster, Nanny, Worker

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask.deploy.facility import Facility
from esap_dask.deploy.options import check_options, keywords
from esap_dask.deploy.tls import new_cluster_security, security_directory

__all__ = ["PlainTCPWarning", "local_keywords", "open_local"]

_DEFAULTS: dict[str, Any] = {"dashboard_address": "127.0.0.1:0", "host": "127.0.0.1"}


class PlainTCPWarning(UserWarning):
    """A cluster was opened without TLS: any local user can connect to its scheduler."""


def local_keywords(options: dict[str, Any] | None = None) -> set[str]:
    """The option names a ``local`` facility takes: LocalCluster's, its workers', and ``tls``.

    LocalCluster passes the keywords it does not know itself on to each worker (a
    Nanny and its Worker, or the ``worker_class`` the options name).
    """
    names = keywords(LocalCluster.__init__, Worker.__init__, Nanny.__init__) | {"tls"}
    worker_class = (options or {}).get("worker_class")
    if isinstance(worker_class, type):
        names |= keywords(worker_class)
    return names


def open_local(facility: Facility, options: dict[str, Any]) -> LocalCluster:
    """Start a LocalCluster from the facility's options (any LocalCluster keyword, and ``tls``).

    The dashboard and the scheduler listen on loopback unless the facility says
    otherwise; ``n_workers`` and ``threads_per_worker`` default to one
    single-threaded worker process per core. The TLS credentials live in a
    private (0700) directory removed with the cluster; ``cluster.security`` holds
    their paths, for ``Client(cluster.scheduler_address, security=cluster.security)``
    or a Security of the same files in another process of the same user.
    ``tls: false`` starts a plain-TCP cluster, with a :class:`PlainTCPWarning`.

    Raises
    ------
    FacilityError
        When an option is not a keyword of LocalCluster or of its workers (checked
        before anything starts; the message names the closest accepted name).
    """
    check_options(facility, options, local_keywords(options), "LocalCluster's and Worker's")
    kwargs = {**_DEFAULTS, **options}
    kwargs.setdefault("threads_per_worker", 1)
    if level := dask.config.get("esap.log-level"):  # the CLI's -v/-q; LocalCluster's: WARN
        kwargs.setdefault("silence_logs", str(level).upper())
    if kwargs.get("security") is not None:
        return LocalCluster(**kwargs)
    if not kwargs.pop("tls", True):
        cluster = LocalCluster(**kwargs)
        warnings.warn(
            f"facility {facility.name!r}: tls: false, so the scheduler at "
            f"{cluster.scheduler_address} speaks plain TCP and runs the work of any user "
            "of this machine who connects to it, as you; remove 'tls: false' on a shared "
            "machine",
            PlainTCPWarning,
            stacklevel=2,
        )
        return cluster
    security = new_cluster_security()
    kwargs.update(security=security, protocol="tls://")
    cluster = LocalCluster(**kwargs)
    folder = security_directory(security)
    if folder is not None:
        weakref.finalize(cluster, shutil.rmtree, folder, True)
    return cluster
