"""A job's files besides its store: the run log and the ledger summary."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esap_dask.service.db import now

__all__ = ["append_log", "ledger_summary", "write_ledger"]


def append_log(directory: Path, message: str) -> None:
    """Append a time-stamped line to the job's ``run.log``."""
    with contextlib.suppress(OSError):
        directory.mkdir(parents=True, exist_ok=True)
        stamp = now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with open(directory / "run.log", "a") as f:
            f.write(f"{stamp} {message}\n")


def write_ledger(
    directory: Path,
    store: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``ledger.json`` (the store's ledger summary) when the store exists.

    ``store`` is a path or a URL (a store under the service's store root) reached with
    ``storage_options``.
    """
    from esap_dask.service.stores import JobStore
    from esap_dask.store import open_store

    where = JobStore(os.fspath(store), dict(storage_options or {}))
    with contextlib.suppress(Exception):
        if not where.exists():
            return
        group = open_store(where.url, storage_options=where.storage_options, mode="r")
        text = json.dumps(ledger_summary(group), indent=1, default=str)
        # whole or not at all: a request may read it while the runner or another request
        # writes it again (JobService.ledger_result refreshes it from the store)
        partial = directory / f".ledger.json.{os.getpid()}.{threading.get_ident()}"
        partial.write_text(text)
        os.replace(partial, directory / "ledger.json")


def ledger_summary(group: Any) -> dict[str, Any]:
    """Counts per ledger status, and each failed observation with its error."""
    import numpy as np

    from esap_dask.engine.ledger import FAILED, read_columns, read_ledger

    ledger = read_ledger(group)
    failed = np.flatnonzero(np.asarray(ledger.status) == FAILED)
    cols = read_columns(group, ["error", "error_type"])
    errors = np.asarray(cols["error"], dtype=object)
    kinds = np.asarray(cols["error_type"], dtype=object)
    return {
        "observations": len(ledger.ids),
        "counts": ledger.counts(),
        "failures": [
            {
                "observation": str(ledger.ids[i]),
                "error_type": str(kinds[i]),
                "message": str(errors[i]),
            }
            for i in failed
        ],
    }
