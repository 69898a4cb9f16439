"""Moving the ledger of a store of the earlier layout into its ``ledger`` subgroup.

Stores written before this change (see the changelog, "Unreleased") kept 14
``ledger_<column>`` arrays beside the products, so ``xr.open_zarr`` showed them
mixed with the products. Every reader of the ledger reads both layouts
(:func:`esap_dask.engine.ledger.read_columns`); the next run that writes such a store
moves its ledger, under the store's lock, before it plans (:func:`migrate`).
"""

from __future__ import annotations

import numpy as np
import zarr

from esap_dask.engine.ledger import ARRAYS, COLUMNS, pack
from esap_dask.store import (
    LEDGER_GROUP,
    array,
    complete_ledger_group,
    consolidate,
    create_ledger_group,
    disk_errors,
    ledger_group,
    read_many,
    store_layout,
    write_rows,
)

__all__ = ["migrate"]


def migrate(group: zarr.Group) -> bool:
    """Move the ledger of a store of the earlier layout into its subgroup; True if it did.

    The earlier layout kept 14 ``ledger_<column>`` arrays beside the products. Called by
    a run that holds the store's lock, after :func:`esap_dask.store.repair`: the
    subgroup is created marked incomplete, filled with every row of every column, then
    marked complete (the commit point); the old arrays are deleted after it. Cut short
    before the commit point, the next run starts the move afresh (the old arrays are
    intact); after it, the next run only deletes what is left of the old arrays.
    Nothing is lost: every column is copied, values unchanged.
    """
    old = [name for name, _ in group.arrays() if name.startswith("ledger_")]
    if not old:
        return False
    with disk_errors(str(group.store)):
        if ledger_group(group) is None:
            if LEDGER_GROUP in group:  # a move cut short before its commit point
                del group[LEDGER_GROUP]
            n = array(group, "obs").shape[0]
            cols = dict(
                zip(
                    [c.name for c in COLUMNS],
                    read_many(group, [f"ledger_{c.name}" for c in COLUMNS]),
                    strict=True,
                )
            )
            create_ledger_group(group, ARRAYS, store_layout(group), n=n)
            if n:
                rows = np.arange(n)
                packed = pack(cols)
                status = packed.pop(f"{LEDGER_GROUP}/status")
                write_rows(group, rows, packed)
                write_rows(group, rows, {f"{LEDGER_GROUP}/status": status})
            complete_ledger_group(group)  # the commit point
            consolidate(group.store)
        for name in old:
            del group[name]
        consolidate(group.store)
    return True
