"""The ``local`` facility: a :class:`distributed.LocalCluster` on this machine."""

from __future__ import annotations

from typing import Any

from distributed import LocalCluster

from esap_dask.facilities import Facility

_DEFAULTS: dict[str, Any] = {"dashboard_address": "127.0.0.1:0", "host": "127.0.0.1"}


def open_local(facility: Facility, options: dict[str, Any]) -> LocalCluster:
    """Start a LocalCluster from the facility's options (any LocalCluster keyword).

    The dashboard and the scheduler listen on loopback unless the facility says
    otherwise; ``n_workers`` and ``threads_per_worker`` default to one
    single-threaded worker process per core.
    """
    kwargs = {**_DEFAULTS, **options}
    kwargs.setdefault("threads_per_worker", 1)
    return LocalCluster(**kwargs)
