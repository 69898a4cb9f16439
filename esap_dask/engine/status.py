"""What a store's ledger says, for ``esap-dask status`` and the job service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from esap_dask.engine.ledger import FAILED, read_columns, read_ledger
from esap_dask.store import esap_attrs, open_store

__all__ = ["store_status"]


def store_status(
    store: str,
    *,
    max_failures: int = 20,
    storage_options: Mapping[str, Any] | None = None,
    tracebacks: bool = False,
) -> dict[str, Any]:
    """Counts per status, the pipeline, the runs so far and the first failures.

    Returns a JSON-ready dict: ``pipeline``, ``version``, ``total``, ``counts``
    (done/failed/pending), ``given_up`` (how many of the failed were tried as many
    times as the last run's ``max_attempts`` allows: runs no longer retry them),
    ``max_attempts`` (that of the last run that set one, else None), ``runs`` (the
    run records of the store's attrs) and ``failures`` (observation, error type,
    message, attempts, ``given_up``, and with ``tracebacks`` the traceback tail).
    """
    group = open_store(store, storage_options=storage_options, mode="r")
    meta = esap_attrs(group)  # a clear StoreError for a store that is not ours
    ledger = read_ledger(group)
    runs = meta.get("runs", [])
    limits = [r["max_attempts"] for r in runs if r.get("max_attempts") is not None]
    max_attempts = int(limits[-1]) if limits else None
    failed = ledger.status == FAILED
    given_up = failed & (ledger.attempts >= max_attempts) if max_attempts else failed & False
    failed_rows = np.flatnonzero(failed)[:max_failures]
    wanted = ["error_type", "error", *(["traceback"] if tracebacks else [])]
    cols = read_columns(group, wanted) if len(failed_rows) else {}
    failures = [
        {
            "observation": str(ledger.ids[r]),
            "error_type": str(cols["error_type"][r]),
            "message": str(cols["error"][r]),
            "attempts": int(ledger.attempts[r]),
            "given_up": bool(given_up[r]),
            **({"traceback": str(cols["traceback"][r])} if tracebacks else {}),
        }
        for r in failed_rows
    ]
    return {
        "store": store,
        "pipeline": meta.get("pipeline"),
        "version": meta.get("version"),
        "total": len(ledger.ids),
        "counts": ledger.counts(),
        "given_up": int(given_up.sum()),
        "max_attempts": max_attempts,
        "runs": runs,
        "failures": failures,
    }
