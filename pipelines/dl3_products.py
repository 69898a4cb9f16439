"""dl3-products: per-observation science products from IACT DL3 event lists (GADF).

For each event file: metadata (pointing, target, livetime, dead time, times,
zenith, event count and rate), counts vs reconstructed energy, a counts map in a
tangent-plane projection, On/Off counts with reflected Off regions, alpha,
excess and Li & Ma significance, a light curve in time bins within the GTIs,
and quality flags. The science lives in :mod:`esap_dask.iact.dl3` and the reading in
:mod:`esap_dask.iact.gadf`; this module declares the parameters and the products::

    esap-dask run dl3-products --observations 'data/*.fits.gz' --store dl3.zarr
    ds = xr.open_zarr("dl3.zarr")
    esap_dask.iact.dl3.stack(ds, ds.target == "Crab Nebula")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from esap_dask import Coordinate, Parameter, ParameterError, Pipeline, Schema, Variable
from esap_dask.iact.dl3 import FLAGS, observation_products
from esap_dask.iact.gadf import IRF_TYPES, read_events
from esap_dask.iact.targets import parse_target


def dl3_products(path: str, *, target: str = "", **params: Any) -> dict[str, Any]:
    """The products of the GADF event file ``path`` (parameters: see the pipeline)."""
    ra, dec = _target(target)
    return observation_products(read_events(path), target_ra=ra, target_dec=dec, **params)


def _target(text: str) -> tuple[float, float]:
    """(ra, dec) of the ``target`` parameter; NaN for "" (the files' RA_OBJ/DEC_OBJ)."""
    return parse_target(text) or (float("nan"), float("nan"))


def _npix(p: Mapping[str, Any]) -> int:
    return round(p["map_size"] / p["map_binsz"])


def _schema(p: Mapping[str, Any]) -> Schema:
    # bad values fail the run here, before any observation is processed
    _target(p["target"])
    if p["energy_max"] <= p["energy_min"]:
        raise ParameterError(
            f"parameters 'energy_min' ({p['energy_min']}) and 'energy_max' ({p['energy_max']}): "
            "the maximum must be above the minimum"
        )
    if _npix(p) < 1:
        raise ParameterError(
            f"parameter 'map_binsz' ({p['map_binsz']}) is larger than 'map_size' "
            f"({p['map_size']}): the map would have no pixel"
        )
    edges = np.geomspace(p["energy_min"], p["energy_max"], p["energy_bins"] + 1)
    n = _npix(p)
    pix = (np.arange(n) + 0.5 - n / 2) * p["map_binsz"]
    count, deg, s = "count", "deg", "s"
    scalars = [
        ("obs_id", "int64", "", "observation id (OBS_ID)"),
        ("target", "str", "", "observed object (OBJECT)"),
        ("ra_pnt", "float64", deg, "pointing right ascension (ICRS)"),
        ("dec_pnt", "float64", deg, "pointing declination (ICRS)"),
        ("ra_obj", "float64", deg, "On-region centre right ascension (target)"),
        ("dec_obj", "float64", deg, "On-region centre declination (target)"),
        ("offset", "float64", deg, "angular distance pointing - target"),
        ("zenith", "float64", deg, "zenith angle of the pointing"),
        ("livetime", "float64", s, "live time: ontime * (1 - dead_fraction)"),
        ("livetime_header", "float64", s, "live time as written in the file (LIVETIME)"),
        ("ontime", "float64", s, "observation time: sum of the GTIs"),
        ("deadc", "float64", "1", "dead-time correction factor (DEADC)"),
        ("dead_fraction", "float64", "1", "dead-time fraction: 1 - deadc"),
        ("tstart", "float64", s, "start, mission elapsed time since MJDREF (TT)"),
        ("tstop", "float64", s, "stop, mission elapsed time since MJDREF (TT)"),
        ("mjd_start", "float64", "d", "start, MJD (TT)"),
        ("mjd_stop", "float64", "d", "stop, MJD (TT)"),
        ("n_events", "int64", count, "events in the EVENTS table"),
        ("rate", "float64", "Hz", "event rate: n_events / livetime"),
        ("n_on", "int64", count, "events in the On circle"),
        ("n_off", "int64", count, "events in the reflected Off circles"),
        ("n_off_regions", "int64", count, "number of reflected Off regions"),
        ("alpha", "float64", "1", "On/Off exposure ratio: 1 / n_off_regions"),
        ("excess", "float64", count, "n_on - alpha n_off"),
        ("significance", "float64", "sigma", "Li & Ma (1983) eq. 17, signed"),
        ("map_ra", "float64", deg, "counts-map centre right ascension"),
        ("map_dec", "float64", deg, "counts-map centre declination"),
        ("good", "bool", "", "no quality flag raised"),
    ]
    variables = [Variable(n, t, units=u, description=d) for n, t, u, d in scalars]
    variables += [
        Variable("counts_energy", "int64", ("energy",), count, "all events per energy bin"),
        Variable("on_energy", "int64", ("energy",), count, "On-region events per energy bin"),
        Variable("off_energy", "int64", ("energy",), count, "Off-region events per energy bin"),
        Variable(
            "counts_map",
            "int32",
            ("y", "x"),
            count,
            "events per pixel, TAN projection about (map_ra, map_dec)",
        ),
        Variable("lc_mjd", "float64", ("time_bin",), "d", "time-bin centre, MJD (TT)"),
        Variable("lc_counts", "int64", ("time_bin",), count, "events per time bin, in GTIs"),
        Variable("lc_on", "int64", ("time_bin",), count, "On-region events per time bin"),
        Variable("lc_off", "int64", ("time_bin",), count, "Off-region events per time bin"),
        Variable("lc_livetime", "float64", ("time_bin",), s, "live time in GTIs per time bin"),
        Variable("irf_present", "bool", ("irf",), "", "IRF found in the file or hdu-index"),
        Variable("flags", "bool", ("flag",), "", "quality flags (see the flag coordinate)"),
    ]
    coords = [
        Coordinate(
            "energy",
            np.sqrt(edges[:-1] * edges[1:]),
            "TeV",
            f"log-centre of reconstructed-energy bins; edges geomspace({p['energy_min']}, "
            f"{p['energy_max']}, {p['energy_bins'] + 1})",
        ),
        Coordinate("x", pix, deg, "tangent-plane offset east (towards +RA) of the map centre"),
        Coordinate("y", pix.copy(), deg, "tangent-plane offset north of the map centre"),
        Coordinate(
            "time_bin",
            np.arange(p["time_bins"]) * p["time_bin"],
            s,
            "start of the time bin after the first GTI start",
        ),
        Coordinate("irf", np.asarray(IRF_TYPES, dtype=object), "", "IRF component"),
        Coordinate("flag", np.asarray(FLAGS, dtype=object), "", "quality flag"),
    ]
    return Schema(variables=variables, coords=coords)


pipeline = Pipeline(
    name="dl3-products",
    version="1.0.0",
    description=(
        "Per-observation IACT products from GADF DL3 event lists: metadata, counts vs energy, "
        "counts map, On/Off (reflected regions) with Li & Ma significance, light curve, "
        "quality flags."
    ),
    function=dl3_products,
    parameters=[
        Parameter("energy_min", float, 0.1, "lowest energy-bin edge, TeV", minimum=1e-4),
        Parameter("energy_max", float, 100.0, "highest energy-bin edge, TeV", minimum=1e-3),
        Parameter("energy_bins", int, 20, "log energy bins", minimum=1, maximum=1000),
        Parameter(
            "map_size", float, 4.0, "counts-map width and height, deg", minimum=0.01, maximum=60
        ),
        Parameter("map_binsz", float, 0.04, "counts-map pixel size, deg", minimum=1e-4),
        Parameter(
            "map_center",
            str,
            "pointing",
            "centre of the counts map",
            choices=("pointing", "target"),
        ),
        Parameter(
            "on_radius", float, 0.11, "On (and Off) circle radius, deg", minimum=0.001, maximum=5
        ),
        Parameter(
            "target",
            str,
            "",
            "On-region centre 'RA,DEC' in deg (ICRS); empty: RA_OBJ, DEC_OBJ of each file",
        ),
        Parameter("max_off_regions", int, 10, "most reflected Off regions", minimum=1, maximum=100),
        Parameter("off_gap", float, 0.1, "least distance Off edge - On edge, deg", minimum=0),
        Parameter("time_bin", float, 120.0, "light-curve bin, s", minimum=1),
        Parameter(
            "time_bins",
            int,
            15,
            "light-curve bins from the first GTI start",
            minimum=1,
            maximum=100000,
        ),
        Parameter("min_livetime", float, 600.0, "flag short_livetime below this, s", minimum=0),
        Parameter(
            "rate_nsigma",
            float,
            5.0,
            "flag rate_outlier when a light-curve bin deviates by more than this many sigma",
            minimum=0,
        ),
    ],
    schema=_schema,
    observations="GADF event files (.fits, .fits.gz), or an obs-index selection",
)
