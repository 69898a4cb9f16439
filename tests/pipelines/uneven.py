"""Test pipeline: run numbers 0..9 take 10 ms each, 10..19 50 ms each, the others 20 ms.

With write units of 10 rows, a probed run's two probes are rows 0..9 (0.1 s) and 10..19
(0.5 s): the rest is planned when the fast probe ends, while the slow one still runs, from
the fast probe's time (tiny: one batch a thread). Each batch of the rest takes longer than
the slow probe has left.
"""

from __future__ import annotations

import time

from esap_dask import Pipeline, Schema, Variable


def uneven(run: int) -> dict[str, object]:
    """``run`` back, after 10 ms (runs 0..9), 50 ms (10..19) or 20 ms (the others)."""
    time.sleep(0.01 if run < 10 else 0.05 if run < 20 else 0.02)
    return {"run": run}


pipeline = Pipeline(
    name="test-uneven",
    version="1",
    description="run numbers back, some slower than others",
    function=uneven,
    schema=Schema(variables=[Variable("run", "int64")]),
    observations="run numbers",
)
