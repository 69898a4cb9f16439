"""energy-spectrum: counts per energy bin and the event rate of one DL3 event file.

Run it without installing anything:

    esap-dask run docs/examples/energy_spectrum.py \
        --observations 'esap-demo/observations/*.fits' --store spectrum.zarr \
        --param nbins=10
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.io import fits

from esap_dask import Coordinate, Parameter, Pipeline, Schema, Variable


def spectrum(path: str, *, emin: float, emax: float, nbins: int) -> dict[str, Any]:
    """Counts per log-energy bin, event rate and target name of the event file ``path``."""
    with fits.open(path) as hdul:
        events = hdul["EVENTS"]
        energy = np.asarray(events.data["ENERGY"], dtype=float)
        livetime = float(events.header["LIVETIME"])
        target = str(events.header.get("OBJECT", ""))
    if livetime <= 0:
        raise ValueError(f"{path}: LIVETIME is {livetime}, expected a positive number of seconds")
    edges = np.geomspace(emin, emax, nbins + 1)
    counts, _ = np.histogram(energy, bins=edges)
    return {"counts": counts, "rate": len(energy) / livetime, "target": target}


def _schema(p: Mapping[str, Any]) -> Schema:
    edges = np.geomspace(p["emin"], p["emax"], p["nbins"] + 1)
    return Schema(
        variables=[
            Variable(
                "counts",
                "int64",
                dims=("energy",),
                units="count",
                description="events per reconstructed-energy bin",
            ),
            Variable("rate", "float64", units="s-1", description="events per second of livetime"),
            Variable("target", "str", description="OBJECT keyword of the EVENTS header"),
        ],
        coords=[
            Coordinate(
                "energy",
                np.sqrt(edges[:-1] * edges[1:]),
                units="TeV",
                description="bin centre (geometric mean of the edges)",
            ),
        ],
    )


pipeline = Pipeline(
    name="energy-spectrum",
    version="1.0.0",
    description="Counts per energy bin and event rate of DL3 event files.",
    function=spectrum,
    parameters=[
        Parameter("emin", float, 0.1, "lowest bin edge, TeV", minimum=0.001),
        Parameter("emax", float, 100.0, "highest bin edge, TeV"),
        Parameter("nbins", int, 20, "number of log-spaced bins", minimum=1, maximum=1000),
    ],
    schema=_schema,
)
