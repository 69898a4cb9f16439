"""Benchmark pipeline: one large incompressible product per observation (``size_mb`` MiB)."""

from __future__ import annotations

import numpy as np

from esap_dask import Coordinate, Parameter, Pipeline, Schema, Variable

ROWS = 1024


def columns(size_mb: int) -> int:
    """Columns of a float32 image of ``size_mb`` MiB with 1024 rows."""
    return size_mb * 2**20 // (4 * ROWS)


def image(run: int, *, size_mb: int) -> dict[str, object]:
    """A pseudo-random float32 image, seeded by the run number."""
    rng = np.random.default_rng(run)
    return {"image": rng.random((ROWS, columns(size_mb)), dtype=np.float32)}


pipeline = Pipeline(
    name="bench-large",
    version="1",
    description="a large random image per run number",
    function=image,
    parameters=[Parameter("size_mb", int, 32, "MiB per observation", minimum=1)],
    schema=lambda p: Schema(
        variables=[Variable("image", "float32", dims=("y", "x"), units="1")],
        coords=[
            Coordinate("y", np.arange(ROWS)),
            Coordinate("x", np.arange(columns(p["size_mb"]))),
        ],
    ),
    observations="run numbers",
)
