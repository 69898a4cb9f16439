"""gammapy-spectrum: gammapy's own 1D reduction mapped over files, read back as gammapy Datasets.

The reference everywhere is gammapy's own serial reduction, ``DatasetsMaker(makers,
stack_datasets=False, n_jobs=1)``, with the same geometry and makers
(:func:`esap_dask.iact.spectrum.make_makers`) on the same files. Data: the four H.E.S.S.
DL3 DR1 Crab runs in ../shared/data/hess-dl3-dr1 (read in place), and synthetic
point-like files with RAD_MAX written by :mod:`esap_dask.iact.synthetic`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import esap_dask
from esap_dask.catalogs.workflows import get_pipeline
from esap_dask.iact import read_datasets
from esap_dask.iact.gadf import select_observations
from esap_dask.iact.spectrum import DEFAULTS, energy_axis, make_makers, spectrum_schema
from esap_dask.iact.synthetic import DEFAULT_TARGET, write_observations

HESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hess-dl3-dr1"
RTOL = 1e-12


def _crab_files() -> list[str]:
    index = HESS / "obs-index.fits.gz"
    if not index.is_file():
        pytest.fail(f"the H.E.S.S. DL3 DR1 data is missing: expected {index}")
    files = [o.value for o in select_observations(index, target="crab")]
    assert len(files) == 4  # 23523, 23526, 23559, 23592: the runs of gammapy's tutorial
    return files


def _gammapy_reference(files: list[str], *, point_like: bool, **params: Any) -> Any:
    """gammapy's own serial reduction of ``files`` (raises where gammapy raises)."""
    from gammapy.data import Observation, Observations
    from gammapy.makers import DatasetsMaker

    observations = Observations([Observation.read(f) for f in files])
    meta = observations[0].events.table.meta
    center = (float(meta["RA_OBJ"]), float(meta["DEC_OBJ"]))
    empty, dataset_maker, bkg_maker, safe_maker = make_makers(
        point_like=point_like, center=center, **params
    )
    maker = DatasetsMaker([dataset_maker, bkg_maker, safe_maker], stack_datasets=False, n_jobs=1)
    return maker.run(empty, observations)


def _assert_same(mine: Any, theirs: Any) -> None:
    """Every array of two SpectrumDatasetOnOff: counts exact, the rest within 1e-12."""
    assert int(mine.meta_table["OBS_ID"][0]) == int(theirs.meta_table["OBS_ID"][0])
    for name in ("counts", "counts_off", "mask_safe"):
        np.testing.assert_array_equal(
            getattr(mine, name).data, getattr(theirs, name).data, err_msg=name
        )
    for name in ("acceptance", "acceptance_off", "exposure"):
        a, b = getattr(mine, name), getattr(theirs, name)
        assert a.unit == b.unit, name
        np.testing.assert_allclose(a.data, b.data, rtol=RTOL, atol=0, err_msg=name)
    np.testing.assert_allclose(
        mine.edisp.edisp_map.data, theirs.edisp.edisp_map.data, rtol=RTOL, atol=0
    )
    np.testing.assert_allclose(
        mine.edisp.exposure_map.data, theirs.edisp.exposure_map.data, rtol=RTOL, atol=0
    )
    assert mine.edisp.edisp_map.geom.axes.names == theirs.edisp.edisp_map.geom.axes.names
    for axis in ("energy", "energy_true"):
        geom_m = mine.exposure.geom if axis == "energy_true" else mine.counts.geom
        geom_t = theirs.exposure.geom if axis == "energy_true" else theirs.counts.geom
        np.testing.assert_array_equal(geom_m.axes[axis].edges, geom_t.axes[axis].edges)
    assert mine.counts.geom.region.center.separation(
        theirs.counts.geom.region.center
    ).deg == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(
        mine.exposure.meta["livetime"].to_value("s"),
        theirs.exposure.meta["livetime"].to_value("s"),
        rtol=RTOL,
    )
    np.testing.assert_allclose(
        (mine.gti.time_stop - theirs.gti.time_stop).to_value("s"), 0, atol=1e-6
    )
    np.testing.assert_allclose(
        (mine.gti.time_start - theirs.gti.time_start).to_value("s"), 0, atol=1e-6
    )
    np.testing.assert_allclose(mine.alpha.data, theirs.alpha.data, rtol=RTOL)


def _fit_log_parabola(datasets: Any) -> dict[str, float]:
    import astropy.units as u
    from gammapy.modeling import Fit
    from gammapy.modeling.models import LogParabolaSpectralModel, SkyModel

    model = SkyModel(
        spectral_model=LogParabolaSpectralModel(
            amplitude=1e-12 * u.Unit("cm-2 s-1 TeV-1"), alpha=2, beta=0.1, reference=1 * u.TeV
        ),
        name="crab",
    )
    datasets.models = [model]
    result = Fit().run(datasets=datasets)
    assert result.success, result
    return {p.name: float(p.value) for p in model.spectral_model.parameters if not p.frozen}


def _by_obs_id(datasets: Any) -> dict[int, Any]:
    return {int(d.meta_table["OBS_ID"][0]): d for d in datasets}


# ----------------------------------------------------------------------- fast, no cluster


def test_schema_edges_are_gammapy_axes() -> None:
    """The store's energy edges (computed without gammapy) are MapAxis.from_energy_bounds'."""
    from gammapy.maps import MapAxis

    pipe = get_pipeline("gammapy-spectrum")
    for params in ({}, {"energy_min": 0.3, "energy_max": 12.5, "energy_per_decade": 7}):
        p = pipe.resolve(params)
        coords = {c.name: c for c in spectrum_schema(p).coords}
        for name in ("energy", "energy_true"):
            axis = MapAxis.from_energy_bounds(
                p[f"{name}_min"],
                p[f"{name}_max"],
                nbin=p[f"{name}_per_decade"],
                per_decade=True,
                unit="TeV",
                name=name,
            )
            assert coords[f"{name}_edges"].units == "TeV"
            np.testing.assert_allclose(coords[f"{name}_edges"].values, axis.edges.value, rtol=1e-15)
            # the axis the worker and read_datasets build from the stored edges is gammapy's
            assert energy_axis(coords[f"{name}_edges"].values, name) == axis
            assert len(coords[name].values) == axis.nbin
    # the tutorial's axes: 27 reco bins 0.1-40 TeV, 67 true bins 0.05-100 TeV
    sizes = spectrum_schema(pipe.resolve()).sizes
    assert (sizes["energy"], sizes["energy_true"]) == (27, 67)
    assert DEFAULTS["on_radius"] == 0.11 and DEFAULTS["aeff_percent"] == 10.0


def test_bad_parameters_are_refused_naming_them() -> None:
    pipe = get_pipeline("gammapy-spectrum")
    with pytest.raises(esap_dask.ParameterError, match=r"'target'.*RA,DEC"):
        pipe.resolve({"target": "crab"})
    with pytest.raises(esap_dask.ParameterError, match=r"'exclusion'.*RADIUS"):
        pipe.resolve({"exclusion": "80,16"})
    with pytest.raises(esap_dask.ParameterError, match=r"'safe_mask'.*aeff-max"):
        pipe.resolve({"safe_mask": "aeff-best"})
    with pytest.raises(esap_dask.ParameterError, match=r"energy_max.*above"):
        pipe.output_schema(pipe.resolve({"energy_min": 50.0}))


def test_catalog_lists_it_without_gammapy_and_the_run_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['gammapy'] = None\n"
        "from esap_dask.catalogs.workflows import get_pipeline\n"
        "p = get_pipeline('gammapy-spectrum'); print(p.describe()['schema']['coords'])\n"
        "try:\n    p.function('run.fits')\n"
        "except ModuleNotFoundError as err:\n    print('ERROR', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'energy_true': {'size': 67, 'units': 'TeV'}" in out.stdout
    assert "ERROR the gammapy-spectrum pipeline needs the optional extra 'gammapy'" in out.stdout
    assert "pip install 'esap-dask[gammapy]'" in out.stdout


# ------------------------------------------------------------- H.E.S.S. DR1 Crab runs


@pytest.fixture(scope="module")
def crab_run(client: Any, tmp_path_factory: Any) -> dict[str, Any]:
    """The four Crab runs plus a truncated copy of 23523, mapped with a LocalCluster."""
    files = _crab_files()
    tmp = tmp_path_factory.mktemp("gammapy_spectrum")
    bad = tmp / "hess_dl3_dr1_obs_id_023523_truncated.fits.gz"
    blob = Path(files[0]).read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])
    store = tmp / "crab.zarr"
    summary = esap_dask.map_observations(
        "gammapy-spectrum", [*files, str(bad)], store, client=client, progress=False
    )
    return {"files": files, "bad": str(bad), "store": store, "summary": summary}


@pytest.fixture(scope="module")
def crab_reference(crab_run: dict[str, Any]) -> Any:
    return _gammapy_reference(crab_run["files"], point_like=False)


@pytest.mark.slow
def test_crab_datasets_equal_gammapys_own_reduction(
    crab_run: dict[str, Any], crab_reference: Any
) -> None:
    datasets = read_datasets(crab_run["store"])
    assert sorted(d.name for d in datasets) == ["23523", "23526", "23559", "23592"]
    mine, theirs = _by_obs_id(datasets), _by_obs_id(crab_reference)
    assert mine.keys() == theirs.keys()
    for obs_id in mine:
        _assert_same(mine[obs_id], theirs[obs_id])
    # a selection by obs id, and the stacked dataset equals gammapy's stack_reduce
    assert [d.name for d in read_datasets(crab_run["store"], obs=[23559, 23523])] == [
        "23559",
        "23523",
    ]
    with pytest.raises(KeyError, match="no done observation 12345"):
        read_datasets(crab_run["store"], obs=12345)
    stacked = read_datasets(crab_run["store"], stack=True)[0]
    reference_stacked = crab_reference.stack_reduce()
    for name in ("counts", "counts_off", "mask_safe"):
        np.testing.assert_array_equal(
            getattr(stacked, name).data, getattr(reference_stacked, name).data
        )
    for name in ("acceptance", "acceptance_off", "exposure"):
        np.testing.assert_allclose(
            getattr(stacked, name).data, getattr(reference_stacked, name).data, rtol=RTOL
        )
    np.testing.assert_allclose(
        stacked.edisp.edisp_map.data, reference_stacked.edisp.edisp_map.data, rtol=1e-10
    )


@pytest.mark.slow
def test_crab_log_parabola_from_the_store_equals_gammapys(
    crab_run: dict[str, Any], crab_reference: Any
) -> None:
    mine = _fit_log_parabola(read_datasets(crab_run["store"]))
    theirs = _fit_log_parabola(crab_reference)
    assert mine.keys() == {"amplitude", "alpha", "beta"}
    for name, value in theirs.items():
        assert mine[name] == pytest.approx(value, rel=1e-6), name
    # and it is the Crab: alpha about 2.4-2.8 at 1 TeV, amplitude some 3-4e-11 /cm2/s/TeV
    assert 2.0 < mine["alpha"] < 3.0 and 1e-11 < mine["amplitude"] < 1e-10


@pytest.mark.slow
def test_truncated_run_fails_alone_where_gammapy_stops(crab_run: dict[str, Any]) -> None:
    summary = crab_run["summary"]
    assert (summary.succeeded, summary.failed) == (4, 1), summary.failures
    (failure,) = summary.failures
    assert Path(crab_run["bad"]).name in str(failure)
    assert {d.name for d in read_datasets(crab_run["store"])} == {
        "23523",
        "23526",
        "23559",
        "23592",
    }
    # gammapy's own DatasetsMaker over the same five files stops the whole run
    with pytest.raises(Exception) as raised:  # whatever gammapy or astropy raise
        _gammapy_reference([*crab_run["files"], crab_run["bad"]], point_like=False)
    assert not isinstance(raised.value, AssertionError)


# ------------------------------------------------------- point-like IRFs with RAD_MAX


@pytest.mark.slow
def test_point_like_rad_max_equals_gammapys_own_reduction(client: Any, tmp_path: Path) -> None:
    paths = write_observations(
        tmp_path / "pointlike",
        4,
        seed=7,
        n_events=4000,
        source_counts=800,
        point_like_irfs=True,
    )
    files = [str(p) for p in paths]
    store = tmp_path / "pointlike.zarr"
    summary = esap_dask.map_observations(
        "gammapy-spectrum", files, store, client=client, progress=False
    )
    assert summary.failed == 0, summary.failures
    import xarray as xr

    ds = xr.open_zarr(store)
    assert ds["point_like"].values.all() and not ds["containment_correction"].values.any()
    assert np.isnan(ds["on_radius"].values).all()
    assert (ds["n_off_regions"].values == DEFAULTS["n_off_regions"]).all()
    np.testing.assert_allclose(ds["on_ra"].values, DEFAULT_TARGET[0])
    assert ds["counts"].dims == ("obs", "energy") and ds["counts"].attrs["units"] == "count"
    assert ds["edisp"].dims == ("obs", "energy_true", "energy")
    assert ds["exposure"].attrs["units"] == "m2 s" and ds["energy"].attrs["units"] == "TeV"

    reference = _gammapy_reference(files, point_like=True)
    mine, theirs = _by_obs_id(read_datasets(store)), _by_obs_id(reference)
    assert mine.keys() == theirs.keys() == {1, 2, 3, 4}
    for obs_id in mine:
        _assert_same(mine[obs_id], theirs[obs_id])
        assert mine[obs_id].counts.data.sum() > 0 and mine[obs_id].counts_off.data.sum() > 0
