"""Every Python block of docs/store.md runs, in order, against a store like the page's.

The page's recipes read ``products.zarr``: here a ``helloworld`` run over four files, one of
them missing (so that the failure recipes have a failure to show).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from esap_dask import map_observations
from tests.conftest import ROOT
from tests.test_docs import blocks


def test_every_python_block_of_the_store_page_runs(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    files = []
    for i in range(4):
        path = tmp_path / "in" / f"obs{i:05d}.dat"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"observation {i}\n")
        files.append(str(path))
    os.remove(files[2])
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "products.zarr")  # absolute: the workers run elsewhere
    summary = map_observations("helloworld", files, store, client=client)
    assert summary.failed == 1
    python = [body for info, body in blocks((ROOT / "docs" / "store.md").read_text())
              if info.split()[:1] == ["python"]]  # fmt: skip
    assert len(python) >= 3, "the page shows its recipes in python blocks"
    namespace: dict[str, Any] = {}
    for k, body in enumerate(python):
        try:
            exec(compile(body, f"docs/store.md python block {k + 1}", "exec"), namespace)
        except Exception as err:
            pytest.fail(f"docs/store.md, python block {k + 1} fails: {err!r}\n{body}")
    assert namespace["done"].sizes["obs"] == 3  # the recipe selected the done ones
    assert list(namespace["failed"].index) == ["obs00002.dat"]
