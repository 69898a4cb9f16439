"""Test pipeline: whether the run's store existed when each observation ran."""

from __future__ import annotations

import os

from esap_dask import Parameter, Pipeline, Variable


def seen(run: int, *, store: str) -> dict[str, object]:
    """1 when ``store`` had its root metadata as this observation ran, else 0."""
    return {"saw_store": int(os.path.exists(os.path.join(store, "zarr.json")))}


pipeline = Pipeline(
    name="test-store-seen",
    version="1",
    description="whether the store existed as each observation ran",
    function=seen,
    parameters=[Parameter("store", str, "", "the store the run writes")],
    schema=[Variable("saw_store", "int64", units="1", description="1: the store existed")],
    observations="run numbers",
)
