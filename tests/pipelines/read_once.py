"""Test pipeline: reads its input through ``esap_dask.read_input``, then removes the file.

A task that read the file again after the pipeline (for its checksum) would find it gone:
every row done, with the checksum of the content read, shows that the one read served.
Files named ``*.plain`` are read with ``open`` instead (the task then reads them itself);
for files named ``*.fail`` it raises before reading them.
"""

from __future__ import annotations

import hashlib
import os

from esap_dask import Pipeline, Variable, read_input


def read_once(path: str) -> dict[str, object]:
    """The SHA-256 of the file's content; the file is removed once read."""
    if path.endswith(".fail"):
        raise ValueError(f"{path}: refused before reading it")
    if path.endswith(".plain"):
        with open(path, "rb") as f:
            data = f.read()
    else:
        data = read_input(path)
        os.remove(path)
    return {"digest": hashlib.sha256(data).hexdigest()}


pipeline = Pipeline(
    name="read-once",
    version="1.0.0",
    description="Test: the input read once through read_input, then removed.",
    function=read_once,
    schema=[Variable("digest", "str", description="SHA-256 of the content read")],
)
