"""Test pipeline: a deterministic 16-float vector per run number (for corruption checks)."""

from __future__ import annotations

import numpy as np

from esap_dask import Coordinate, Parameter, Pipeline, Schema, Variable

N = 16


def expected(run: int, scale: float = 1.0) -> np.ndarray:
    """The vector of ``run``: what a serial reference computes."""
    return (np.arange(N, dtype="float64") + 1000.0 * int(run)) * scale


def vector(run: int, *, scale: float) -> dict[str, object]:
    """The run's vector and its sum."""
    v = expected(run, scale)
    return {"vector": v, "total": float(v.sum())}


pipeline = Pipeline(
    name="test-vector",
    version="1",
    description="deterministic vector per run number",
    function=vector,
    parameters=[Parameter("scale", float, 1.0, "multiplies every value")],
    schema=Schema(
        variables=[
            Variable("vector", "float64", dims=("i",), units="1", description="the vector"),
            Variable("total", "float64", units="1", description="its sum"),
        ],
        coords=[Coordinate("i", np.arange(N), description="element index")],
    ),
    observations="run numbers",
)
