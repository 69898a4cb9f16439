"""The background-runs notebook: a live progress widget, a handle cancelled mid-run, a resume.

The notebook runs in a real kernel (nbclient, ipykernel, ipywidgets from the ``notebook``
extra). The widget's updates are the comm messages the kernel sends while a cell runs,
recorded here as the notebook's front end would receive them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
import xarray as xr
from nbclient import NotebookClient

import esap_dask

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "background_runs.ipynb"


class RecordingClient(NotebookClient):
    """An nbclient that keeps every widget comm message, with the index of its cell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.comms: list[tuple[int, str, dict[str, Any]]] = []

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        if msg["msg_type"] in ("comm_open", "comm_msg"):
            self.comms.append((cell_index, msg["msg_type"], msg["content"].get("data", {})))
        return super().process_message(msg, cell, cell_index)


def _cell(nb: nbformat.NotebookNode, starts: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.source.startswith(starts))


def _text(cell: nbformat.NotebookNode, name: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == name)


@pytest.mark.slow
def test_background_runs_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        pytest.fail("ipywidgets is missing: pip install -e '.[notebook]' (the notebook extra)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None
        for c in nb.cells
        if c.cell_type == "code"
    ), f"{NOTEBOOK.name} is committed with outputs; strip them (see docs/notebooks.md)"
    monkeypatch.setenv("BACKGROUND_DIR", str(tmp_path))
    client = RecordingClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    # the blocking run: a progress widget whose value the kernel moves to the end
    blocking = _cell(nb, "summary = esap_dask.map_observations(")
    bars = [
        d["state"]
        for i, kind, d in client.comms
        if i == blocking
        and kind == "comm_open"
        and d["state"]["_model_name"] == "FloatProgressModel"
    ]
    assert [(b["min"], b["max"]) for b in bars] == [(0.0, 24.0)]
    values = [
        d["state"]["value"]
        for i, kind, d in client.comms
        if i == blocking
        and kind == "comm_msg"
        and d.get("method") == "update"
        and isinstance(d.get("state", {}).get("value"), float)
    ]
    assert len(values) >= 3 and values == sorted(values) and values[-1] == 24.0, values
    labels = " ".join(
        str(d["state"]["value"])
        for i, kind, d in client.comms
        if i == blocking and kind == "comm_msg" and isinstance(d.get("state", {}).get("value"), str)
    )
    assert "obs/s" in labels and "24/24" in labels, labels
    stderr = "".join(_text(c, "stderr") for c in nb.cells if c.cell_type == "code")
    assert "IProgress" not in stderr and "ipywidgets" not in stderr, stderr
    html = [
        o["data"]["text/html"]
        for o in nb.cells[blocking].outputs
        if "text/html" in o.get("data", {})
    ]
    assert any("esap-dask RunSummary" in h and "24 succeeded" in h for h in html), html
    assert "blocking: 24 done, 0 failed" in _text(nb.cells[blocking])

    # the background run: its handle shown while it runs, then cancelled mid-run
    started = _cell(nb, "handle = esap_dask.map_observations(")
    shown = [
        o["data"] for o in nb.cells[started].outputs if o.get("output_type") == "execute_result"
    ]
    assert "esap-dask run" in shown[0]["text/html"] and "running" in shown[0]["text/html"]
    cancel = _text(nb.cells[_cell(nb, 'print("cancelled:", handle.cancel())')])
    assert "cancelled: True" in cancel, cancel
    match = re.search(r"cancelled run: (\d+) done, (\d+) pending", cancel)
    assert match, cancel
    done, pending = int(match[1]), int(match[2])
    assert done >= 8 and pending > 0 and done + pending == 56
    assert f"in the store: {24 + done} of 80 done" in cancel

    # the next run does exactly the rest, and every observation ran once
    resume = _text(nb.cells[_cell(nb, "resumed = esap_dask.map_observations(")])
    assert f"resumed: {pending} processed, {24 + done} skipped, 0 failed" in resume, resume
    assert "every observation done once: True" in resume
    ds, table = xr.open_zarr(tmp_path / "slow.zarr"), esap_dask.ledger(tmp_path / "slow.zarr")
    assert (table.status == "done").all() and (table.attempts == 1).all()
    assert sorted(ds.square.values.tolist()) == [float(x) ** 2 for x in range(1, 81)]
