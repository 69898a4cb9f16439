"""A store's ledger as one pandas DataFrame: :func:`ledger` (``esap_dask.ledger``).

Examples
--------
>>> table = esap_dask.ledger("products.zarr")                    # doctest: +SKIP
>>> table[table.status == "failed"][["error_type", "error"]]     # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from esap_dask.engine.ledger import COLUMNS, STATUS_NAMES, committed_length, read_columns
from esap_dask.store import open_store, read

__all__ = ["ledger"]

#: The table's columns, in order (``seconds`` is computed from ``start`` and ``end``).
ORDER = (
    "status",
    "attempts",
    "error_type",
    "error",
    "traceback",
    "start",
    "end",
    "seconds",
    "worker",
    "run",
    "source",
    "fingerprint",
    "checksum",
    "params",
    "version",
)


def ledger(
    store: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """The ledger of ``store``: one row per observation, as a pandas DataFrame.

    Parameters
    ----------
    store
        The store's path or URL (``s3://bucket/run.zarr``, the job service's
        ``.../results/store``), of either layout (before or after the ledger moved
        into its ``ledger`` subgroup).
    storage_options
        fsspec options of a URL store (credentials, endpoint, HTTP headers).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``obs``; ``status`` is a categorical (``pending``, ``done``,
        ``failed``), ``attempts`` an integer, ``error_type``, ``error`` and
        ``traceback`` (its tail) the last failure (empty strings when none),
        ``start`` and ``end`` UTC timestamps (NaT when not processed), ``seconds`` the
        processing time, then ``worker``, ``run``, ``source``, ``fingerprint``,
        ``checksum``, ``params``, ``version``.

    Examples
    --------
    >>> table = ledger("products.zarr")                                   # doctest: +SKIP
    >>> table.status.value_counts()                                        # doctest: +SKIP
    >>> failed = table[table.status == "failed"]                           # doctest: +SKIP
    >>> print(failed.traceback.iloc[0])                                    # doctest: +SKIP
    """
    import pandas as pd

    group = open_store(os.fspath(store), storage_options=storage_options, mode="r")
    ids = read(group, "obs")
    n = committed_length(ids)
    cols = read_columns(group, [c.name for c in COLUMNS])
    data: dict[str, Any] = {}
    for name in ORDER:
        if name == "status":
            codes = np.asarray(cols["status"][:n], dtype=np.int8)
            data[name] = pd.Categorical.from_codes(
                codes, categories=[STATUS_NAMES[k] for k in sorted(STATUS_NAMES)]
            )
        elif name in ("start", "end"):
            seconds = np.asarray(cols[name][:n], dtype="float64")
            data[name] = pd.to_datetime(seconds, unit="s", utc=True)
        elif name == "seconds":
            data[name] = np.asarray(cols["end"][:n] - cols["start"][:n], dtype="float64")
        elif name == "attempts":
            data[name] = np.asarray(cols[name][:n], dtype="int64")
        else:
            data[name] = pd.array(np.asarray(cols[name][:n], dtype=object), dtype="string")
    index = pd.Index(np.asarray(ids[:n], dtype=object), name="obs", dtype="string")
    return pd.DataFrame(data, index=index)
