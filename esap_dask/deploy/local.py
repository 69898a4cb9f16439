"""The ``local`` facility: a :class:`distributed.LocalCluster` on this machine.

Like every cluster esap-dask starts, it speaks TLS by default, with a CA made for
this cluster alone: on a shared machine (a login node, the job service's host) a
plain-TCP scheduler would take work from any local user's client, as the
cluster's owner. ``tls: false`` in the facility's options turns TLS off.
"""

from __future__ import annotations

import shutil
import weakref
from typing import Any

from distributed import LocalCluster

from esap_dask.deploy.tls import new_cluster_security, security_directory
from esap_dask.facilities import Facility

_DEFAULTS: dict[str, Any] = {"dashboard_address": "127.0.0.1:0", "host": "127.0.0.1"}


def open_local(facility: Facility, options: dict[str, Any]) -> LocalCluster:
    """Start a LocalCluster from the facility's options (any LocalCluster keyword, and ``tls``).

    The dashboard and the scheduler listen on loopback unless the facility says
    otherwise; ``n_workers`` and ``threads_per_worker`` default to one
    single-threaded worker process per core. The TLS credentials live in a
    private (0700) directory removed with the cluster.
    """
    kwargs = {**_DEFAULTS, **options}
    kwargs.setdefault("threads_per_worker", 1)
    if not kwargs.pop("tls", True) or kwargs.get("security") is not None:
        return LocalCluster(**kwargs)
    security = new_cluster_security()
    kwargs.update(security=security, protocol="tls://")
    cluster = LocalCluster(**kwargs)
    folder = security_directory(security)
    if folder is not None:
        weakref.finalize(cluster, shutil.rmtree, folder, True)
    return cluster
