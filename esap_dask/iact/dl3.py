"""Per-observation IACT science products from a GADF event list, and their stacking.

The geometry works on the sphere where it matters: event-to-region tests use the
exact angular separation (Vincenty's formula), and maps use the gnomonic
(tangent-plane, ``TAN``) projection around a chosen centre, with ``x`` pointing
east (increasing RA) and ``y`` north, both in degrees.

On/Off analysis (the reflected-regions method): the On region is a circle of
radius ``r`` around the target; Off regions are circles of the same radius at
the same angular offset from the pointing as the target, rotated about the
pointing, so that the radially symmetric camera acceptance is the same in every
region and ``alpha = 1 / n_off_regions``. Off regions do not overlap each other
and keep ``off_gap`` degrees from the edge of the On region; they are placed
symmetrically around the position opposite the target. Significance is Li & Ma
(1983, ApJ 272, 317) equation 17.

Examples
--------
>>> from esap_dask.iact.gadf import read_events
>>> events = read_events("hess_dl3_dr1_obs_id_023523.fits.gz")  # doctest: +SKIP
>>> products = observation_products(events)                     # doctest: +SKIP
>>> products["significance"]                                    # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from esap_dask.iact.gadf import EventList

__all__ = [
    "FLAGS",
    "angular_separation",
    "li_ma_significance",
    "observation_products",
    "project",
    "rate_outliers",
    "reflected_regions",
    "stack",
    "stacked_significance",
    "unproject",
]

#: Quality flags, in the order of the ``flag`` dimension of the products.
FLAGS = (
    "short_livetime",
    "missing_irfs",
    "rate_outlier",
    "no_off_regions",
    "light_curve_truncated",
)


def angular_separation(ra1: Any, dec1: Any, ra2: Any, dec2: Any) -> np.ndarray:
    """Great-circle distance in degrees between (ra1, dec1) and (ra2, dec2), in degrees.

    Vincenty's formula: accurate at all distances, including very small ones.
    """
    lon1, lat1, lon2, lat2 = (
        np.radians(np.asarray(a, dtype=np.float64)) for a in (ra1, dec1, ra2, dec2)
    )
    dlon = lon2 - lon1
    s1, c1 = np.sin(lat1), np.cos(lat1)
    s2, c2 = np.sin(lat2), np.cos(lat2)
    num1 = c2 * np.sin(dlon)
    num2 = c1 * s2 - s1 * c2 * np.cos(dlon)
    den = s1 * s2 + c1 * c2 * np.cos(dlon)
    return np.degrees(np.arctan2(np.hypot(num1, num2), den))


def project(ra: Any, dec: Any, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic (TAN) projection about (ra0, dec0): tangent-plane (x east, y north) in degrees."""
    ra_r, dec_r = (
        np.radians(np.asarray(ra, dtype=np.float64)),
        np.radians(np.asarray(dec, dtype=np.float64)),
    )
    a0, d0 = np.radians(ra0), np.radians(dec0)
    dra = ra_r - a0
    cosc = np.sin(d0) * np.sin(dec_r) + np.cos(d0) * np.cos(dec_r) * np.cos(dra)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.cos(dec_r) * np.sin(dra) / cosc
        y = (np.cos(d0) * np.sin(dec_r) - np.sin(d0) * np.cos(dec_r) * np.cos(dra)) / cosc
    behind = cosc <= 0
    x = np.where(behind, np.nan, x)
    y = np.where(behind, np.nan, y)
    return np.degrees(x), np.degrees(y)


def unproject(x: Any, y: Any, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`project`: (ra, dec) in degrees of tangent-plane (x, y) in degrees."""
    xr, yr = (
        np.radians(np.asarray(x, dtype=np.float64)),
        np.radians(np.asarray(y, dtype=np.float64)),
    )
    a0, d0 = np.radians(ra0), np.radians(dec0)
    rho = np.hypot(xr, yr)
    c = np.arctan(rho)
    sinc, cosc = np.sin(c), np.cos(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        dec = np.arcsin(cosc * np.sin(d0) + np.where(rho > 0, yr * sinc * np.cos(d0) / rho, 0.0))
    ra = a0 + np.arctan2(xr * sinc, rho * np.cos(d0) * cosc - yr * np.sin(d0) * sinc)
    return np.degrees(ra) % 360.0, np.degrees(dec)


def reflected_regions(
    ra_on: float,
    dec_on: float,
    ra_pnt: float,
    dec_pnt: float,
    radius: float,
    *,
    max_regions: int = 10,
    off_gap: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (ra, dec in degrees) of the reflected Off regions for an On circle.

    Parameters
    ----------
    ra_on, dec_on
        Centre of the On region.
    ra_pnt, dec_pnt
        The pointing: Off regions are the On region rotated about it.
    radius
        Radius of the On and Off circles, degrees.
    max_regions
        At most this many Off regions (``alpha >= 1 / max_regions``).
    off_gap
        Minimum distance between the edges of the On region and of any Off region, degrees.

    Returns
    -------
    ra, dec
        Arrays of Off-region centres; empty when the target is too close to the
        pointing for any region to fit.
    """
    offset = float(angular_separation(ra_pnt, dec_pnt, ra_on, dec_on))
    if not np.isfinite(offset) or offset <= 0 or max_regions < 1:
        return np.empty(0), np.empty(0)

    def step(separation: float) -> float:
        """Rotation angle (radians) at which two centres at ``offset`` are ``separation`` apart."""
        d, s = np.radians(offset), np.radians(separation)
        cos_angle = (np.cos(s) - np.cos(d) ** 2) / np.sin(d) ** 2
        return float(np.arccos(cos_angle)) if cos_angle >= -1 else np.inf

    from_on = step(2 * radius + off_gap)
    between = step(2 * radius) * (1 + 1e-9)
    if not np.isfinite(from_on) or not np.isfinite(between):
        return np.empty(0), np.empty(0)
    room = 2 * np.pi - 2 * from_on
    if room < 0:
        return np.empty(0), np.empty(0)
    n = min(max_regions, int(np.floor(room / between + 1e-12)) + 1)
    angles = np.pi + (np.arange(n) - (n - 1) / 2) * between
    x_on, y_on = project(ra_on, dec_on, ra_pnt, dec_pnt)
    cos_a, sin_a = np.cos(angles), np.sin(angles)
    x = x_on * cos_a - y_on * sin_a
    y = x_on * sin_a + y_on * cos_a
    return unproject(x, y, ra_pnt, dec_pnt)


def li_ma_significance(n_on: Any, n_off: Any, alpha: Any) -> np.ndarray:
    """Li & Ma (1983) equation 17 significance, signed by the excess ``n_on - alpha n_off``.

    Zero counts are handled (``0 ln 0 = 0``); NaN where ``alpha`` is not positive.
    """
    n_on = np.asarray(n_on, dtype=np.float64)
    n_off = np.asarray(n_off, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    total = n_on + n_off
    with np.errstate(divide="ignore", invalid="ignore"):
        term_on = np.where(
            n_on > 0, n_on * np.log((1 + alpha) / alpha * n_on / np.where(total > 0, total, 1)), 0.0
        )
        term_off = np.where(
            n_off > 0, n_off * np.log((1 + alpha) * n_off / np.where(total > 0, total, 1)), 0.0
        )
        ts = 2.0 * (term_on + term_off)
    significance = np.sign(n_on - alpha * n_off) * np.sqrt(np.clip(ts, 0.0, None))
    return np.where(alpha > 0, significance, np.nan)


def _in_circles(ra: np.ndarray, dec: np.ndarray, ra_c: Any, dec_c: Any, radius: float) -> Any:
    """Boolean (n_regions, n_events): event strictly inside each circle.

    Only events within ``radius`` in declination of a centre (a necessary condition)
    get the exact separation computed.
    """
    ra_c, dec_c = np.atleast_1d(ra_c), np.atleast_1d(dec_c)
    inside = np.zeros((len(ra_c), len(ra)), dtype=bool)
    for i, (rc, dc) in enumerate(zip(ra_c, dec_c, strict=True)):
        near = np.flatnonzero(np.abs(dec - dc) <= radius)
        inside[i, near] = angular_separation(rc, dc, ra[near], dec[near]) < radius
    return inside


def _gti_overlap(lo: np.ndarray, hi: np.ndarray, start: np.ndarray, stop: np.ndarray) -> Any:
    """Seconds of each [lo, hi) bin inside the GTIs."""
    overlap = np.minimum(hi[:, None], stop[None, :]) - np.maximum(lo[:, None], start[None, :])
    return np.clip(overlap, 0.0, None).sum(axis=1)


def _in_gti(time: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    inside = np.zeros(len(time), dtype=bool)
    for lo, hi in zip(start, stop, strict=True):
        inside |= (time >= lo) & (time < hi)
    return inside


def observation_products(
    events: EventList,
    *,
    energy_min: float = 0.1,
    energy_max: float = 100.0,
    energy_bins: int = 20,
    map_size: float = 4.0,
    map_binsz: float = 0.04,
    map_center: str = "pointing",
    on_radius: float = 0.11,
    target_ra: float = float("nan"),
    target_dec: float = float("nan"),
    max_off_regions: int = 10,
    off_gap: float = 0.1,
    time_bin: float = 120.0,
    time_bins: int = 15,
    min_livetime: float = 600.0,
    rate_nsigma: float = 5.0,
) -> dict[str, Any]:
    """All per-observation products of one event list (see ``pipelines/dl3_products.py``).

    On/Off counts and the counts map use every event of the EVENTS table (no
    energy cut); the ``*_energy`` spectra bin them in reconstructed energy.

    Raises
    ------
    ValueError
        When the target position is neither in the file (RA_OBJ/DEC_OBJ, or the
        obs-index) nor given as ``target_ra``/``target_dec``.
    """
    ev = events
    ra_t = target_ra if np.isfinite(target_ra) else ev.ra_obj
    dec_t = target_dec if np.isfinite(target_dec) else ev.dec_obj
    if not (np.isfinite(ra_t) and np.isfinite(dec_t)):
        raise ValueError(
            f"{ev.path}: no target position (no RA_OBJ/DEC_OBJ in the header or obs-index); "
            "give target_ra and target_dec (the dl3-products parameter target='RA,DEC')"
        )
    # On / Off
    in_on = _in_circles(ev.ra, ev.dec, ra_t, dec_t, on_radius)[0]
    ra_off, dec_off = reflected_regions(
        ra_t,
        dec_t,
        ev.ra_pnt,
        ev.dec_pnt,
        on_radius,
        max_regions=max_off_regions,
        off_gap=off_gap,
    )
    in_off = _in_circles(ev.ra, ev.dec, ra_off, dec_off, on_radius).any(axis=0)
    n_regions = len(ra_off)
    n_on, n_off = int(in_on.sum()), int(in_off.sum())
    alpha = 1.0 / n_regions if n_regions else np.nan
    excess = n_on - alpha * n_off if n_regions else np.nan
    # Energy spectra
    edges = np.geomspace(energy_min, energy_max, energy_bins + 1)
    counts_energy = np.histogram(ev.energy, edges)[0]
    on_energy = np.histogram(ev.energy[in_on], edges)[0]
    off_energy = np.histogram(ev.energy[in_off], edges)[0]
    # Counts map
    ra_c, dec_c = (ev.ra_pnt, ev.dec_pnt) if map_center == "pointing" else (ra_t, dec_t)
    npix = round(map_size / map_binsz)
    x, y = project(ev.ra, ev.dec, ra_c, dec_c)
    half = npix * map_binsz / 2
    ix = np.floor((x + half) / map_binsz)
    iy = np.floor((y + half) / map_binsz)
    ok = np.isfinite(ix) & np.isfinite(iy) & (ix >= 0) & (ix < npix) & (iy >= 0) & (iy < npix)
    flat = iy[ok].astype(np.int64) * npix + ix[ok].astype(np.int64)
    counts_map = np.bincount(flat, minlength=npix * npix).reshape(npix, npix)
    # Light curve within the GTIs
    t0 = float(ev.gti_start.min()) if len(ev.gti_start) else ev.tstart
    lo = t0 + time_bin * np.arange(time_bins)
    hi = lo + time_bin
    good_time = _in_gti(ev.time, ev.gti_start, ev.gti_stop)
    bin_index = np.floor((ev.time - t0) / time_bin)
    in_lc = good_time & (bin_index >= 0) & (bin_index < time_bins)
    idx = bin_index[in_lc].astype(np.int64)
    lc_counts = np.bincount(idx, minlength=time_bins)
    lc_on = np.bincount(idx[in_on[in_lc]], minlength=time_bins)
    lc_off = np.bincount(idx[in_off[in_lc]], minlength=time_bins)
    lc_livetime = _gti_overlap(lo, hi, ev.gti_start, ev.gti_stop) * ev.deadc
    truncated = bool(ev.gti_stop.max() > hi[-1]) if len(ev.gti_stop) else False
    # Quality (live time as gammapy computes it: GTI sum times 1 - dead-time fraction)
    gti_time = float(np.sum(ev.gti_stop - ev.gti_start))
    dead_fraction = 1.0 - ev.deadc
    livetime = gti_time * (1.0 - dead_fraction)
    full = lc_livetime >= 0.5 * time_bin * ev.deadc
    rate_outlier = False
    if full.sum() >= 2 and lc_counts[full].sum() > 0:
        expected = lc_counts[full].sum() * lc_livetime[full] / lc_livetime[full].sum()
        chi = (lc_counts[full] - expected) / np.sqrt(expected)
        rate_outlier = bool(np.any(np.abs(chi) > rate_nsigma))
    irfs = np.array([ev.irfs.get(k, False) for k in ("aeff", "edisp", "psf", "bkg")])
    flags = np.array(
        [
            livetime < min_livetime,
            not (irfs[0] and irfs[1]),
            rate_outlier,
            n_regions == 0,
            truncated,
        ]
    )
    mjd = ev.mjdref
    return {
        "obs_id": ev.obs_id,
        "target": ev.target,
        "ra_pnt": ev.ra_pnt,
        "dec_pnt": ev.dec_pnt,
        "ra_obj": ra_t,
        "dec_obj": dec_t,
        "offset": float(angular_separation(ev.ra_pnt, ev.dec_pnt, ra_t, dec_t)),
        "zenith": ev.zenith,
        "livetime": livetime,
        "livetime_header": ev.livetime,
        "ontime": gti_time,
        "deadc": ev.deadc,
        "dead_fraction": dead_fraction,
        "tstart": ev.tstart,
        "tstop": ev.tstop,
        "mjd_start": mjd + ev.tstart / 86400.0,
        "mjd_stop": mjd + ev.tstop / 86400.0,
        "n_events": ev.n_events,
        "rate": ev.n_events / livetime if livetime > 0 else np.nan,
        "n_on": n_on,
        "n_off": n_off,
        "n_off_regions": n_regions,
        "alpha": alpha,
        "excess": excess,
        "significance": float(li_ma_significance(n_on, n_off, alpha)),
        "counts_energy": counts_energy,
        "on_energy": on_energy,
        "off_energy": off_energy,
        "map_ra": float(ra_c),
        "map_dec": float(dec_c),
        "counts_map": counts_map,
        "lc_mjd": mjd + (lo + hi) / 2 / 86400.0,
        "lc_counts": lc_counts,
        "lc_on": lc_on,
        "lc_off": lc_off,
        "lc_livetime": lc_livetime,
        "irf_present": irfs,
        "flags": flags,
        "good": not flags.any(),
    }


def done_mask(ds: Any) -> np.ndarray:
    """Which observations of ``ds`` (along ``obs``) are done, by the ledger of its store.

    The status comes from a ``ledger_status`` variable when ``ds`` has one (a store of
    the earlier layout, or a dataset joined with its ledger), else from the ledger of
    the store ``xr.open_zarr`` read ``ds`` from (``ds.encoding["source"]``), matched by
    observation id. A dataset from no store counts every observation as done; a store
    whose ledger cannot be read (a remote store needing credentials) too, with a
    warning.
    """
    from esap_dask.engine.ledger import DONE, read_ledger  # zarr: not to load the pipeline

    n = ds.sizes["obs"]
    if "ledger_status" in ds:
        return np.asarray(ds["ledger_status"]) == DONE
    source = getattr(ds, "encoding", {}).get("source")
    if not source:
        return np.ones(n, dtype=bool)
    try:
        ledger = read_ledger(str(source))
    except Exception as err:
        warnings.warn(
            f"{source}: could not read the store's ledger ({type(err).__name__}: {err}); "
            "counting every observation as done: pass where=esap_dask.ledger(store, "
            "storage_options=...).status.eq('done') to leave out the others",
            stacklevel=3,
        )
        return np.ones(n, dtype=bool)
    done = dict(zip(ledger.ids.tolist(), (ledger.status == DONE).tolist(), strict=True))
    return np.fromiter((done.get(str(i), False) for i in ds["obs"].values), bool, count=n)


def stack(ds: Any, where: Any = None) -> Any:
    """Sum the products of the selected observations of a store opened with xarray.

    Parameters
    ----------
    ds
        ``xr.open_zarr(store)`` of a ``dl3-products`` run.
    where
        A boolean array or DataArray along ``obs`` (e.g. ``ds.good & (ds.target ==
        "Crab Nebula")``); default: all. Observations whose ledger status is not
        ``done`` (failed, pending) are always left out.

    Returns
    -------
    xarray.Dataset
        Summed counts (``n_on``, ``n_off``, ``counts_map``, ``counts_energy``, ...),
        ``livetime``, ``n_obs``; On/Off sums leave out observations without Off regions
        (``n_obs_onoff`` counts the others), the effective ``alpha``
        (``sum(alpha_i n_off_i) / sum(n_off_i)``), ``excess`` and the Li & Ma
        ``significance`` of the stacked counts. Summed counts maps show the sky only
        when the maps share a centre: run the pipeline with ``map_center="target"``
        for observations of one target.
    """
    import xarray as xr

    mask = done_mask(ds)
    if where is not None:
        chosen = where.values if hasattr(where, "values") else where
        mask &= np.broadcast_to(np.asarray(chosen, dtype=bool), mask.shape)
    sel = ds.isel(obs=np.flatnonzero(mask))
    totals = ["n_events", "livetime", "counts_energy", "counts_map"]
    out = xr.Dataset({name: sel[name].sum("obs") for name in totals if name in sel})
    # On/Off sums only over observations that have Off regions (alpha is defined)
    onoff = sel.isel(obs=np.flatnonzero(np.asarray(sel["n_off_regions"]) > 0))
    for name in ("n_on", "n_off", "on_energy", "off_energy"):
        if name in onoff:
            out[name] = onoff[name].sum("obs")
    out = out.compute()
    weighted_off = float((onoff["alpha"] * onoff["n_off"]).sum("obs"))
    n_off = float(out["n_off"])
    alpha = weighted_off / n_off if n_off > 0 else np.nan
    out["alpha"] = alpha
    out["excess"] = float(out["n_on"]) - weighted_off
    out["significance"] = float(li_ma_significance(float(out["n_on"]), n_off, alpha))
    out["n_obs"] = sel.sizes["obs"]
    out["n_obs_onoff"] = onoff.sizes["obs"]
    out["significance"].attrs.update(units="sigma", description="Li & Ma (1983) eq. 17")
    return out


def stacked_significance(ds: Any, where: Any = None) -> float:
    """Li & Ma significance of the stacked On/Off counts (see :func:`stack`)."""
    return float(stack(ds, where)["significance"])


def rate_outliers(ds: Any, *, nsigma: float = 5.0, where: Any = None) -> Any:
    """Observations whose event rate is an outlier among the selected ones.

    A robust z-score: ``|rate - median| / (1.4826 MAD) > nsigma``. Returns a boolean
    DataArray along ``obs``.
    """
    rate = ds["rate"].load()  # one number per observation; medians need it in memory
    rate = rate.where(done_mask(ds))
    if where is not None:
        rate = rate.where(np.asarray(where.values if hasattr(where, "values") else where, bool))
    median = rate.median("obs")
    mad = 1.4826 * abs(rate - median).median("obs")
    return abs(rate - median) > nsigma * mad
