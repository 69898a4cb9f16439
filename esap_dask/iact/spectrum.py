"""gammapy's own 1D spectral reduction per observation, and its datasets read back from a store.

Per observation file, :func:`spectrum_products` runs gammapy 2.x's makers exactly as
gammapy's 1D tutorials chain them:

1. ``SpectrumDatasetMaker(selection=["counts", "exposure", "edisp"],
   containment_correction=...)`` on an empty ``SpectrumDataset`` of a ``RegionGeom``
   (On region x reconstructed-energy axis) and a true-energy axis;
2. ``ReflectedRegionsBackgroundMaker``: for **full-enclosure IRFs** (H.E.S.S. DL3 DR1) the
   On region is a circle of ``on_radius`` and the Off regions come from gammapy's
   ``ReflectedRegionsFinder``; for **point-like IRFs with RAD_MAX** (MAGIC, LST-1,
   VERITAS releases) the On region is a ``PointSkyRegion`` -- gammapy then takes the On and
   Off radii from the file's ``RAD_MAX`` per energy -- and the Off regions come from
   ``WobbleRegionsFinder(n_off_regions)``; containment correction is not applicable there;
3. ``SafeMaskMaker(methods=["aeff-max"], aeff_percent=10)``.

The result is a ``SpectrumDatasetOnOff``, stored as arrays along named energy dimensions
(``energy``: reconstructed, ``energy_true``) with their bin edges as coordinates
(``energy_edges``, ``energy_true_edges``, TeV). :func:`read_datasets` rebuilds the
``SpectrumDatasetOnOff`` objects from a store (a gammapy ``Datasets``), or their stack.

Defaults
--------
Those of gammapy's "Spectral analysis" tutorial (gammapy docs, tutorials/analysis-1d/
spectral_analysis; ``examples/tutorials/analysis-1d/spectral_analysis.py`` of the gammapy
repository), which reduces the same four H.E.S.S. DR1 Crab runs:

- reconstructed energy: ``MapAxis.from_energy_bounds(0.1, 40, nbin=10, per_decade=True,
  unit="TeV", name="energy")`` (27 bins);
- true energy: ``MapAxis.from_energy_bounds(0.05, 100, nbin=20, per_decade=True,
  unit="TeV", name="energy_true")`` (67 bins);
- On region: a circle of 0.11 deg (``Angle("0.11 deg")``) -- here at each file's target
  (``RA_OBJ``, ``DEC_OBJ`` of its EVENTS header) unless ``target`` is given;
- ``containment_correction=True`` (``auto`` here: True for full-enclosure IRFs, False for
  point-like ones, where gammapy refuses it);
- ``SafeMaskMaker(methods=["aeff-max"], aeff_percent=10)``.

Two deliberate differences: the tutorial's exclusion mask (a 0.5 deg circle at the AGN
RGB J0521+212 near the Crab) is specific to that field, so no exclusion is the default
(``exclusion`` takes circles); and the number of wobble Off regions for point-like IRFs,
3, is that of gammapy's "Spectral analysis with energy-dependent directional cuts"
tutorial (``spectral_analysis_rad_max.py``).

gammapy is the optional extra ``gammapy`` (``pip install 'esap-dask[gammapy]'``); it is
imported inside the functions, so the pipeline catalog loads without it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from esap_dask.extras import require
from esap_dask.iact.targets import parse_target
from esap_dask.pipeline import Coordinate, Parameter, ParameterError, Schema, Variable

__all__ = [
    "DEFAULTS",
    "PARAMETERS",
    "energy_axis",
    "energy_edges",
    "make_makers",
    "read_datasets",
    "spectrum_products",
    "spectrum_schema",
]

#: The pipeline's default parameters (see the module docstring for their source).
DEFAULTS: dict[str, Any] = {
    "energy_min": 0.1,
    "energy_max": 40.0,
    "energy_per_decade": 10,
    "energy_true_min": 0.05,
    "energy_true_max": 100.0,
    "energy_true_per_decade": 20,
    "on_radius": 0.11,
    "target": "",
    "containment_correction": "auto",
    "n_off_regions": 3,
    "exclusion": "",
    "safe_mask": "aeff-max",
    "aeff_percent": 10.0,
}

_SAFE_METHODS = ("aeff-default", "aeff-max", "edisp-bias", "offset-max", "bkg-peak")
_EXCLUSION_NPIX = 150  # exclusion-mask geometry of the tutorial: 150 x 150 pixels of 0.05 deg
_EXCLUSION_BINSZ = 0.05


def _gammapy(feature: str = "the gammapy-spectrum pipeline") -> None:
    require("gammapy", feature)


def _parse_exclusion(text: str) -> list[tuple[float, float, float]]:
    """Circles ``RA,DEC,RADIUS`` (deg, ICRS) separated by ``;``; [] for ""."""
    circles = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            ra, dec, radius = (float(v) for v in part.replace(" ", ",").split(",") if v)
        except ValueError:
            ra = dec = radius = float("nan")
        if not (0 <= ra <= 360 and -90 <= dec <= 90 and radius > 0):
            raise ParameterError(
                f"{part!r} is not a circle 'RA,DEC,RADIUS' in degrees (ICRS); give circles "
                "separated by ';', e.g. '80.24,16.39,0.5', or leave it empty for no exclusion"
            )
        circles.append((ra, dec, radius))
    return circles


def _parse_safe(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in _SAFE_METHODS]
    if not methods or bad:
        raise ParameterError(
            f"{text!r}: give SafeMaskMaker methods separated by commas, from "
            f"{', '.join(_SAFE_METHODS)}"
        )
    return methods


def _check(parse: Any) -> Any:
    def check(value: str) -> str:
        parse(value)
        return value

    return check


#: The pipeline's parameters: every default above, with its meaning.
PARAMETERS: list[Parameter] = [
    Parameter(
        "energy_min", float, DEFAULTS["energy_min"], "lowest reco-energy edge, TeV", minimum=1e-5
    ),
    Parameter(
        "energy_max", float, DEFAULTS["energy_max"], "highest reco-energy edge, TeV", minimum=1e-4
    ),
    Parameter(
        "energy_per_decade",
        int,
        DEFAULTS["energy_per_decade"],
        "reco-energy bins per decade (MapAxis.from_energy_bounds, per_decade=True)",
        minimum=1,
        maximum=100,
    ),
    Parameter(
        "energy_true_min",
        float,
        DEFAULTS["energy_true_min"],
        "lowest true-energy edge, TeV",
        minimum=1e-5,
    ),
    Parameter(
        "energy_true_max",
        float,
        DEFAULTS["energy_true_max"],
        "highest true-energy edge, TeV",
        minimum=1e-4,
    ),
    Parameter(
        "energy_true_per_decade",
        int,
        DEFAULTS["energy_true_per_decade"],
        "true-energy bins per decade",
        minimum=1,
        maximum=100,
    ),
    Parameter(
        "on_radius",
        float,
        DEFAULTS["on_radius"],
        "On circle radius, deg (full-enclosure IRFs; point-like IRFs follow RAD_MAX)",
        minimum=1e-3,
        maximum=5,
    ),
    Parameter(
        "target",
        str,
        DEFAULTS["target"],
        "On-region centre 'RA,DEC' in deg (ICRS); empty: RA_OBJ, DEC_OBJ of each file",
        check=_check(parse_target),
    ),
    Parameter(
        "containment_correction",
        str,
        DEFAULTS["containment_correction"],
        "PSF containment correction of the exposure: auto = true for full-enclosure IRFs, "
        "false for point-like IRFs",
        choices=("auto", "true", "false"),
    ),
    Parameter(
        "n_off_regions",
        int,
        DEFAULTS["n_off_regions"],
        "Off regions of WobbleRegionsFinder (point-like IRFs with RAD_MAX)",
        minimum=1,
        maximum=100,
    ),
    Parameter(
        "exclusion",
        str,
        DEFAULTS["exclusion"],
        "exclusion circles 'RA,DEC,RADIUS;...' in deg (ICRS) kept free of Off regions",
        check=_check(_parse_exclusion),
    ),
    Parameter(
        "safe_mask",
        str,
        DEFAULTS["safe_mask"],
        f"SafeMaskMaker methods, comma-separated ({', '.join(_SAFE_METHODS)})",
        check=_check(_parse_safe),
    ),
    Parameter(
        "aeff_percent",
        float,
        DEFAULTS["aeff_percent"],
        "SafeMaskMaker aeff_percent: % of the maximum effective area (aeff-max)",
        minimum=0,
        maximum=100,
    ),
]


def energy_edges(e_min: float, e_max: float, per_decade: int) -> np.ndarray:
    """Bin edges (TeV) of ``MapAxis.from_energy_bounds(e_min, e_max, per_decade, per_decade=True)``.

    gammapy's rule (strict bounds): ``ceil(log10(e_max / e_min) * per_decade)`` bins, edges
    ``geomspace(e_min, e_max, nbin + 1)``. Computed without gammapy so that the schema
    is known where gammapy is not installed; the worker checks it against gammapy's axis.
    """
    nbin = int(np.ceil(np.log10(e_max / e_min) * per_decade))
    return np.geomspace(e_min, e_max, nbin + 1)


def _edges(p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    for lo, hi in (("energy_min", "energy_max"), ("energy_true_min", "energy_true_max")):
        if p[hi] <= p[lo]:
            raise ParameterError(
                f"parameters {lo!r} ({p[lo]}) and {hi!r} ({p[hi]}): the maximum must be above "
                "the minimum"
            )
    reco = energy_edges(p["energy_min"], p["energy_max"], p["energy_per_decade"])
    true = energy_edges(p["energy_true_min"], p["energy_true_max"], p["energy_true_per_decade"])
    return reco, true


def spectrum_schema(p: Mapping[str, Any]) -> Schema:
    """The products of one observation for resolved parameters ``p``."""
    reco, true = _edges(p)
    count, deg, s, area_time = "count", "deg", "s", "m2 s"
    scalars = [
        ("obs_id", "int64", "", "observation id (OBS_ID)"),
        ("object", "str", "", "observed object (OBJECT)"),
        ("telescope", "str", "", "TELESCOP"),
        ("obs_mode", "str", "", "OBS_MODE"),
        ("point_like", "bool", "", "point-like IRFs with RAD_MAX (On/Off radii follow RAD_MAX)"),
        ("containment_correction", "bool", "", "PSF containment correction applied to exposure"),
        ("on_ra", "float64", deg, "On-region centre right ascension (ICRS)"),
        ("on_dec", "float64", deg, "On-region centre declination (ICRS)"),
        ("on_radius", "float64", deg, "On circle radius; NaN for point-like IRFs (RAD_MAX)"),
        ("ra_pnt", "float64", deg, "pointing right ascension (RA_PNT)"),
        ("dec_pnt", "float64", deg, "pointing declination (DEC_PNT)"),
        ("offset", "float64", deg, "angular distance pointing - On-region centre"),
        ("n_off_regions", "int64", count, "Off regions found"),
        ("alpha", "float64", "1", "mean of acceptance / acceptance_off over energy bins"),
        ("livetime", "float64", s, "live time (exposure meta 'livetime')"),
        ("ontime", "float64", s, "sum of the GTIs"),
        ("gti", "str", "", "GTIs as JSON: MET start and stop (s) and the reference time (MJD TT)"),
    ]
    variables = [Variable(n, t, units=u, description=d) for n, t, u, d in scalars]
    variables += [
        Variable("counts", "int64", ("energy",), count, "On counts per reco-energy bin"),
        Variable("counts_off", "int64", ("energy",), count, "Off counts per reco-energy bin"),
        Variable("acceptance", "float64", ("energy",), "1", "On acceptance"),
        Variable("acceptance_off", "float64", ("energy",), "1", "Off acceptance"),
        Variable("mask_safe", "bool", ("energy",), "", "SafeMaskMaker's safe energy range"),
        Variable(
            "exposure",
            "float64",
            ("energy_true",),
            area_time,
            "effective area x livetime per true-energy bin (containment-corrected if applied)",
        ),
        Variable(
            "edisp",
            "float64",
            ("energy_true", "energy"),
            "1",
            "energy-dispersion kernel: probability of reco bin given true energy",
        ),
        Variable(
            "edisp_exposure",
            "float64",
            ("energy_true",),
            area_time,
            "exposure map of the EDispKernelMap (stacking weights)",
        ),
    ]
    coords = [
        Coordinate(
            "energy",
            np.sqrt(reco[:-1] * reco[1:]),
            "TeV",
            "log-centre of the reconstructed-energy bins (edges: energy_edges)",
        ),
        Coordinate(
            "energy_true",
            np.sqrt(true[:-1] * true[1:]),
            "TeV",
            "log-centre of the true-energy bins (edges: energy_true_edges)",
        ),
        Coordinate("energy_edges", reco, "TeV", "reconstructed-energy bin edges"),
        Coordinate("energy_true_edges", true, "TeV", "true-energy bin edges"),
    ]
    return Schema(variables=variables, coords=coords)


def energy_axis(edges: Any, name: str) -> Any:
    """gammapy's ``MapAxis`` of log-spaced ``edges`` (TeV), built as gammapy builds it.

    ``MapAxis.from_energy_bounds(lo, hi, nbin=k, per_decade=True)`` is
    ``MapAxis.from_bounds(lo, hi, nbin=ceil(log10(hi/lo) k), interp="log")``; the axis made
    here from the first and last edge and the number of bins is that same call, so its
    edges are gammapy's to the last bit (the stored edges, computed with numpy, may differ
    from them by an ulp). Edges that are not log-spaced are taken as they are.
    """
    from gammapy.maps import MapAxis

    edges = np.asarray(edges, dtype=float)
    axis = MapAxis.from_energy_bounds(
        edges[0], edges[-1], nbin=len(edges) - 1, unit="TeV", name=name
    )
    if np.allclose(axis.edges.to_value("TeV"), edges, rtol=1e-12, atol=0):
        return axis
    return MapAxis.from_energy_edges(edges, unit="TeV", name=name)


def _axes(reco: np.ndarray, true: np.ndarray) -> tuple[Any, Any]:
    return energy_axis(reco, "energy"), energy_axis(true, "energy_true")


def make_makers(
    *, point_like: bool, center: tuple[float, float], **params: Any
) -> tuple[Any, Any, Any, Any]:
    """gammapy's geometry and makers for one observation, as the pipeline builds them.

    Parameters
    ----------
    point_like
        The observation has point-like IRFs with ``RAD_MAX``.
    center
        On-region centre (RA, Dec), degrees ICRS.
    **params
        The pipeline's resolved parameters (:data:`DEFAULTS` for the missing ones).

    Returns
    -------
    tuple
        ``(empty SpectrumDataset, SpectrumDatasetMaker, ReflectedRegionsBackgroundMaker,
        SafeMaskMaker)``; a caller can feed them to gammapy's ``DatasetsMaker`` too.
    """
    _gammapy()
    import astropy.units as u
    from astropy.coordinates import Angle, SkyCoord
    from gammapy.datasets import SpectrumDataset
    from gammapy.makers import (
        ReflectedRegionsBackgroundMaker,
        SafeMaskMaker,
        SpectrumDatasetMaker,
        WobbleRegionsFinder,
    )
    from gammapy.maps import RegionGeom, WcsGeom
    from regions import CircleSkyRegion, PointSkyRegion

    p = {**DEFAULTS, **params}
    energy_axis, energy_axis_true = _axes(*_edges(p))
    position = SkyCoord(center[0], center[1], unit="deg", frame="icrs")
    region: Any
    if point_like:
        region = PointSkyRegion(position)
    else:
        region = CircleSkyRegion(center=position, radius=Angle(p["on_radius"], "deg"))
    geom = RegionGeom.create(region=region, axes=[energy_axis])
    empty = SpectrumDataset.create(geom=geom, energy_axis_true=energy_axis_true)
    containment = {"auto": not point_like, "true": True, "false": False}[
        p["containment_correction"]
    ]
    dataset_maker = SpectrumDatasetMaker(
        selection=["counts", "exposure", "edisp"], containment_correction=containment
    )
    exclusion_mask = None
    circles = _parse_exclusion(p["exclusion"])
    if circles:
        mask_geom = WcsGeom.create(
            npix=(_EXCLUSION_NPIX, _EXCLUSION_NPIX),
            binsz=_EXCLUSION_BINSZ,
            skydir=position,
            proj="TAN",
            frame="icrs",
        )
        exclusion_mask = ~mask_geom.region_mask(
            [
                CircleSkyRegion(SkyCoord(ra, dec, unit="deg"), radius=r * u.deg)
                for ra, dec, r in circles
            ]
        )
    if point_like:
        bkg_maker = ReflectedRegionsBackgroundMaker(
            region_finder=WobbleRegionsFinder(n_off_regions=p["n_off_regions"]),
            exclusion_mask=exclusion_mask,
        )
    else:
        bkg_maker = ReflectedRegionsBackgroundMaker(exclusion_mask=exclusion_mask)
    safe_maker = SafeMaskMaker(methods=_parse_safe(p["safe_mask"]), aeff_percent=p["aeff_percent"])
    return empty, dataset_maker, bkg_maker, safe_maker


def observation_target(observation: Any, source: str = "") -> tuple[float, float]:
    """(RA_OBJ, DEC_OBJ) of a gammapy Observation's EVENTS header, in degrees."""
    meta = observation.events.table.meta
    try:
        return float(meta["RA_OBJ"]), float(meta["DEC_OBJ"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{source or 'observation ' + str(observation.obs_id)}: the EVENTS header has no "
            "RA_OBJ/DEC_OBJ target; give the pipeline parameter target='RA,DEC' (deg)"
        ) from None


def _gti_json(gti: Any) -> str:
    ref = gti.time_ref
    return json.dumps(
        {
            "start": [float(v) for v in gti.met_start.to_value("s")],
            "stop": [float(v) for v in gti.met_stop.to_value("s")],
            "reference_mjd": [float(ref.tt.jd1 - 2400000.5), float(ref.tt.jd2)],
            "scale": "tt",
        }
    )


def _gti_from_json(text: str) -> Any:
    import astropy.units as u
    from astropy.time import Time
    from gammapy.data import GTI

    record = json.loads(text)
    ref = Time(*record["reference_mjd"], format="mjd", scale=record.get("scale", "tt"))
    return GTI.create(record["start"] * u.s, record["stop"] * u.s, reference_time=ref)


def _vector(m: Any) -> np.ndarray:
    """The energy vector of a RegionNDMap (data shape (n, 1, 1))."""
    return np.asarray(m.data).reshape(-1)


def dataset_products(
    dataset: Any, observation: Any, center: tuple[float, float], *, containment: bool
) -> dict[str, Any]:
    """The store's products of one reduced ``SpectrumDatasetOnOff`` of ``observation``."""
    meta = observation.events.table.meta
    point_like = observation.rad_max is not None
    pointing = observation.get_pointing_icrs(observation.tmid)
    region = dataset.counts.geom.region
    radius = float(region.radius.to_value("deg")) if hasattr(region, "radius") else math.nan
    acc, acc_off = _vector(dataset.acceptance), _vector(dataset.acceptance_off)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(acc_off > 0, acc / acc_off, np.nan)
    from astropy.coordinates import SkyCoord

    on_center = SkyCoord(center[0], center[1], unit="deg", frame="icrs")
    edisp = dataset.edisp
    return {
        "obs_id": int(observation.obs_id),
        "object": str(meta.get("OBJECT", "")),
        "telescope": str(meta.get("TELESCOP", "")),
        "obs_mode": str(meta.get("OBS_MODE", "")),
        "point_like": point_like,
        "containment_correction": bool(containment),
        "on_ra": float(center[0]),
        "on_dec": float(center[1]),
        "on_radius": radius,
        "ra_pnt": float(pointing.ra.deg),
        "dec_pnt": float(pointing.dec.deg),
        "offset": float(pointing.separation(on_center).deg),
        "n_off_regions": int(np.max(acc_off, initial=0)),
        "alpha": float(np.nanmean(ratio)) if np.isfinite(ratio).any() else math.nan,
        "livetime": float(dataset.exposure.meta["livetime"].to_value("s")),
        "ontime": float(dataset.gti.time_sum.to_value("s")),
        "gti": _gti_json(dataset.gti),
        "counts": _vector(dataset.counts).astype(np.int64),
        "counts_off": (
            np.zeros(dataset.counts.data.shape[0], dtype=np.int64)
            if dataset.counts_off is None  # gammapy found no Off region (mask_safe all False)
            else _vector(dataset.counts_off).astype(np.int64)
        ),
        "acceptance": acc.astype(np.float64),
        "acceptance_off": acc_off.astype(np.float64),
        "mask_safe": _vector(dataset.mask_safe).astype(bool),
        "exposure": _vector(dataset.exposure).astype(np.float64),
        "edisp": np.asarray(edisp.edisp_map.data)[:, :, 0, 0].astype(np.float64),
        "edisp_exposure": np.asarray(edisp.exposure_map.data).reshape(-1).astype(np.float64),
    }


def spectrum_products(path: str, **params: Any) -> dict[str, Any]:
    """gammapy's 1D reduction of the GADF observation file ``path`` (parameters: see the module).

    Returns
    -------
    dict
        The products of :func:`spectrum_schema`: the ``SpectrumDatasetOnOff``'s arrays
        along ``energy`` / ``energy_true`` and its metadata.
    """
    _gammapy()
    from gammapy.data import Observation

    p = {**DEFAULTS, **params}
    source = os.fspath(path)
    observation = Observation.read(source)
    point_like = observation.rad_max is not None
    target = parse_target(p["target"])
    center = target if target is not None else observation_target(observation, source)
    empty, dataset_maker, bkg_maker, safe_maker = make_makers(
        point_like=point_like, center=center, **p
    )
    _check_axes(empty, p)
    dataset = dataset_maker.run(empty.copy(name=str(observation.obs_id)), observation)
    dataset = bkg_maker.run(dataset, observation)
    dataset = safe_maker.run(dataset, observation)
    return dataset_products(
        dataset, observation, center, containment=dataset_maker.containment_correction
    )


def _check_axes(empty: Any, p: Mapping[str, Any]) -> None:
    """The schema's edges are those of gammapy's ``MapAxis.from_energy_bounds``."""
    from gammapy.maps import MapAxis

    for name in ("energy", "energy_true"):
        axis = MapAxis.from_energy_bounds(
            p[f"{name}_min"],
            p[f"{name}_max"],
            nbin=p[f"{name}_per_decade"],
            per_decade=True,
            unit="TeV",
            name=name,
        )
        geom = empty.exposure.geom if name == "energy_true" else empty.counts.geom
        mine = geom.axes[name]
        if not np.array_equal(axis.edges, mine.edges):
            raise RuntimeError(
                f"the {name} edges of the schema differ from gammapy's MapAxis.from_energy_bounds; "
                "report this as a bug of esap_dask.iact.spectrum"
            )


def _select(ds: Any, obs: Any, store: str) -> Any:
    """``ds`` restricted to the observations ``obs`` (obs ids, or the store's ``obs`` names)."""
    if obs is None:
        return ds
    wanted = [obs] if isinstance(obs, (str, int, np.integer)) else list(obs)
    names = [str(o) for o in ds["obs"].values]
    ids = [int(v) for v in ds["obs_id"].values]
    index = []
    for w in wanted:
        if isinstance(w, (int, np.integer)) and not isinstance(w, bool) and int(w) in ids:
            index.append(ids.index(int(w)))
        elif str(w) in names:
            index.append(names.index(str(w)))
        else:
            raise KeyError(
                f"{store}: no done observation {w!r} (give obs_id integers or the store's obs "
                f"names; done here: {', '.join(map(str, ids[:10]))}"
                f"{' ...' if len(ids) > 10 else ''})"
            )
    return ds.isel(obs=index)


def read_datasets(
    store: str | os.PathLike[str],
    *,
    obs: int | str | Sequence[int | str] | None = None,
    stack: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """The ``SpectrumDatasetOnOff`` of each done observation of a ``gammapy-spectrum`` store.

    Parameters
    ----------
    store
        The Zarr store (path or URL) written by the ``gammapy-spectrum`` pipeline.
    obs
        Only these observations: OBS_ID integers or the store's ``obs`` names
        (file names); default all that are done (their ledger status).
    stack
        Return ``Datasets([datasets.stack_reduce()])``: the stacked dataset.
    storage_options
        fsspec options of a remote store.

    Returns
    -------
    gammapy.datasets.Datasets
        One ``SpectrumDatasetOnOff`` per observation, named by its OBS_ID, rebuilt from the
        stored arrays (counts, counts_off, acceptance, acceptance_off, exposure with its
        livetime, the ``EDispKernelMap``, mask_safe, GTI and the meta table), ready for
        ``datasets.models = [...]; Fit().run(datasets)``.

    Raises
    ------
    ValueError
        When ``store`` is not a ``gammapy-spectrum`` store.
    KeyError
        When an observation of ``obs`` is not done in the store.

    Examples
    --------
    >>> datasets = read_datasets("crab.zarr")                              # doctest: +SKIP
    >>> datasets.models = [SkyModel(spectral_model=LogParabolaSpectralModel())]  # doctest: +SKIP
    >>> Fit().run(datasets)                                                 # doctest: +SKIP
    """
    _gammapy("esap_dask.iact.read_datasets")
    import astropy.units as u
    import xarray as xr
    from astropy.coordinates import Angle, SkyCoord
    from astropy.table import Table
    from gammapy.datasets import Datasets, SpectrumDatasetOnOff
    from gammapy.irf import EDispKernelMap
    from gammapy.maps import MapAxis, RegionGeom, RegionNDMap
    from regions import CircleSkyRegion, PointSkyRegion

    from esap_dask.engine.ledger import DONE, read_ledger

    where = os.fspath(store)
    ds = xr.open_zarr(where, storage_options=dict(storage_options or {}) or None)
    missing = [v for v in ("counts", "edisp", "energy_edges", "energy_true_edges") if v not in ds]
    if missing:
        raise ValueError(
            f"{where}: not a gammapy-spectrum store (no {', '.join(missing)}); run the "
            "gammapy-spectrum pipeline into it first"
        )
    ledger = read_ledger(where, storage_options=storage_options)
    done = set(ledger.ids[ledger.status == DONE].tolist())
    ds = ds.isel(obs=np.flatnonzero([str(i) in done for i in ds["obs"].values]))
    ds = _select(ds, obs, where).load()
    energy_axis, energy_axis_true = _axes(ds["energy_edges"].values, ds["energy_true_edges"].values)
    edisp_energy = MapAxis.from_energy_edges(
        energy_axis.edges[[0, -1]], name="energy"
    )  # the squashed reco axis of gammapy's EDispKernelMap exposure map
    datasets = []
    for i in range(ds.sizes["obs"]):
        row = ds.isel(obs=i)
        center = SkyCoord(float(row["on_ra"]), float(row["on_dec"]), unit="deg", frame="icrs")
        point_like = bool(row["point_like"])
        region: Any
        if point_like or not np.isfinite(float(row["on_radius"])):
            region = PointSkyRegion(center)
        else:
            region = CircleSkyRegion(center, radius=Angle(float(row["on_radius"]), "deg"))
        geom = RegionGeom.create(region=region, axes=[energy_axis])
        geom_true = geom.to_image().to_cube([energy_axis_true])
        shape = (-1, 1, 1)

        def reco(name: str, dtype: Any, geom: Any = geom, row: Any = row) -> Any:
            data = np.asarray(row[name].values, dtype=dtype).reshape(-1, 1, 1)
            return RegionNDMap.from_geom(geom, data=data)

        exposure = RegionNDMap.from_geom(
            geom_true, data=row["exposure"].values.reshape(shape), unit="m2 s"
        )
        exposure.meta["livetime"] = float(row["livetime"]) * u.s
        exposure.meta["is_pointlike"] = point_like
        edisp_map = RegionNDMap.from_geom(
            geom.to_image().to_cube([energy_axis, energy_axis_true]),
            data=row["edisp"].values[:, :, None, None],
        )
        edisp_exposure = RegionNDMap.from_geom(
            geom.to_image().to_cube([edisp_energy, energy_axis_true]),
            data=row["edisp_exposure"].values.reshape(-1, 1, 1, 1),
            unit="m2 s",
        )
        obs_id = int(row["obs_id"])
        meta_table = Table(
            {
                "TELESCOP": [str(row["telescope"].values)],
                "OBS_ID": [obs_id],
                "OBS_MODE": [str(row["obs_mode"].values)],
                "RA_PNT": [float(row["ra_pnt"])] * u.deg,
                "DEC_PNT": [float(row["dec_pnt"])] * u.deg,
            }
        )
        datasets.append(
            SpectrumDatasetOnOff(
                counts=reco("counts", np.float32),
                counts_off=reco("counts_off", np.float32),
                acceptance=reco("acceptance", np.float64),
                acceptance_off=reco("acceptance_off", np.float64),
                exposure=exposure,
                edisp=EDispKernelMap(edisp_kernel_map=edisp_map, exposure_map=edisp_exposure),
                mask_safe=reco("mask_safe", bool),
                gti=_gti_from_json(str(row["gti"].values)),
                meta_table=meta_table,
                name=str(obs_id),
            )
        )
    result = Datasets(datasets)
    if stack:
        return Datasets([result.stack_reduce()])
    return result
