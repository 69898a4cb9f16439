"""dl3-products on the 105 H.E.S.S. DL3 DR1 observations, checked against gammapy.

Data: ../shared/data/hess-dl3-dr1 ("HESS DL3 DR1, H.E.S.S. collaboration"), read in
place. gammapy is a test-only dependency.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import esap_dask
from esap_dask.iact.dl3 import li_ma_significance, reflected_regions, stack
from esap_dask.iact.gadf import select_observations

HESS = Path(__file__).parents[2] / "shared" / "data" / "hess-dl3-dr1"
ON_RADIUS = 0.11
PARAMS = {"on_radius": ON_RADIUS, "map_center": "pointing", "map_size": 4.0, "map_binsz": 0.04}
pytestmark = pytest.mark.slow  # a cluster, 105 files and gammapy: about 20 s


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def observations() -> list[esap_dask.Observation]:
    index = HESS / "obs-index.fits.gz"
    if not index.is_file():
        pytest.fail(f"the H.E.S.S. DL3 DR1 data is missing: expected {index}")
    return select_observations(index)


@pytest.fixture(scope="module")
def run(
    client: Any, observations: list[esap_dask.Observation], tmp_path_factory: Any
) -> tuple[esap_dask.RunSummary, xr.Dataset]:
    store = tmp_path_factory.mktemp("hess") / "hess.zarr"
    summary = esap_dask.map_observations(
        "dl3-products",
        observations,
        store,
        client=client,
        progress=False,
        params=PARAMS,
    )
    return summary, xr.open_zarr(store).load()


@pytest.fixture(scope="module")
def gammapy_counts(observations: list[esap_dask.Observation], run: Any) -> dict[int, dict]:
    """Per obs_id, as gammapy gives them: On counts in the same circle, Off counts in the
    same reflected circles, the counts map on the same TAN grid, events and live time."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from gammapy.data import DataStore
    from gammapy.maps import Map, WcsGeom
    from regions import CircleSkyRegion

    _, ds = run
    targets = {
        int(i): (float(r), float(d))
        for i, r, d in zip(ds.obs_id.values, ds.ra_obj.values, ds.dec_obj.values, strict=True)
    }
    datastore = DataStore.from_dir(HESS)
    radius = ON_RADIUS * u.deg
    counts = {}
    for obs in datastore.get_observations(sorted(targets), required_irf=[]):
        events = obs.events
        obs_id = int(obs.obs_id)
        meta = events.table.meta
        center = SkyCoord(*targets[obs_id], unit="deg", frame="icrs")
        pointing = SkyCoord(meta["RA_PNT"], meta["DEC_PNT"], unit="deg", frame="icrs")
        off = reflected_regions(*targets[obs_id], meta["RA_PNT"], meta["DEC_PNT"], ON_RADIUS)
        in_off = [
            len(events.select_region(CircleSkyRegion(SkyCoord(ra, dec, unit="deg"), radius)).table)
            for ra, dec in zip(*off, strict=True)
        ]
        geom = WcsGeom.create(
            skydir=pointing, binsz=PARAMS["map_binsz"], width=PARAMS["map_size"], proj="TAN"
        )
        counts_map = Map.from_geom(geom)
        counts_map.fill_events(events)
        counts[obs_id] = {
            "n_on": len(events.select_region(CircleSkyRegion(center, radius)).table),
            "n_off": sum(in_off),
            "counts_map": counts_map.data[:, ::-1],  # gammapy's x grows to the west
            "n_events": len(events.table),
            "livetime": float(obs.observation_live_time_duration.to_value("s")),
            "target": (float(meta["RA_OBJ"]), float(meta["DEC_OBJ"])),
            "pointing": (float(meta["RA_PNT"]), float(meta["DEC_PNT"])),
        }
    return counts


def test_all_105_observations_are_processed(run: Any, observations: list) -> None:
    summary, ds = run
    assert summary.total == summary.succeeded == 105 and summary.failed == 0, summary.failures
    assert list(ds.obs.values) == [o.id for o in observations]
    assert (esap_dask.ledger(ds.encoding["source"]).status == "done").all()
    assert ds.sizes["obs"] == 105 and len(np.unique(ds.obs_id)) == 105
    # the files' OBS_ID is an integer coordinate along obs: select a run by it
    assert "obs_id" in ds.coords and ds.obs_id.dtype == np.int64
    crab_run = ds.set_xindex("obs_id").sel(obs_id=23523)
    assert crab_run.obs.item() == "hess_dl3_dr1_obs_id_023523.fits.gz"
    assert int(crab_run.n_events) > 0
    assert ds.counts_map.dims == ("obs", "y", "x") and ds.x.attrs["units"] == "deg"
    assert ds.livetime.attrs["units"] == "s" and ds.significance.attrs["description"]
    assert (ds.n_events > 0).all() and (ds.livetime > 0).all()


def test_counts_events_and_livetime_agree_with_gammapy(run: Any, gammapy_counts: dict) -> None:
    _, ds = run
    assert len(gammapy_counts) == 105
    for row in range(ds.sizes["obs"]):
        r = ds.isel(obs=row)
        g = gammapy_counts[int(r.obs_id)]
        where = f"obs_id {int(r.obs_id)}"
        assert (float(r.ra_obj), float(r.dec_obj)) == g["target"], where
        assert (float(r.ra_pnt), float(r.dec_pnt)) == g["pointing"], where
        assert int(r.n_events) == g["n_events"], where
        assert int(r.n_on) == g["n_on"], where
        assert int(r.n_off) == g["n_off"], where
        np.testing.assert_array_equal(r.counts_map.values, g["counts_map"], err_msg=where)
        # same formula (GTI sum x (1 - dead-time fraction)); gammapy sums the GTIs through
        # astropy Time (MJD two-double arithmetic), which differs in the last bits only
        assert float(r.livetime) == pytest.approx(g["livetime"], rel=1e-13, abs=0), where
    assert sum(g["n_on"] for g in gammapy_counts.values()) == int(ds.n_on.sum())


def test_stacked_crab_significance_is_li_ma_of_those_counts(run: Any, gammapy_counts: dict) -> None:
    from gammapy.stats import WStatCountsStatistic

    _, ds = run
    crab = (ds.target == "Crab Nebula").values
    assert crab.sum() == 4
    total = stack(ds, crab)
    n_on = sum(gammapy_counts[int(i)]["n_on"] for i in ds.obs_id.values[crab])
    n_off = int(ds.n_off.values[crab].sum())
    alpha = float((ds.alpha * ds.n_off).values[crab].sum()) / n_off
    assert int(total.n_on) == n_on and float(total.alpha) == pytest.approx(alpha)
    expected = float(WStatCountsStatistic(n_on=n_on, n_off=n_off, alpha=alpha).sqrt_ts)
    assert float(total.significance) == pytest.approx(expected, rel=1e-9)
    assert float(total.significance) == pytest.approx(
        float(li_ma_significance(n_on, n_off, alpha)), rel=1e-12
    )
    assert float(total.significance) > 20  # the Crab is detected


def test_bad_files_are_reported_by_name_and_the_rest_runs(
    client: Any, observations: list, run: Any, tmp_path: Path
) -> None:
    good = [o.value for o in observations[:6]]
    truncated = tmp_path / "hess_truncated.fits.gz"
    truncated.write_bytes(gzip.compress(gzip.decompress(Path(good[0]).read_bytes())[:50_000]))
    text = tmp_path / "not_fits.fits"
    text.write_text("SIMPLE? no: a text file\n" * 100)
    files = [good[0], str(truncated), *good[1:3], str(text), *good[3:]]
    summary = esap_dask.map_observations(
        "dl3-products",
        files,
        tmp_path / "mixed.zarr",
        client=client,
        progress=False,
        params=PARAMS,
    )
    assert summary.succeeded == 6 and summary.failed == 2
    failed = {f["observation"]: f["message"] for f in summary.failures}
    assert set(failed) == {"hess_truncated.fits.gz", "not_fits.fits"}
    assert "hess_truncated.fits.gz: truncated" in failed["hess_truncated.fits.gz"]
    assert "not_fits.fits: not a FITS file" in failed["not_fits.fits"]
    mixed = xr.open_zarr(tmp_path / "mixed.zarr").load()
    status = esap_dask.ledger(tmp_path / "mixed.zarr").status
    assert status["not_fits.fits"] == "failed" and status[Path(good[3]).name] == "done"
    assert int(stack(mixed).n_obs) == 6, "stack leaves out the failed observations"
    _, full = run
    for path in good:
        name = Path(path).name
        assert int(mixed.n_on.sel(obs=name)) == int(full.n_on.sel(obs=name))
