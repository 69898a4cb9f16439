"""Test pipeline whose observations can kill their worker process (os._exit).

``crash`` names a run number that kills its worker every time; ``crash_once`` one
that kills its worker only the first time (a marker file in ``marker_dir``
remembers it), as a node failure would.
"""

from __future__ import annotations

import os
from pathlib import Path

from esap_dask import Parameter, Pipeline, Variable


def crashy(run: int, *, crash: int, crash_once: int, marker_dir: str) -> dict[str, object]:
    """``run * 2``, unless this run is the one that kills the worker."""
    if run == crash:
        os._exit(13)
    if run == crash_once:
        marker = Path(marker_dir) / f"crashed-{run}"
        if not marker.exists():
            marker.write_text("once")
            os._exit(13)
    return {"double": run * 2}


pipeline = Pipeline(
    name="test-crashy",
    version="1",
    description="kills its worker on chosen run numbers",
    function=crashy,
    parameters=[
        Parameter("crash", int, -1, "run number that always kills its worker"),
        Parameter("crash_once", int, -1, "run number that kills its worker once"),
        Parameter("marker_dir", str, "/tmp", "where the crash-once marker goes"),
    ],
    schema=[Variable("double", "int64", description="twice the run number")],
    observations="run numbers",
)
