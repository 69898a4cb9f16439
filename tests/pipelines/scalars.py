"""Test pipeline: run numbers whose scalar products are written a column at a time.

Run ``r`` returns Python scalars of several types for each product. A row fails when
its ``small`` (declared ``int8``) is out of range (every 7th run: 1000), and when the
pipeline raises (every 11th run). ``ratio`` mixes Python ints and floats, ``count``
mixes Python ints and numpy integers, ``flag`` is a ``bool``: each must read back as
the number it was.
"""

from __future__ import annotations

import numpy as np

from esap_dask import Pipeline, Schema, Variable


def scalars(run: int) -> dict[str, object]:
    """Products of ``run``, as the module docstring says."""
    if run % 11 == 0:
        raise ValueError(f"run {run} is cursed")
    return {
        "small": 1000 if run % 7 == 0 else run % 100,
        "ratio": run / 2 if run % 2 else run,
        "count": np.int64(run) if run % 5 == 0 else run,
        "flag": run % 2 == 0,
        "name": f"run {run}",
    }


pipeline = Pipeline(
    name="test-scalars",
    version="1",
    description="scalar products of several Python types, some out of range",
    function=scalars,
    schema=Schema(
        variables=[
            Variable("small", "int8"),
            Variable("ratio", "float64"),
            Variable("count", "int64"),
            Variable("flag", "bool"),
            Variable("name", "str"),
        ]
    ),
    observations="run numbers",
)
