"""The concordia pipeline: steering cards, the shower model's physics, and its store."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from esap_dask import map_observations
from esap_dask.catalogs.workflows import get_pipeline
from esap_dask.iact.corsika import (
    CardError,
    CardLine,
    corsika_command,
    format_card,
    parse_card,
    read_long,
)
from esap_dask.iact.showers import elongation_rate
from tests.conftest import ESAP_DASK

CARD = """\
* a test card
RUNNR   7
EVTNR   1
NSHOW   20
PRMPAR  14
ESLOPE  -2.0
ERANGE  1.E3  1.E4
THETAP  0.  30.
PHIP    -180.  180.
SEED    11  0  0
SEED    12  0  0
OBSLEV  2200.E2
CERSIZ  5.
CWAVLG  300.  550.
LONGI   T  10.  T  T
MAGNET  20.0  42.8
EXIT
"""

concordia = get_pipeline("concordia")


def run(run_number: int, **params: Any) -> dict[str, Any]:
    """One run of the pipeline function, as a worker calls it."""
    return dict(concordia.function(run_number, **concordia.resolve(params)))


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ("NSHOW   20", "NSHWO   20", r"line 4: unknown keyword 'NSHWO'"),
        ("ERANGE  1.E3  1.E4", "ERANGE  1.E4  1.E3", r"line 7: ERANGE needs 0 < low <= high"),
        ("ERANGE  1.E3  1.E4", "ERANGE  1.E3", r"line 7: ERANGE needs 2 value\(s\), got 1"),
        ("PRMPAR  14", "PRMPAR  fourteen", r"line 5: PRMPAR value 1 must be a whole number"),
        ("PRMPAR  14", "PRMPAR  99", r"line 5: PRMPAR is not a primary"),
        ("NSHOW   20", "NSHOW   2.5", r"line 4: NSHOW value 1 must be a whole number"),
        ("THETAP  0.  30.", "THETAP  0.  80.", r"line 8: THETAP needs 0 <= low <= high <= 70"),
        ("CWAVLG  300.  550.", "CWAVLG  550.  300.", r"line 14: CWAVLG needs 100 <= low < high"),
        ("SEED    12  0  0", "SEED    0  0  0", r"line 11: SEED must be within 1 .. 900000000"),
        ("EVTNR   1", "NSHOW   3", r"line 4: NSHOW given twice \(first on line 3\)"),
    ],
)
def test_card_errors_name_the_keyword_and_line(replace: str, by: str, message: str) -> None:
    """Errors name the line and keyword, never the value's text (a card may be a file)."""
    with pytest.raises(CardError, match=r"^my\.card, " + message):
        parse_card(CARD.replace(replace, by), source="my.card")


def test_card_values_and_round_trip() -> None:
    card = parse_card(CARD)
    assert (card.nshow, card.prmpar, card.erange, card.thetap) == (20, 14, (1e3, 1e4), (0, 30))
    assert card.seeds == ((11, 0, 0), (12, 0, 0)) and card.obslev == 2200e2
    assert card.cwavlg == (300, 550) and card.longi_step == 10
    assert CardLine("MAGNET", (20.0, 42.8)) in card.extra, "keywords the model ignores are kept"
    assert "MAGNET  20.0 42.8" in format_card(card).splitlines(), "written from parsed values"
    text = format_card(card, run=42, seeds=[5, 6])
    again = parse_card(text)
    assert again.runnr == 42 and again.seeds == ((5, 0, 0), (6, 0, 0))
    assert again.replace(runnr=7, seeds=card.seeds) == card


def test_a_missing_card_file_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(
        CardError, match=r"parameter 'card': card .*: no such file; give a path that exists"
    ):
        run(1, card=str(tmp_path / "nope.card"))


def mean_xmax(primary: int, energy: float, n: int = 2000) -> float:
    out = run(1, primary=primary, emin=energy, emax=energy, nshow=n, n_core=2, theta_max=0)
    return float(np.mean(out["xmax"]))


@pytest.mark.parametrize(("primary", "expected"), [(14, 61.2), (1, 84.3)])
def test_xmax_grows_with_log_energy_at_the_elongation_rate(primary: int, expected: float) -> None:
    """Heitler–Matthews: 0.8 X0 ln10 - 9 ln2 = 61 g/cm² a decade (p), X0 ln10 = 84 (gamma)."""
    log_e = np.arange(3.0, 7.0)
    xmax = [mean_xmax(primary, 10.0**e) for e in log_e]
    slope = np.polyfit(log_e, xmax, 1)[0]
    card = parse_card(f"PRMPAR {primary}\nSEED 1\nEXIT")
    assert elongation_rate(card) == pytest.approx(expected, abs=0.1)
    assert slope == pytest.approx(expected, abs=4.0), xmax
    if primary == 14:  # Matthews (2005) quotes 470 g/cm² at 1 PeV, ~100 less than full MCs
        assert 450 < xmax[3] < 510
    else:  # X0 ln(1 PeV / 85 MeV) = 597 g/cm²
        assert 580 < xmax[3] < 615


def test_iron_peaks_higher_than_protons_and_fluctuates_less() -> None:
    p = run(1, primary=14, emin=1e6, emax=1e6, nshow=2000, n_core=2)["xmax"]
    fe = run(1, primary=5626, emin=1e6, emax=1e6, nshow=2000, n_core=2)["xmax"]
    assert 80 < np.mean(p) - np.mean(fe) < 160, "superposition: Xmax(E/56) is ~120 g/cm² higher"
    assert np.std(fe) < np.std(p) / 3


def test_size_at_maximum_grows_with_energy() -> None:
    low = run(1, primary=1, emin=1e4, emax=1e4, nshow=5, n_core=2)["nmax"]
    high = run(1, primary=1, emin=1e5, emax=1e5, nshow=5, n_core=2)["nmax"]
    assert 8 < high[0] / low[0] < 11, "nearly proportional to the energy (Greisen)"
    assert 0.9e4 < low[0] < 1.5e4, "a 10 TeV photon shower has ~1e4 particles at maximum"


def test_cherenkov_density_falls_with_core_distance() -> None:
    out = run(3, primary=1, emin=1e3, emax=1e3, nshow=50, theta_max=20)
    r = concordia.output_schema(concordia.resolve({})).coords[2].values
    density = np.median(out["cherenkov_density"], axis=0)
    shoulder = r[np.argmax(density)]
    beyond = density[r > 150]
    assert 50 < shoulder < 150, "the light pool's shoulder lies near 120 m"
    assert np.all(np.diff(beyond[beyond > 0]) < 0), "beyond the shoulder the density only falls"
    assert density[np.searchsorted(r, 300)] < density[np.searchsorted(r, 50)] / 10
    assert 20 < density[np.searchsorted(r, 60)] < 1000, "about 1e2 photons/m² a TeV"


def test_profile_ends_at_the_observation_level() -> None:
    out = run(2, card=CARD, nshow=5, n_core=2)
    depth = concordia.output_schema(concordia.resolve({"card": CARD, "n_core": 2})).coords[1]
    ground = 1030 * np.exp(-2200e2 / 8e5) / np.cos(np.radians(out["zenith"]))
    for row, g in zip(out["profile"], ground, strict=True):
        assert np.all(np.isfinite(row[depth.values <= g])) and np.all(
            np.isnan(row[depth.values > g])
        )
        peak = depth.values[np.nanargmax(row)]
    assert abs(peak - out["xmax"][-1]) <= 10 or out["xmax"][-1] > ground[-1]


def test_same_seed_same_showers_other_run_other_showers() -> None:
    a, b = run(5, card=CARD), run(5, card=CARD)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    c = run(6, card=CARD)
    assert not np.array_equal(a["xmax"], c["xmax"]) and not np.array_equal(a["seed"], c["seed"])
    d = run(5, card=CARD.replace("SEED    11", "SEED    13"))
    assert not np.array_equal(a["energy"], d["energy"])
    assert a["energy"].min() >= 1e3 and a["energy"].max() <= 1e4
    assert np.all(a["zenith"] <= 30)


def test_store_written_via_map_observations(client: Any, tmp_path: Path) -> None:
    store = tmp_path / "showers.zarr"
    params = {"card": CARD, "nshow": 8}
    summary = map_observations("concordia", "1..6", store, client=client, params=params)
    assert summary.ok and summary.succeeded == 6, summary.failures
    ds = xr.open_zarr(store)
    assert ds.xmax.dims == ("obs", "shower") and ds.xmax.shape == (6, 8)
    assert ds.profile.dims == ("obs", "shower", "depth")
    assert ds.cherenkov_density.dims == ("obs", "shower", "core_distance")
    assert ds.depth.attrs["units"] == "g cm-2" and ds.core_distance.attrs["units"] == "m"
    assert ds.xmax.attrs["description"] == "slant depth of the shower maximum"
    assert list(ds.obs.values) == [str(i) for i in range(1, 7)]
    direct = run(4, **params)
    np.testing.assert_array_equal(ds.xmax.sel(obs="4").values, direct["xmax"])
    np.testing.assert_array_equal(ds.seed.sel(obs="4").values, direct["seed"])
    again = map_observations("concordia", "1..6", store, client=client, params=params)
    assert again.skipped == 6 and again.processed == 0


def test_corsika_command_construction_only() -> None:
    """Builds the containerized CORSIKA command; NOT executed (no CORSIKA image here)."""
    argv = corsika_command("/cvmfs/corsika.sif", engine="apptainer", workdir="/scratch/run7")
    assert argv == [
        "apptainer", "exec", "--containall", "--pwd", "/scratch/run7",
        "--bind", "/scratch/run7:/scratch/run7", "--", "/cvmfs/corsika.sif", "corsika",
    ]  # fmt: skip
    argv = corsika_command("corsika:7.7500", engine="docker", executable="corsika77500Linux")
    assert argv[:6] == ["docker", "run", "--rm", "-i", "--network", "none"] and argv[-3:] == [
        "--",
        "corsika:7.7500",
        "corsika77500Linux",
    ]
    with pytest.raises(CardError, match="CORSIKA engine 'conda'"):
        corsika_command("img", engine="conda")
    card = parse_card(CARD)
    text = format_card(card, run=9, seeds=[101, 102])
    assert text.splitlines()[0] == "RUNNR   9" and "SEED    102 0 0" in text
    assert text.rstrip().endswith("EXIT")


def test_read_long_parses_profiles_and_gaisser_hillas_fit(tmp_path: Path) -> None:
    path = tmp_path / "DAT000009.long"
    path.write_text(
        " LONGITUDINAL DISTRIBUTION IN   3 VERTICAL STEPS OF   10. G/CM**2 FOR SHOWER      1\n"
        " DEPTH     GAMMAS   POSITRONS   ELECTRONS         MU+         MU-     HADRONS     "
        "CHARGED      NUCLEI   CHERENKOV\n"
        "   10.  1.0E+00  0.0E+00  0.0E+00  0.0E+00  0.0E+00  1.0E+00  1.0E+00  0.0E+00  0.0E+00\n"
        "   20.  5.0E+01  1.0E+01  2.0E+01  0.0E+00  0.0E+00  2.0E+00  3.2E+01  0.0E+00  1.0E+03\n"
        "   30.  9.0E+01  2.0E+01  4.0E+01  0.0E+00  0.0E+00  3.0E+00  6.3E+01  0.0E+00  2.0E+03\n"
        " LONGITUDINAL ENERGY DEPOSIT IN   3 VERTICAL STEPS OF   10. G/CM**2 FOR SHOWER      1\n"
        " FIT OF THE HILLAS CURVE   N(T) = P1 * ((T-P2)/(P3-P2))**((P3-P2)/(P4+P5*T+P6*T**2))\n"
        " PARAMETERS         =   2.3134E+05  -1.2695E+01   5.4813E+02   5.6154E+01  -1.2E-02"
        "  2.5E-05\n"
    )
    (shower,) = read_long(path)
    np.testing.assert_array_equal(shower["depth"], [10, 20, 30])
    np.testing.assert_array_equal(shower["charged"], [1, 32, 63])
    assert shower["xmax"] == pytest.approx(548.13) and shower["nmax"] == pytest.approx(2.3134e5)


def test_cli_reports_a_bad_card_in_one_line_and_exits_2(tmp_path: Path) -> None:
    card = tmp_path / "run.card"
    card.write_text(CARD.replace("CWAVLG  300.  550.", "CWAVLG  300."))
    args = ["run", "concordia", "-o", "1..3", "-s", str(tmp_path / "s.zarr"), "-p", f"card={card}"]
    done = subprocess.run(
        [*ESAP_DASK, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"error: parameter 'card': {card}, line 14: CWAVLG needs 2 value(s), got 1" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "s.zarr").exists()
