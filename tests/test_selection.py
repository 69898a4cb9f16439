"""gammapy-style selection over the H.E.S.S. DR1 obs-index, in the API and the CLI.

Each selection's obs_ids are checked against the index read with astropy (its own
Table, SkyCoord and Time), not against our reader.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time, TimeDelta

from esap_dask import map_observations
from esap_dask.engine.observations import SelectionError, as_observations
from tests.conftest import ESAP_DASK, ROOT


@pytest.fixture(scope="module")
def table(hess_dir: Path) -> Table:
    return Table.read(hess_dir / "obs-index.fits.gz")


def ids_of(observations: list) -> list[int]:
    """obs_ids of selected observations, from their file names (hess_dl3_dr1_obs_id_NNNNNN)."""
    return [int(o.id.split("_")[-1].split(".")[0]) for o in observations]


def chosen(hess_dir: Path, **select: object) -> list[int]:
    return ids_of(as_observations(hess_dir / "obs-index.fits.gz", select=select))


def test_target_cone_zenith_obs_id_and_time_match_astropy(hess_dir: Path, table: Table) -> None:
    """Every key, alone and combined, chooses exactly the rows astropy finds."""
    obs_id = np.asarray(table["OBS_ID"]).tolist()
    # target= looks in OBJECT and TARGET_NAME (they differ for some runs)
    objects = [f"{o} | {t}" for o, t in zip(table["OBJECT"], table["TARGET_NAME"], strict=True)]
    crab = [i for i, o in zip(obs_id, objects, strict=True) if "crab" in o.lower()]
    assert len(crab) == 4
    assert chosen(hess_dir, target="Crab") == crab
    assert chosen(hess_dir, target="pks 2155") == [
        i for i, o in zip(obs_id, objects, strict=True) if "pks 2155" in o.lower()
    ]

    pointing = SkyCoord(table["RA_PNT"], table["DEC_PNT"], unit="deg")
    rxj = SkyCoord(258.1125, -39.6867, unit="deg")  # RX J1713.7-3946
    near = (pointing.separation(rxj) <= 2 * u.deg).tolist()
    want = [i for i, k in zip(obs_id, near, strict=True) if k]
    assert want and chosen(hess_dir, cone="258.1125,-39.6867,2") == want
    assert chosen(hess_dir, cone=(258.1125, -39.6867, 2.0)) == want

    zen = np.asarray(table["ZEN_PNT"])
    assert chosen(hess_dir, zenith="0..40") == [
        i for i, z in zip(obs_id, zen, strict=True) if 0 <= z <= 40
    ]
    assert chosen(hess_dir, target="MSH", zenith=(30, 40)) == [
        i
        for i, o, z in zip(obs_id, objects, zen, strict=True)
        if "msh" in o.lower() and 30 <= z <= 40
    ]

    assert chosen(hess_dir, obs_id="23523,23526") == [23523, 23526]
    assert chosen(hess_dir, obs_id=[23526, 23523]) == [23523, 23526]  # index order
    assert chosen(hess_dir, obs_id="33787..33800") == [i for i in obs_id if 33787 <= i <= 33800]

    ref = Time(table.meta["MJDREFI"] + table.meta["MJDREFF"], format="mjd", scale="tt")
    start = ref + TimeDelta(np.asarray(table["TSTART"], float) * u.s)
    stop = ref + TimeDelta(np.asarray(table["TSTOP"], float) * u.s)
    lo, hi = Time("2008-08-01", scale="utc"), Time("2008-09-01", scale="utc")
    inside = ((start >= lo) & (stop <= hi)).tolist()
    want = [i for i, k in zip(obs_id, inside, strict=True) if k]
    assert want and chosen(hess_dir, time="2008-08-01..2008-09-01") == want
    assert chosen(hess_dir, time=(lo, hi)) == want
    assert chosen(hess_dir, time=f"{lo.mjd}..{hi.mjd}") == want


@pytest.mark.parametrize(
    ("select", "named"),
    [
        ({"zenit": "0..40"}, "'zenit'"),
        ({"zenith": "40..0"}, "zenith='40..0'"),
        ({"zenith": "low..high"}, "zenith='low..high'"),
        ({"cone": "83.6,22"}, "cone='83.6,22'"),
        ({"cone": "83.6,95,1"}, "cone='83.6,95,1'"),
        ({"obs_id": "12,abc"}, "obs_id='12,abc'"),
        ({"obs_id": [1, 23523]}, "obs_id(s) [1]"),
        ({"time": "2008-13-45..2009-01-01"}, "time="),
        ({"time": "2009-01-01"}, "time='2009-01-01'"),
    ],
)
def test_bad_selection_names_the_key(hess_dir: Path, select: dict, named: str) -> None:
    with pytest.raises(SelectionError, match=None) as err:
        as_observations(hess_dir / "obs-index.fits.gz", select=select)
    assert named in str(err.value)


def test_selection_of_something_not_an_index_is_refused(hess_dir: Path) -> None:
    with pytest.raises(SelectionError, match="applies to an observation index"):
        as_observations(str(hess_dir / "data" / "*.fits.gz"), select={"target": "Crab"})


def test_map_observations_with_select(hess_dir: Path, tmp_path: Path, client: object) -> None:
    """The store holds exactly the selected runs."""
    store = tmp_path / "pks.zarr"
    summary = map_observations(
        "helloworld",
        hess_dir / "obs-index.fits.gz",
        store,
        select={"target": "PKS 2155", "zenith": (0, 40)},
        client=client,
        progress=False,
    )
    want = chosen(hess_dir, target="PKS 2155", zenith="0..40")
    assert summary.total == summary.succeeded == len(want)
    with xr.open_zarr(store) as ds:
        assert ids_of([type("O", (), {"id": str(o)}) for o in ds["obs"].values]) == want


@pytest.mark.slow
def test_cli_select(hess_dir: Path, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """--select keys combine; a bad key, value or form exits 2 naming it."""
    store = tmp_path / "msh.zarr"
    index = str(hess_dir / "obs-index.fits.gz")
    base = [*ESAP_DASK, "run", "helloworld", "-o", index, "-s", str(store)]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *extra], capture_output=True, text=True, env=cli_env, cwd=ROOT, check=False
        )

    done = run("--select", "target=MSH", "--select", "obs_id=20000..30000", "--json")
    assert done.returncode == 0, done.stderr
    want = chosen(hess_dir, target="MSH", obs_id="20000..30000")
    assert want and json.loads(done.stdout)["total"] == len(want)
    with xr.open_zarr(store) as ds:
        assert ids_of([type("O", (), {"id": str(o)}) for o in ds["obs"].values]) == want

    for extra, named in [
        (["--select", "altitude=10..20"], "unknown selection key 'altitude'"),
        (["--select", "zenith=ten"], "zenith='ten'"),
        (["--select", "target"], "--select 'target'"),
    ]:
        bad = run(*extra)
        assert bad.returncode == 2, bad.stderr
        assert named in bad.stderr
    files, other = str(hess_dir / "data" / "*.fits.gz"), str(tmp_path / "g.zarr")
    glob = subprocess.run(
        [*ESAP_DASK, "run", "helloworld", "-o", files, "-s", other, "--select", "target=Crab"],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=ROOT,
        check=False,
    )
    assert glob.returncode == 2 and "observation index" in glob.stderr
    helped = subprocess.run(
        [*ESAP_DASK, "run", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "--select" in helped.stdout and "--input-storage-options" in helped.stdout
