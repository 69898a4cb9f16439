"""A light air-shower model in numpy: Heitler–Matthews development and Cherenkov light.

For each shower of a run (energies, zenith and azimuth angles drawn from the
steering card's ranges, :mod:`esap_dask.iact.corsika`):

* **Depth of maximum** from the Heitler–Matthews model (Matthews 2005,
  Astropart. Phys. 22, 387). Electromagnetic primaries:
  ``Xmax = X0 ln(E0/ξc)``. Hadrons: ``Xmax = X0 ln(E0 / (3 Nch ξc)) + λI ln 2``
  with ``Nch = 41.2 (E0/PeV)^(1/5)`` charged pions a generation and
  ``λI = 90 - 9 log10(E0/PeV)`` g/cm² (the rising p-air cross section); a
  nucleus of mass ``A`` is ``A`` protons of ``E0/A`` (superposition). The
  elongation rate ``dXmax/dlog10 E0`` is then ``X0 ln 10`` (84 g/cm²) for photons
  and ``0.8 X0 ln 10 - 9 ln 2`` (61 g/cm²) for hadrons: :func:`elongation_rate`.
* **Shower-to-shower fluctuations** from the first interaction depth ``X1``,
  exponential with the interaction length of the primary (``9/7 X0`` for
  photons, ``λI A^-0.44`` for nuclei): ``Xmax = <Xmax> + X1 - <X1>``.
* **Size at maximum** from Greisen's formula on the electromagnetic energy
  (``E0`` for photons; ``E0 (1 - (E0/(A ξπ))^(β-1))`` for hadrons, ``β = 0.85``,
  ``ξπ = 20 GeV``): ``Nmax = 0.31 / sqrt(ln(Eem/ξc)) Eem/ξc``.
* **Longitudinal profile** of charged particles: a Gaisser–Hillas curve from
  ``X1`` through ``(Xmax, Nmax)`` with ``λ = 70 g/cm²``, on a slant-depth grid
  (NaN below the observation level).
* **Cherenkov photon density** at the observation level, in the shower plane,
  versus core distance: each depth step emits ``Y N(X) ΔX`` photons in the
  card's wavelength band (``Y = 4πα (1/λ1 - 1/λ2) η0/ρ0`` per g/cm², times the
  fraction of charged particles above the Cherenkov threshold ``Et``, taken as
  ``1 / (1 + Et / Es)`` with ``Es = 4 MeV exp(-3 (s - 1))`` at shower age ``s``)
  on a cone of angle
  ``sqrt(2 η(h))``; the light lands on a ring of radius ``d tan θc`` smeared by
  the electrons' lateral and angular spread (a Rice distribution), which gives
  the plateau to the "Cherenkov shoulder" (about 120 m) and the fall beyond.

The atmosphere is isothermal (``X_v = 1030 exp(-h / 8 km)`` g/cm²). This is a
teaching-grade model, good for the trends (elongation rate, the shoulder and
the fall of the light) and for exercising the pipeline at scale; it is not a
replacement for CORSIKA, which the ``concordia`` pipeline runs instead when an
image is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from esap_dask.iact.corsika import Card

__all__ = [
    "Showers",
    "cherenkov_density",
    "core_distances",
    "depth_grid",
    "elongation_rate",
    "ground_depth",
    "mean_xmax",
    "simulate",
]

X0 = 36.62  # radiation length in air, g/cm²
XI_C = 0.085  # electromagnetic critical energy in air, GeV
XI_PI = 20.0  # pion critical energy, GeV
BETA = 0.85  # Matthews: fraction of energy to the hadronic channel a generation
LAMBDA_GH = 70.0  # Gaisser–Hillas width, g/cm²
X_SEA = 1030.0  # vertical depth at sea level, g/cm²
H_SCALE = 8.0e5  # scale height, cm
ETA0 = 2.83e-4  # refractive index minus one at sea level
RHO0 = X_SEA / H_SCALE  # density at sea level, g/cm³
ALPHA = 1 / 137.036
M_E = 0.000511  # electron mass, GeV
PEV = 1.0e6  # GeV
E_SOFT = 0.004  # GeV: electrons above the threshold Et at maximum ~ 1 / (1 + Et / E_SOFT)
SOFTEN = 3.0  # older showers are softer: E_SOFT falls as exp(-SOFTEN (age - 1))
LATERAL = 0.05  # lateral spread of the emitting particles, in Moliere radii
ANGULAR = 0.004  # angular spread of the emitting particles, rad


def interaction_length(energy: np.ndarray, mass: int, electromagnetic: bool) -> np.ndarray:
    """Mean depth of the first interaction in g/cm²."""
    if electromagnetic:
        return np.full_like(energy, 9.0 / 7.0 * X0)
    lam_p = np.clip(90.0 - 9.0 * np.log10(energy / mass / PEV), 40.0, 120.0)
    return lam_p * float(mass) ** -0.44


def mean_xmax(energy: np.ndarray | float, card: Card) -> np.ndarray:
    """Heitler–Matthews ``<Xmax>`` in g/cm² for primaries of ``energy`` GeV of the card's type."""
    e_gev = np.asarray(energy, dtype=float)
    if card.electromagnetic:
        return X0 * np.log(e_gev / XI_C)
    a = card.mass_number
    per_nucleon = e_gev / a
    nch = 41.2 * (per_nucleon / PEV) ** 0.2
    lam_i = np.clip(90.0 - 9.0 * np.log10(per_nucleon / PEV), 40.0, 120.0)
    return X0 * np.log(per_nucleon / (3.0 * nch * XI_C)) + lam_i * np.log(2.0)


def elongation_rate(card: Card) -> float:
    """The model's ``dXmax / dlog10(E0)`` in g/cm² per decade for the card's primary."""
    if card.electromagnetic:
        return X0 * np.log(10.0)
    return 0.8 * X0 * np.log(10.0) - 9.0 * np.log(2.0)


def n_max(energy: np.ndarray, card: Card) -> np.ndarray:
    """Charged particles at the shower maximum (Greisen, on the electromagnetic energy)."""
    e_em = energy
    if not card.electromagnetic:
        a = card.mass_number
        e_em = energy * (1.0 - np.clip(energy / (a * XI_PI), 1.0, None) ** (BETA - 1.0))
    ratio = np.clip(e_em / XI_C, math.e, None)
    return 0.31 / np.sqrt(np.log(ratio)) * ratio


def ground_depth(card: Card, zenith_deg: np.ndarray | float) -> np.ndarray:
    """Slant depth of the observation level along the shower axis, g/cm²."""
    vertical = X_SEA * np.exp(-card.obslev / H_SCALE)
    return vertical / np.cos(np.radians(zenith_deg))


def depth_grid(card: Card) -> np.ndarray:
    """The slant-depth grid of the profiles: ``LONGI`` steps to the deepest ground."""
    deepest = float(ground_depth(card, card.thetap[1]))
    return np.arange(card.longi_step, deepest + card.longi_step, card.longi_step)


def core_distances(n: int = 40, r_max: float = 1000.0) -> np.ndarray:
    """Core distances in m: ``n`` log-spaced from 5 m to ``r_max``."""
    return np.geomspace(5.0, r_max, n)


def gaisser_hillas(x: np.ndarray, x1: np.ndarray, xmax: np.ndarray, nmax: np.ndarray) -> np.ndarray:
    """Charged particles at slant depths ``x`` (one row per shower)."""
    x = np.asarray(x)[None, :]
    x1, xmax, nmax = (np.asarray(v)[:, None] for v in (x1, xmax, nmax))
    width = np.maximum(xmax - x1, 1.0)
    t = np.clip((x - x1) / width, 0.0, None)
    with np.errstate(divide="ignore"):
        log_n = width / LAMBDA_GH * np.log(t) + (xmax - x) / LAMBDA_GH
    return np.where(t > 0, nmax * np.exp(log_n), 0.0)


def _i0e(z: np.ndarray) -> np.ndarray:
    """``I0(z) exp(-z)``, without overflow."""
    small = z < 50.0
    zs = np.where(small, z, 1.0)
    zl = np.where(small, 1.0, z)
    series = np.i0(zs) * np.exp(-zs)
    asym = (1 + 1 / (8 * zl) + 9 / (128 * zl**2)) / np.sqrt(2 * np.pi * zl)
    return np.where(small, series, asym)


def cherenkov_density(
    x: np.ndarray, profile: np.ndarray, zenith_deg: float, xmax: float, card: Card, r: np.ndarray
) -> np.ndarray:
    """Cherenkov photons per m² at core distances ``r`` (m) of one shower's ``profile`` on ``x``."""
    cos_z = np.cos(np.radians(zenith_deg))
    height = -H_SCALE * np.log(np.clip(x * cos_z / X_SEA, 1e-12, None))  # cm
    above = (height > card.obslev) & np.isfinite(profile) & (profile > 0)
    if not above.any():
        return np.zeros_like(r)
    h, n, age = height[above], profile[above], 3 * x[above] / (x[above] + 2 * xmax)
    eta = ETA0 * np.exp(-h / H_SCALE)
    lo, hi = (w * 1e-7 for w in card.cwavlg)  # nm -> cm
    threshold = M_E / np.sqrt(2 * eta)  # GeV
    fraction = 1.0 / (1.0 + threshold / (E_SOFT * np.exp(-SOFTEN * (age - 1.0))))
    per_depth = 4 * np.pi * ALPHA * (1 / lo - 1 / hi) * ETA0 / RHO0  # photons per g/cm²
    photons = per_depth * fraction * n * card.longi_step
    dist = (h - card.obslev) / cos_z / 100.0  # m along the axis to the observation plane
    ring = dist * np.sqrt(2 * eta)
    r_moliere = 9.6 / (RHO0 * np.exp(-h / H_SCALE)) / 100.0  # m
    spread = np.hypot(LATERAL * r_moliere, ANGULAR * dist)
    s2 = spread[None, :] ** 2
    rr, rg = r[:, None], ring[None, :]
    z = rr * rg / s2
    kernel = np.exp(-((rr - rg) ** 2) / (2 * s2)) * _i0e(z) / (2 * np.pi * s2)
    return np.asarray(kernel @ photons)


@dataclass(frozen=True)
class Showers:
    """The showers of one run (one row per shower)."""

    energy: np.ndarray
    zenith: np.ndarray
    azimuth: np.ndarray
    first_interaction: np.ndarray
    xmax: np.ndarray
    nmax: np.ndarray
    profile: np.ndarray
    cherenkov_density: np.ndarray
    cherenkov_photons: np.ndarray

    def as_products(self) -> dict[str, Any]:
        """The products by variable name (the ``concordia`` schema)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _energies(rng: np.random.Generator, card: Card, n: int) -> np.ndarray:
    lo, hi = card.erange
    u = rng.random(n)
    if lo == hi:
        return np.full(n, lo)
    g = card.eslope + 1.0
    if abs(g) < 1e-9:
        return lo * (hi / lo) ** u
    return (lo**g + u * (hi**g - lo**g)) ** (1.0 / g)


def simulate(card: Card, seed: np.random.SeedSequence, *, r: np.ndarray) -> Showers:
    """The ``card.nshow`` showers of one run, drawn from ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    n = card.nshow
    energy = _energies(rng, card, n)
    c0, c1 = np.cos(np.radians(card.thetap))
    zenith = np.degrees(np.arccos(np.sqrt(c0**2 + rng.random(n) * (c1**2 - c0**2))))
    azimuth = card.phip[0] + rng.random(n) * (card.phip[1] - card.phip[0])
    lam = interaction_length(energy, card.mass_number, card.electromagnetic)
    x1 = rng.exponential(lam)
    xmax = mean_xmax(energy, card) + x1 - lam
    nmax = n_max(energy, card)
    x = depth_grid(card)
    profile = gaisser_hillas(x, x1, xmax, nmax)
    profile[x[None, :] > ground_depth(card, zenith)[:, None]] = np.nan
    density = np.stack(
        [
            cherenkov_density(x, p, z, m, card, r)
            for p, z, m in zip(profile, zenith, xmax, strict=True)
        ]
    )
    return Showers(
        energy=energy,
        zenith=zenith,
        azimuth=azimuth,
        first_interaction=x1,
        xmax=xmax,
        nmax=nmax,
        profile=profile,
        cherenkov_density=density,
        cherenkov_photons=np.trapezoid(2 * np.pi * r * density, r, axis=1),
    )
