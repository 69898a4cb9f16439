"""What a store's ledger says, for ``esap-dask status`` and the job service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from esap_dask.engine.ledger import FAILED, read_ledger
from esap_dask.store import esap_attrs, open_store, read

__all__ = ["store_status"]


def store_status(
    store: str, *, max_failures: int = 20, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Counts per status, the pipeline, the runs so far and the first failures.

    Returns a JSON-ready dict: ``pipeline``, ``version``, ``total``, ``counts``
    (done/failed/pending), ``runs`` (the run records of the store's attrs) and
    ``failures`` (observation, error type, message, attempts).
    """
    group = open_store(store, storage_options=storage_options, mode="r")
    meta = esap_attrs(group)  # a clear StoreError for a store that is not ours
    ledger = read_ledger(group)
    failed_rows = np.flatnonzero(ledger.status == FAILED)[:max_failures]
    kinds = read(group, "ledger_error_type")
    messages = read(group, "ledger_error")
    failures = [
        {
            "observation": str(ledger.ids[r]),
            "error_type": str(kinds[r]),
            "message": str(messages[r]),
            "attempts": int(ledger.attempts[r]),
        }
        for r in failed_rows
    ]
    return {
        "store": store,
        "pipeline": meta.get("pipeline"),
        "version": meta.get("version"),
        "total": len(ledger.ids),
        "counts": ledger.counts(),
        "runs": meta.get("runs", []),
        "failures": failures,
    }
