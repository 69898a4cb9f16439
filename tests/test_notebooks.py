"""The notebooks run top to bottom on the local facility and show their plots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import xarray as xr
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
HESS = Path(__file__).parents[2] / "shared" / "data" / "hess-dl3-dr1"


def _outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") in ("display_data", "execute_result", "stream")
        and (kind in o.get("data", {}) or kind == o.get("name"))
    ]


@pytest.mark.slow
def test_dl3_interactive_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not HESS.is_dir():
        pytest.fail(f"the H.E.S.S. DL3 DR1 data is missing: expected it at {HESS}")
    path = NOTEBOOKS / "dl3_interactive.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{path.name} is committed with outputs; strip them (jupyter nbconvert --clear-output)"
    )
    store = tmp_path / "crab.zarr"
    monkeypatch.setenv("HESS_DL3_DR1", str(HESS))
    monkeypatch.setenv("DL3_STORE", str(store))
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert len(_outputs(nb, "image/png")) == 3  # counts map, significance, light curve
    text = "".join(o["text"] for o in _outputs(nb, "stdout"))
    assert "4 done, 0 failed" in text
    assert "Li & Ma significance" in text
    ds = xr.open_zarr(store)
    assert ds.sizes["obs"] == 4 and set(ds.target.values) == {"Crab Nebula"}
