"""concordia: an air-shower Monte Carlo sweep over run numbers (the seed's CONCORDIA).

Observations are run numbers (``--observations 1..20``). Each run simulates
``NSHOW`` showers of the steering card (:mod:`esap_dask.corsika`) with seeds
derived from the card's ``SEED`` lines and the run number, so a run gives the
same products on a laptop and on the grid. By default the showers come from the
numpy model of :mod:`esap_dask.showers` (Heitler–Matthews development, Cherenkov
light at the observation level); with ``corsika_image`` set, each run executes
a real CORSIKA in that container image instead (its ``.long`` profiles fill the
products; see :func:`esap_dask.corsika.run_corsika`).

The card is a path, a URL (read through fsspec, e.g. ``s3://bucket/run.card``)
or the card's text itself; grid workers share no filesystem with you, so give
them a URL or the text. ``nshow``, ``primary``, ``emin``, ``emax``, ``theta_max``
override the card's ``NSHOW``, ``PRMPAR``, ``ERANGE`` and ``THETAP`` when set.

Example::

    esap-dask run concordia -o 1..20 -s showers.zarr -p card=my.card -p nshow=50
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import numpy as np

from esap_dask import Coordinate, Parameter, Pipeline, Schema, Variable
from esap_dask.corsika import Card, CardError, parse_card, run_corsika, run_seeds
from esap_dask.showers import core_distances, depth_grid, simulate

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


def _card_text(card: str) -> tuple[str, str]:
    if not card:
        return DEFAULT_CARD, "the default card"
    if "\n" in card:
        return card, "the card text"
    import fsspec

    try:
        with fsspec.open(card, "rt") as f:
            return f.read(), card
    except FileNotFoundError as err:
        raise CardError(
            f"card {card!r}: no such file here ({os.getcwd()} on {socket.gethostname()}); give "
            "a path, URL or the card's text (grid workers share no filesystem with you: give "
            "them a URL such as s3://bucket/run.card, or the text)"
        ) from err


def load_card(params: Mapping[str, Any]) -> Card:
    """The steering card of ``params`` with its overrides applied."""
    text, source = _card_text(params["card"])
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
    if params["corsika_image"]:
        products = run_corsika(
            card,
            int(run),
            seeds,
            image=params["corsika_image"],
            engine=params["corsika_engine"],
            executable=params["corsika_executable"],
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
            "card", str, "", "steering card: a path, a URL or the text ('' = built-in)", file=True
        ),
        Parameter("nshow", int, 0, "showers per run (0 = the card's NSHOW)", minimum=0),
        Parameter("primary", int, 0, "CORSIKA particle code (0 = the card's PRMPAR)", minimum=0),
        Parameter("emin", float, 0.0, "lowest energy in GeV (0 = the card's ERANGE)", minimum=0),
        Parameter("emax", float, 0.0, "highest energy in GeV (0 = the card's ERANGE)", minimum=0),
        Parameter(
            "theta_max",
            float,
            -1.0,
            "largest zenith angle, deg (-1 = the card's THETAP)",
            maximum=70,
        ),
        Parameter("n_core", int, 40, "core distances of the Cherenkov density", minimum=2),
        Parameter("r_max", float, 1000.0, "largest core distance in m", minimum=10),
        Parameter("corsika_image", str, "", "container image with CORSIKA ('' = numpy model)"),
        Parameter(
            "corsika_engine",
            str,
            "apptainer",
            "container engine for CORSIKA",
            choices=("apptainer", "singularity", "docker", "podman"),
        ),
        Parameter("corsika_executable", str, "corsika", "CORSIKA executable in the image"),
    ],
    schema=schema,
    observations="run numbers, e.g. 1..20",
)
