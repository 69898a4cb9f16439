"""concordia: an air-shower Monte Carlo sweep over run numbers (the seed's CONCORDIA).

Observations are run numbers (``--observations 1..20``). Each run simulates
``NSHOW`` showers of the steering card (:mod:`esap_dask.iact.corsika`) with seeds
derived from the card's ``SEED`` lines and the run number, so a run gives the
same products on a laptop and on the grid. By default the showers come from the
numpy model of :mod:`esap_dask.iact.showers` (Heitler–Matthews development, Cherenkov
light at the observation level); with ``corsika`` set to the name of a CORSIKA
installation the administrator configured (Dask config ``esap.corsika.images``),
each run executes that real CORSIKA instead (its ``.long`` profiles fill the
products; see :func:`esap_dask.iact.corsika.run_corsika`). A job never names an image
or a program itself.

The card is its text (a value with new lines) or a file's path. It is read and
checked when the parameters are resolved (on the machine that submits: the
command line, or the job service at submission), and the parameter then holds
the card's text, so workers never read it and its content is part of the
parameter hash. A path is read by :func:`esap_dask.iact.corsika.read_card`: under the
directories of the Dask config ``esap.corsika.card-roots`` when it is set (the
job service sets it to its data roots), from a URL only with
``esap.corsika.card-urls: true``. ``nshow``, ``primary``, ``emin``, ``emax``,
``theta_max`` override the card's ``NSHOW``, ``PRMPAR``, ``ERANGE`` and ``THETAP``
when set.

Example::

    esap-dask run concordia -o 1..20 -s showers.zarr -p card=my.card -p nshow=50
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.config
import numpy as np

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask import Coordinate, Parameter, Pipeline, Schema, Variable
from esap_dask.iact.corsika import (
    Card,
    corsika_image,
    parse_card,
    read_card,
    run_corsika,
    run_seeds,
)
from esap_dask.iact.showers import core_distances, depth_grid, simulate

DEFAULT_CARD = """\
* concordia's default card: 10 proton showers a run, 1-100 TeV, E^-2.7, near vertical
RUNNR   1
EVTNR   1
NSHOW   10
PRMPAR  14
ESLOPE  -2.7
ERANGE  1.E3  1.E5
THETAP  0.  20.
PHIP    -180.  180.
SEED    385  0  0
SEED    386  0  0
SEED    387  0  0
OBSLEV  1800.E2
CERSIZ  5.
CWAVLG  300.  600.
LONGI   T  10.  T  T
ATMOD   1
EXIT
"""


def card_text(value: str) -> str:
    """The ``card`` parameter checked: its text, read from the path it names if it is one.

    ``''`` is the built-in card; a value with a new line is the card's text; anything
    else is a path (or URL) read by :func:`esap_dask.iact.corsika.read_card` with the roots
    of the Dask config ``esap.corsika.card-roots``. The text is parsed, so a bad card
    is refused here, where parameters are resolved.
    """
    if not value:
        return ""
    if "\n" in value:
        parse_card(value, source="the card text")
        return value
    roots = dask.config.get("esap.corsika.card-roots", default=None)
    if isinstance(roots, str):
        roots = [roots]
    urls = bool(dask.config.get("esap.corsika.card-urls", default=False))
    text = read_card(value, roots=roots, urls=urls)
    parse_card(text, source=_source(value))
    return text


def _source(path: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in path[:200])


def corsika_name(value: str) -> str:
    """The ``corsika`` parameter checked: '' or the name of a configured installation."""
    if value:
        corsika_image(value)
    return value


def load_card(params: Mapping[str, Any]) -> Card:
    """The steering card of ``params`` with its overrides applied."""
    text = card_text(params["card"]) or DEFAULT_CARD
    source = "the card text" if params["card"] else "the default card"
    card = parse_card(text, source=source)
    changes: dict[str, Any] = {}
    if params["nshow"]:
        changes["nshow"] = params["nshow"]
    if params["primary"]:
        changes["prmpar"] = params["primary"]
    if params["emin"] or params["emax"]:
        changes["erange"] = (params["emin"] or card.erange[0], params["emax"] or card.erange[1])
    if params["theta_max"] >= 0:
        changes["thetap"] = (min(card.thetap[0], params["theta_max"]), params["theta_max"])
    return card.replace(**changes) if changes else card


def concordia(run: Any, **params: Any) -> dict[str, Any]:
    """The showers of run number ``run``."""
    card = load_card(params)
    seq, seeds = run_seeds(card, int(run))
    if params["corsika"]:
        products = run_corsika(
            card,
            int(run),
            seeds,
            image=corsika_image(params["corsika"]),
            depth=depth_grid(card),
            n_core=params["n_core"],
        )
    else:
        r = core_distances(params["n_core"], params["r_max"])
        products = simulate(card, seq, r=r).as_products()
    return {**products, "seed": np.asarray(seeds, dtype="int64")}


def schema(params: Mapping[str, Any]) -> Schema:
    """The products of one run, for the card and parameters given."""
    card = load_card(params)
    per = ("shower",)
    return Schema(
        variables=[
            Variable("energy", "float64", per, "GeV", "primary energy"),
            Variable("zenith", "float64", per, "deg", "zenith angle of the shower axis"),
            Variable("azimuth", "float64", per, "deg", "azimuth of the shower axis (CORSIKA's)"),
            Variable(
                "first_interaction",
                "float64",
                per,
                "g cm-2",
                "slant depth of the first interaction",
            ),
            Variable("xmax", "float64", per, "g cm-2", "slant depth of the shower maximum"),
            Variable("nmax", "float64", per, "1", "charged particles at the shower maximum"),
            Variable(
                "profile",
                "float64",
                ("shower", "depth"),
                "1",
                "charged particles vs slant depth (NaN below the observation level)",
            ),
            Variable(
                "cherenkov_density",
                "float64",
                ("shower", "core_distance"),
                "m-2",
                "Cherenkov photons per m2 at the observation level, in the shower plane",
            ),
            Variable(
                "cherenkov_photons",
                "float64",
                per,
                "1",
                "Cherenkov photons at the observation level within the largest core distance",
            ),
            Variable(
                "seed",
                "int64",
                ("seed_line",),
                "1",
                "CORSIKA seeds of the run (from the card's SEED lines and the run number)",
            ),
        ],
        coords=[
            Coordinate(
                "shower", np.arange(card.evtnr, card.evtnr + card.nshow), "1", "event number"
            ),
            Coordinate("depth", depth_grid(card), "g cm-2", "slant depth along the shower axis"),
            Coordinate(
                "core_distance",
                core_distances(params["n_core"], params["r_max"]),
                "m",
                "distance from the shower core in the shower plane",
            ),
            Coordinate(
                "seed_line", np.arange(1, len(card.seeds) + 1), "1", "SEED line of the card"
            ),
        ],
    )


pipeline = Pipeline(
    name="concordia",
    version="1.0.0",
    description=(
        "Air-shower Monte Carlo over run numbers from a CORSIKA steering card: Heitler-Matthews "
        "longitudinal development and Cherenkov light in numpy, or real CORSIKA in a container."
    ),
    function=concordia,
    parameters=[
        Parameter(
            "card",
            str,
            "",
            "steering card: its text, or a file's path ('' = built-in)",
            file=True,
            check=card_text,
        ),
        Parameter(
            "nshow", int, 0, "showers per run (0 = the card's NSHOW)", minimum=0, maximum=100_000
        ),
        Parameter(
            "primary",
            int,
            0,
            "CORSIKA particle code (0 = the card's PRMPAR)",
            minimum=0,
            maximum=5999,
        ),
        Parameter(
            "emin",
            float,
            0.0,
            "lowest energy in GeV (0 = the card's ERANGE)",
            minimum=0,
            maximum=1e12,
        ),
        Parameter(
            "emax",
            float,
            0.0,
            "highest energy in GeV (0 = the card's ERANGE)",
            minimum=0,
            maximum=1e12,
        ),
        Parameter(
            "theta_max",
            float,
            -1.0,
            "largest zenith angle, deg (-1 = the card's THETAP)",
            minimum=-1,
            maximum=70,
        ),
        Parameter(
            "n_core",
            int,
            40,
            "core distances of the Cherenkov density",
            minimum=2,
            maximum=1000,
        ),
        Parameter(
            "r_max", float, 1000.0, "largest core distance in m", minimum=10, maximum=100_000
        ),
        Parameter(
            "corsika",
            str,
            "",
            "CORSIKA installation to run, by name (Dask config esap.corsika.images; "
            "'' = the numpy model)",
            check=corsika_name,
        ),
    ],
    schema=schema,
    observations="run numbers, e.g. 1..20",
)
