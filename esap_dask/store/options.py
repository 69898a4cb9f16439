"""A store's fsspec ``storage_options``: given, or the facility's, completed from the environment.

One place decides the options a run opens its store with, for the driver and for every
worker (the workers receive them with the run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["storage_options_for"]


def storage_options_for(
    store: str, facility: str = "local", given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The fsspec ``storage_options`` a run uses for ``store`` (a path or a URL).

    For a URL store: ``given`` when not None, else the facility's option
    ``storage_options`` (``esap.facilities.<name>.storage_options`` in
    ``dask.config`` works too); for ``s3://`` stores completed from the
    environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``), so
    that workers which share no environment with the driver (grid jobs) receive
    them with the run, over the cluster's (TLS) connection. A local store: ``given``.
    """
    if "://" not in store or store.startswith("file://"):
        return dict(given or {})
    if given is not None:
        opts = dict(given)
    else:
        # pydantic (the facility schema) is imported only for URL stores: 0.09 s
        from esap_dask.catalogs.facilities import FacilityError, load_facility

        try:
            opts = dict(load_facility(facility).options.get("storage_options") or {})
        except FacilityError:
            opts = {}
    if store.startswith(("s3://", "s3a://")):
        env = os.environ
        own = {"key", "secret", "anon", "profile"} & set(opts)
        if not own and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            opts["key"], opts["secret"] = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
            if env.get("AWS_SESSION_TOKEN"):
                opts["token"] = env["AWS_SESSION_TOKEN"]
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        client_kwargs = dict(opts.get("client_kwargs") or {})
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in opts:
            opts["client_kwargs"] = {**client_kwargs, "endpoint_url": endpoint}
    return opts
