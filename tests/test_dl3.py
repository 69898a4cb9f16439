"""The science of dl3-products: geometry, reflected regions, Li & Ma, light curve, flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from esap_dask.iact.dl3 import (
    FLAGS,
    angular_separation,
    li_ma_significance,
    observation_products,
    project,
    rate_outliers,
    reflected_regions,
    stack,
    unproject,
)
from esap_dask.iact.gadf import read_events
from esap_dask.iact.synthetic import write_observations

RNG = np.random.default_rng(3)


def test_angular_separation_matches_astropy() -> None:
    ra1, dec1 = RNG.uniform(0, 360, 200), RNG.uniform(-89, 89, 200)
    ra2, dec2 = ra1 + RNG.normal(0, 2, 200), np.clip(dec1 + RNG.normal(0, 2, 200), -90, 90)
    expected = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg
    np.testing.assert_allclose(angular_separation(ra1, dec1, ra2, dec2), expected, atol=1e-12)


@pytest.mark.parametrize("dec0", [-80.0, -22.0, 0.0, 45.0, 89.0])
def test_tangent_projection_round_trips_and_is_gnomonic(dec0: float) -> None:
    ra0 = 120.0
    x, y = RNG.uniform(-3, 3, 500), RNG.uniform(-3, 3, 500)
    ra, dec = unproject(x, y, ra0, dec0)
    x2, y2 = project(ra, dec, ra0, dec0)
    np.testing.assert_allclose(x2, x, atol=1e-9)
    np.testing.assert_allclose(y2, y, atol=1e-9)
    # gnomonic: the distance from the centre is arctan of the tangent-plane radius
    rho = np.radians(np.hypot(x, y))
    np.testing.assert_allclose(
        angular_separation(ra0, dec0, ra, dec), np.degrees(np.arctan(rho)), atol=1e-9
    )
    # +x is east (increasing RA), +y north
    ra_e, _ = unproject(0.5, 0.0, ra0, dec0)
    _, dec_n = unproject(0.0, 0.5, ra0, dec0)
    assert (ra_e - ra0) % 360 < 180 and dec_n > dec0


@pytest.mark.parametrize("offset", [0.4, 0.5, 0.7, 1.5])
def test_reflected_regions_geometry(offset: float) -> None:
    ra_p, dec_p, radius, gap = 83.6, 22.0, 0.11, 0.1
    ra_on, dec_on = (float(v) for v in unproject(0.3 * offset, 0.954 * offset, ra_p, dec_p))
    true_offset = float(angular_separation(ra_p, dec_p, ra_on, dec_on))
    ra, dec = reflected_regions(ra_on, dec_on, ra_p, dec_p, radius, max_regions=50, off_gap=gap)
    assert len(ra) >= 3
    # same offset as the On region: same acceptance
    np.testing.assert_allclose(angular_separation(ra_p, dec_p, ra, dec), true_offset, atol=1e-9)
    # no overlap with each other, and off_gap from the On region
    sep = angular_separation(ra[:, None], dec[:, None], ra[None, :], dec[None, :])
    assert sep[~np.eye(len(ra), dtype=bool)].min() >= 2 * radius - 1e-9
    assert angular_separation(ra_on, dec_on, ra, dec).min() >= 2 * radius + gap - 1e-9
    # symmetric about the position opposite the target: the mean direction is opposite
    x, y = project(ra, dec, ra_p, dec_p)
    x_on, y_on = project(ra_on, dec_on, ra_p, dec_p)
    assert np.dot([x.mean(), y.mean()], [x_on, y_on]) < 0
    assert len(reflected_regions(ra_on, dec_on, ra_p, dec_p, radius, max_regions=4)[0]) == 4


def test_no_reflected_regions_when_the_target_is_at_the_pointing() -> None:
    assert len(reflected_regions(10.0, 20.0, 10.0, 20.0, 0.1)[0]) == 0
    assert len(reflected_regions(10.0, 20.15, 10.0, 20.0, 0.1)[0]) == 0


def test_li_ma_significance_values() -> None:
    # no excess -> 0; the sign follows the excess
    assert li_ma_significance(10, 100, 0.1) == 0
    assert li_ma_significance(5, 100, 0.1) < 0 < li_ma_significance(15, 100, 0.1)
    # Li & Ma eq. 17 written out for one case
    n_on, n_off, a = 189.0, 188.0, 0.1
    expected = np.sqrt(2) * np.sqrt(
        n_on * np.log((1 + a) / a * n_on / (n_on + n_off))
        + n_off * np.log((1 + a) * n_off / (n_on + n_off))
    )
    assert li_ma_significance(n_on, n_off, a) == pytest.approx(expected, rel=1e-12)
    # large counts: close to excess / error
    big = li_ma_significance(11_000, 100_000, 0.1)
    assert big == pytest.approx(1000 / np.sqrt(11_000 + 0.01 * 100_000), rel=0.05)
    # zero counts are finite; no Off regions is NaN
    assert li_ma_significance(0, 10, 0.5) < 0
    assert li_ma_significance(4, 0, 0.5) > 0
    assert np.isnan(li_ma_significance(4, 0, np.nan))


def test_products_count_every_event_once(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1, seed=4, n_events=4000, source_counts=300)
    events = read_events(path)
    p = observation_products(events, time_bin=60.0, time_bins=30, map_size=6.0, map_binsz=0.05)
    assert p["n_events"] == 4000 == p["lc_counts"].sum()
    assert p["counts_map"].sum() == 4000  # the 2.5 deg field fits in a 6 deg map
    assert p["counts_energy"].sum() == 4000  # energies are 0.2-100 TeV
    assert p["on_energy"].sum() == p["n_on"] and p["off_energy"].sum() == p["n_off"]
    assert p["lc_on"].sum() == p["n_on"] and p["lc_off"].sum() == p["n_off"]
    assert p["lc_livetime"].sum() == pytest.approx(p["livetime"])
    assert p["alpha"] == pytest.approx(1 / p["n_off_regions"])
    assert p["excess"] == pytest.approx(p["n_on"] - p["alpha"] * p["n_off"])
    assert p["rate"] == pytest.approx(4000 / p["livetime"])
    assert p["counts_map"].shape == (120, 120)
    flags = dict(zip(FLAGS, p["flags"], strict=True))
    assert flags["missing_irfs"] and not flags["short_livetime"] and not flags["rate_outlier"]
    assert not p["good"]


def test_light_curve_respects_gtis_and_flags_a_burst(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1, seed=9, n_events=3000)
    events = read_events(path)
    t0 = events.gti_start[0]
    # two GTIs with a hole from 600 to 900 s, and a burst of 400 events at 1200-1210 s
    events.gti_start = np.array([t0, t0 + 900.0])
    events.gti_stop = np.array([t0 + 600.0, t0 + 1680.0])
    burst = t0 + 1200.0 + RNG.random(400) * 10
    events.time = np.concatenate([events.time, burst])
    for name in ("ra", "dec", "energy"):
        setattr(events, name, np.concatenate([getattr(events, name), getattr(events, name)[:400]]))
    p = observation_products(events, time_bin=100.0, time_bins=20, min_livetime=2000.0)
    inside = ((events.time >= t0) & (events.time < t0 + 600)) | (
        (events.time >= t0 + 900) & (events.time < t0 + 1680)
    )
    assert p["lc_counts"].sum() == inside.sum()
    assert p["lc_counts"][6:9].sum() == 0 and p["lc_livetime"][6:9].sum() == 0
    assert p["ontime"] == pytest.approx(600 + 780)
    flags = dict(zip(FLAGS, p["flags"], strict=True))
    assert flags["rate_outlier"] and flags["short_livetime"]


def test_target_is_required(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1)
    events = read_events(path)
    events.ra_obj = events.dec_obj = float("nan")
    with pytest.raises(ValueError, match="target_ra and target_dec"):
        observation_products(events)
    assert observation_products(events, target_ra=83.6, target_dec=22.0)["n_on"] >= 0


def test_rate_outliers_across_observations() -> None:
    import xarray as xr

    rate = np.array([10.0, 10.5, 9.6, 10.2, 9.9, 30.0, 0.0])
    status = np.array([1, 1, 1, 1, 1, 1, 2], dtype="i1")  # the last one failed: not judged
    ds = xr.Dataset({"rate": ("obs", rate), "ledger_status": ("obs", status)}).chunk(obs=3)
    flagged = rate_outliers(ds, nsigma=5)
    assert flagged.values.tolist() == [False] * 5 + [True, False]
    assert not rate_outliers(ds, nsigma=5, where=rate < 20).values.any()
    assert not rate_outliers(ds, nsigma=5, where=ds.rate < 20).values.any()


def test_stack_sums_selected_observations_and_leaves_out_those_without_off() -> None:
    import xarray as xr

    ds = xr.Dataset(
        {
            "n_on": ("obs", [30, 40, 500, 7]),
            "n_off": ("obs", [100, 150, 0, 20]),
            "n_off_regions": ("obs", [10, 5, 0, 4]),
            "alpha": ("obs", [0.1, 0.2, np.nan, 0.25]),
            "n_events": ("obs", [1000, 1100, 1200, 900]),
            "livetime": ("obs", [1600.0, 1500.0, 1700.0, 1000.0]),
            "counts_map": (("obs", "y", "x"), np.ones((4, 2, 2), dtype=int)),
            "ledger_status": ("obs", np.array([1, 1, 1, 2], dtype="i1")),  # the last failed
        }
    )
    total = stack(ds.chunk(obs=2))  # lazy, as xr.open_zarr gives it
    assert int(total.n_obs) == 3 and int(total.n_obs_onoff) == 2
    assert int(total.n_events) == 3300 and int(total.counts_map.sum()) == 12
    assert int(total.n_on) == 70 and int(total.n_off) == 250
    assert float(total.alpha) == pytest.approx((0.1 * 100 + 0.2 * 150) / 250)
    assert float(total.excess) == pytest.approx(70 - 40)
    assert float(total.significance) == pytest.approx(li_ma_significance(70, 250, 40 / 250))
    first = stack(ds, where=[True, False, False, False])
    assert int(first.n_on) == 30 and float(first.alpha) == pytest.approx(0.1)


def test_stack_of_a_store_leaves_out_what_its_ledger_says_failed(
    tmp_path: Path, client: object
) -> None:
    """The products no longer carry the ledger: stack reads it from the store they came from."""
    import xarray as xr

    import esap_dask

    paths = [str(p) for p in write_observations(tmp_path / "obs", 3, seed=5, n_events=400)]
    bad = tmp_path / "obs" / "not_fits.fits"
    bad.write_text("not a FITS file\n" * 50)
    store = tmp_path / "dl3.zarr"
    summary = esap_dask.map_observations(
        "dl3-products", [*paths, str(bad)], store, client=client, progress=False
    )
    assert (summary.succeeded, summary.failed) == (3, 1)
    ds = xr.open_zarr(store)
    assert "ledger_status" not in ds and ds.sizes["obs"] == 4
    assert int(stack(ds).n_obs) == 3, "the failed observation is left out"
    assert int(stack(ds.load()).n_obs) == 3
    assert not bool(rate_outliers(ds).sel(obs="not_fits.fits"))
