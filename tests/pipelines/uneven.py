"""Test pipeline: run numbers 0..39 take 10 ms each, the others 50 ms each.

With write units of 10 rows, a probed run of 80 numbers on 2 threads is two shares: rows
0..39 and 40..79, each task timing its first unit. The first share's probe (0.1 s) makes
its other 30 rows tiny (0.3 s): the task goes on with them. The second's (0.5 s) makes
its other 30 rows 1.5 s, more than one tiny task: the task commits its probe's 10 rows,
and the driver plans the 30 others as tasks fed to whichever worker is free.
"""

from __future__ import annotations

import time

from esap_dask import Pipeline, Schema, Variable


def uneven(run: int) -> dict[str, object]:
    """``run`` back, after 10 ms (runs 0..39) or 50 ms (the others)."""
    time.sleep(0.01 if run < 40 else 0.05)
    return {"run": run}


pipeline = Pipeline(
    name="test-uneven",
    version="1",
    description="run numbers back, some slower than others",
    function=uneven,
    schema=Schema(variables=[Variable("run", "int64")]),
    observations="run numbers",
)
