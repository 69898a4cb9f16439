"""The notebooks run top to bottom on the local facility and show their plots."""

from __future__ import annotations

import io
import re
from pathlib import Path

import nbformat
import pytest
import requests
import xarray as xr
from nbclient import NotebookClient

import esap_dask

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


def _stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(o["text"] for o in _outputs(nb, "stdout"))


def _execute(name: str, tmp_path: Path, timeout: int = 120) -> nbformat.NotebookNode:
    """The notebook ``name``, checked for stripped outputs, executed in ``tmp_path``."""
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None
        for c in nb.cells
        if c.cell_type == "code"
    ), f"{name} is committed with outputs; strip them (see docs/notebooks.md)"
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


@pytest.mark.slow
def test_concordia_sweep_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORDIA_DIR", str(tmp_path))
    nb = _execute("concordia_sweep.ipynb", tmp_path)
    assert len(_outputs(nb, "image/png")) == 3  # profile, elongation, Cherenkov density
    text = _stdout(nb)
    assert "gamma:  20 runs done, 0 failed" in text
    assert "proton: 20 runs done, 0 failed" in text
    assert "rerun: 0 processed, 20 skipped, 0 failed" in text
    # the fitted elongation rates agree with the model's (84 and 61 g/cm2 per decade)
    rates = re.findall(
        r"(gamma|proton)\s+elongation rate: fitted\s+([\d.]+) ±\s+([\d.]+) g/cm² per decade, "
        r"model\s+([\d.]+)",
        text,
    )
    assert [r[0] for r in rates] == ["gamma", "proton"], text
    for _, fit, error, model in rates:
        assert abs(float(fit) - float(model)) < 3 * float(error), rates
    for primary in ("gamma", "proton"):
        ds = xr.open_zarr(tmp_path / f"{primary}.zarr")
        assert list(ds.obs.values) == [str(run) for run in range(1, 21)]
        assert ds.sizes["shower"] == 25
        assert (esap_dask.ledger(tmp_path / f"{primary}.zarr").status == "done").all()
    assert xr.open_zarr(tmp_path / "gamma.zarr").attrs["esap"]["pipeline"] == "concordia"


@pytest.mark.slow
def test_uws_pyvo_notebook_starts_follows_and_stops_its_own_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ESAP_UWS_URL", raising=False)
    monkeypatch.delenv("ESAP_UWS_TOKEN", raising=False)
    nb = _execute("uws_pyvo.ipynb", tmp_path)
    text = _stdout(nb)
    started = re.search(r"job service at (http://127\.0\.0\.1:\d+) \(started here\)", text)
    assert started, text
    url = started[1]
    assert "final phase: COMPLETED" in text
    assert 'ledger: {"pending": 0, "done": 5, "failed": 0} failures: none' in text
    assert "helloworld 1.0.0 on local, 5 succeeded, 0 failed" in text
    assert "used 5 inputs, generated 1 store" in text
    assert [f"Hello from pyvo, {i}!" in text for i in range(1, 6)] == [True] * 5
    assert text.rstrip().endswith(f"stopped the service on {url}")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/uws/jobs", timeout=5)


@pytest.mark.slow
def test_uws_pyvo_notebook_uses_the_service_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyvo.io.uws import parse_job_list

    from esap_dask.testing.service import ServiceProcess, write_tokens

    tokens = write_tokens(tmp_path / "tokens", {"tok-carol": "carol"})
    with ServiceProcess(tmp_path / "service", tokens) as service:
        monkeypatch.setenv("ESAP_UWS_URL", service.url + "/")
        monkeypatch.setenv("ESAP_UWS_TOKEN", "tok-carol")
        text = _stdout(_execute("uws_pyvo.ipynb", tmp_path))
        assert f"job service at {service.url} (from ESAP_UWS_URL)" in text
        assert "final phase: COMPLETED" in text
        assert "stopped the service" not in text
        listing = requests.get(
            f"{service.url}/uws/jobs", headers={"Authorization": "Bearer tok-carol"}, timeout=10
        )
        assert listing.status_code == 200  # the service is still up: the notebook left it
        jobs = parse_job_list(io.BytesIO(listing.content))
        assert [(j.runid, j.phase) for j in jobs] == [("notebook", "COMPLETED")]


def _hess() -> Path:
    if not (HESS / "obs-index.fits.gz").is_file():
        pytest.fail(f"the H.E.S.S. DL3 DR1 data is missing: expected {HESS / 'obs-index.fits.gz'}")
    return HESS


@pytest.mark.slow
def test_crab_spectrum_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HESS_DL3_DR1", str(_hess()))
    store = tmp_path / "crab_spectrum.zarr"
    monkeypatch.setenv("CRAB_STORE", str(store))
    nb = _execute("crab_spectrum.ipynb", tmp_path, timeout=300)
    assert len(_outputs(nb, "image/png")) == 1  # the SED: model, its error band, flux points
    text = _stdout(nb)
    assert "4 done, 0 failed" in text
    assert "rerun: 0 processed, 4 skipped, 0 failed" in text
    fitted = {
        name: float(value)
        for name, value in re.findall(r"(amplitude|alpha|beta)=([-\d.e+]+) ±", text)
    }
    assert fitted.keys() == {"amplitude", "alpha", "beta"}, text
    # the Crab at 1 TeV: some 3-4e-11 /cm2/s/TeV, index about 2.3-2.6, curved
    assert 1.5e-11 < fitted["amplitude"] < 7e-11 and 2.0 < fitted["alpha"] < 3.0, fitted
    assert 0 < fitted["beta"] < 0.5, fitted
    ds = xr.open_zarr(store)
    assert sorted(int(i) for i in ds.obs_id.values) == [23523, 23526, 23559, 23592]
    assert (esap_dask.ledger(store).status == "done").all()
    assert ds.attrs["esap"]["pipeline"] == "gammapy-spectrum"


@pytest.mark.slow
def test_bring_your_own_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HESS_DL3_DR1", str(_hess()))
    monkeypatch.setenv("BYO_DIR", str(tmp_path))
    nb = _execute("bring_your_own.ipynb", tmp_path, timeout=300)
    assert len(_outputs(nb, "image/png")) == 1  # counts spectra | rate vs zenith
    text = _stdout(nb)
    for name in ("inferred", "declared", "gammapy"):
        assert f"{name}: 21 done, 0 failed" in text, text
    assert "checked: 0 done, 2 failed" in text
    assert "variable 'counts': got shape (16,), declared (15,)" in text
    inferred = xr.open_zarr(tmp_path / "inferred.zarr")
    declared = xr.open_zarr(tmp_path / "declared.zarr")
    assert inferred.counts.dims == ("obs", "counts_dim0")
    assert declared.counts.dims == ("obs", "energy")
    assert declared.energy.attrs["units"] == "TeV" and declared.livetime.attrs["units"] == "s"
    assert declared.attrs["esap"]["pipeline"] == "counts-livetime"
    observations = xr.open_zarr(tmp_path / "gammapy.zarr")
    assert set(observations.data_vars) >= {"n_events", "rate", "offset", "zenith"}
    assert observations.obs_id.dtype.kind == "i" and "obs_id" in observations.coords
    done = esap_dask.ledger(tmp_path / "gammapy.zarr").status == "done"
    assert done.all() and (observations.n_events > 0).all()
