"""Test pipeline: each input file's size; on ``spoil.dat`` it spoils the provenance parts.

The run's tasks render their inputs' provenance into ``<store>.provenance/<run>.parts/``
(:func:`esap_dask.engine.provenance.write_part`). On the file named ``spoil.dat`` this
pipeline waits for the other tasks to end, then cuts the first part it finds short, removes
the second, and so on, and lists them in ``<parts>/spoiled.txt``: the run's record must
read those inputs from the ledger instead.
"""

from __future__ import annotations

import glob
import os
import time

from esap_dask import Parameter, Pipeline, Schema, Variable


def size_of(path: str, *, parts: str) -> dict[str, object]:
    """The file's size; spoils the parts under ``parts`` on ``spoil.dat``."""
    if os.path.basename(path) == "spoil.dat":
        time.sleep(0.5)  # the other batches end and leave their parts
        found = sorted(glob.glob(os.path.join(parts, "*.parts", "*")))
        for k, part in enumerate(found):
            if k % 2:
                os.remove(part)
            else:
                os.truncate(part, os.path.getsize(part) // 2)
        with open(os.path.join(parts, "spoiled.txt"), "w") as f:
            f.write("\n".join(found))
    return {"size": os.path.getsize(path)}


pipeline = Pipeline(
    name="test-spoil-parts",
    version="1",
    description="file sizes; spoils the run's provenance parts on spoil.dat",
    function=size_of,
    parameters=[Parameter("parts", str, "", "the store's provenance directory")],
    schema=Schema(variables=[Variable("size", "int64")]),
    observations="files",
)
