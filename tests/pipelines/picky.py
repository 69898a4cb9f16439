"""Test pipeline: run numbers whose products break the declared schema in known ways.

Run ``r`` returns, by ``r % 6``: 0 good products; 1 a vector of the wrong length; 2 a
string where an integer is declared; 3 no ``label``; 4 an undeclared variable; 5 good
products again, with a label given as a numpy string.
"""

from __future__ import annotations

import numpy as np

from esap_dask import Coordinate, Pipeline, Schema, Variable

N = 4


def picky(run: int) -> dict[str, object]:
    """Products of ``run``, broken as the module docstring says."""
    good: dict[str, object] = {
        "vector": np.arange(N, dtype="float64") + run,
        "count": run,
        "label": f"run {run}",
    }
    kind = run % 6
    if kind == 1:
        good["vector"] = np.zeros(N + 1)
    elif kind == 2:
        good["count"] = "many"
    elif kind == 3:
        del good["label"]
    elif kind == 4:
        good["extra"] = 1.0
    elif kind == 5:
        good["label"] = np.str_(f"run {run}")
    return good


pipeline = Pipeline(
    name="test-picky",
    version="1",
    description="products that break the schema in known ways",
    function=picky,
    schema=Schema(
        variables=[
            Variable("vector", "float64", dims=("i",)),
            Variable("count", "int64"),
            Variable("label", "str"),
        ],
        coords=[Coordinate("i", np.arange(N))],
    ),
    observations="run numbers",
)
