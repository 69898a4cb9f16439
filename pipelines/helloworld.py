"""helloworld: the seed's smoke test, on files or on plain values.

For a file (or a URL: the worker's local copy of it) it reads the whole file (through
``esap_dask.read_input``, so that the task records the file's checksum from this one
read) and reports its size and SHA-256; for a plain value (a run number) it hashes the
value's text. ``sleep`` simulates work, ``fail`` raises for every observation (to see
failures reported).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from esap_dask import Parameter, Pipeline, Variable, read_input


def hello(obs: Any, *, message: str, sleep: float, fail: bool) -> dict[str, Any]:
    """Size, checksum and a greeting for one observation."""
    if fail:
        raise RuntimeError(f"helloworld was asked to fail (fail=true) for {obs!r}")
    if sleep:
        time.sleep(sleep)
    if isinstance(obs, str) and "://" not in obs:
        data = read_input(obs)
        name = os.path.basename(obs)
    else:
        data = str(obs).encode()
        name = str(obs)
    return {
        "size": len(data),
        "checksum": hashlib.sha256(data).hexdigest(),
        "greeting": f"{message}, {name}!",
    }


pipeline = Pipeline(
    name="helloworld",
    version="1.0.0",
    description="Smoke test: size and SHA-256 of each input file (or value), and a greeting.",
    function=hello,
    parameters=[
        Parameter("message", str, "Hello", "greeting written for each observation"),
        Parameter("sleep", float, 0.0, "seconds of simulated work per observation", minimum=0),
        Parameter("fail", bool, False, "raise an error for every observation"),
    ],
    schema=[
        Variable("size", "int64", units="byte", description="size of the input"),
        Variable("checksum", "str", description="SHA-256 of the input, hex"),
        Variable("greeting", "str", description="the message, addressed to the observation"),
    ],
    observations="files or values",
)
