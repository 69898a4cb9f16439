"""The synthetic GADF generator: valid, realistic, deterministic, fast; the source is found."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

import esap_dask
from esap_dask.iact.dl3 import angular_separation, stack
from esap_dask.iact.gadf import read_events
from esap_dask.iact.synthetic import DEFAULT_TARGET, EVENT_ROW_BYTES, write_observations


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_files_are_valid_gadf_with_the_expected_keywords(tmp_path: Path) -> None:
    paths = write_observations(tmp_path, 4, seed=1, n_events=500, source_counts=50)
    assert [p.name for p in paths] == [f"synthetic_obs_id_00000{i}.fits" for i in range(1, 5)]
    for path in paths:
        with fits.open(path) as hdus:
            hdus.verify("exception")
            assert [h.name for h in hdus] == ["PRIMARY", "EVENTS", "GTI"]
            header = hdus["EVENTS"].header
            assert hdus["EVENTS"].columns.names == ["EVENT_ID", "TIME", "RA", "DEC", "ENERGY"]
            for key in (
                "OBS_ID",
                "RA_PNT",
                "DEC_PNT",
                "LIVETIME",
                "DEADC",
                "TSTART",
                "TSTOP",
                "RA_OBJ",
                "DEC_OBJ",
                "OBJECT",
                "ALT_PNT",
                "AZ_PNT",
                "ONTIME",
                "MJDREFI",
            ):
                assert key in header, key
            data = hdus["EVENTS"].data
            assert len(data) == 500
            assert np.all(np.diff(data["TIME"]) >= 0)
            gti = hdus["GTI"].data
            assert np.all((data["TIME"] >= gti["START"][0]) & (data["TIME"] < gti["STOP"][0]))
            assert header["LIVETIME"] == pytest.approx(header["ONTIME"] * header["DEADC"])
            offset = angular_separation(header["RA_PNT"], header["DEC_PNT"], *DEFAULT_TARGET)
            assert offset == pytest.approx(0.5, abs=1e-9)
            assert data["ENERGY"].min() >= 0.2
    assert len({read_events(p).obs_id for p in paths}) == 4


def test_same_seed_same_bytes_other_seed_other_events(tmp_path: Path) -> None:
    a = write_observations(tmp_path / "a", 2, seed=7)
    b = write_observations(tmp_path / "b", 2, seed=7)
    c = write_observations(tmp_path / "c", 2, seed=8)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    gz = write_observations(tmp_path / "gz", 2, seed=7, compress=True)
    assert [p.name for p in gz] == [p.name + ".gz" for p in a]
    np.testing.assert_array_equal(read_events(gz[1]).ra, read_events(a[1]).ra)


def test_file_size_sets_the_event_count(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1, file_size=1_000_000)
    size = path.stat().st_size
    assert abs(size - 1_000_000) < 3 * 2880
    assert read_events(path).n_events == pytest.approx(1_000_000 / EVENT_ROW_BYTES, rel=0.03)


@pytest.mark.slow
def test_ten_thousand_small_files_in_well_under_a_minute(tmp_path: Path) -> None:
    # CPU time of this process: other work on a shared machine does not count against it
    t0, wall = time.process_time(), time.perf_counter()
    paths = write_observations(tmp_path, 10_000, seed=0)
    seconds, wall = time.process_time() - t0, time.perf_counter() - wall
    assert len(paths) == 10_000 and all(p.stat().st_size > 28_000 for p in paths[::997])
    assert seconds < 20, f"10,000 files took {seconds:.1f} s of CPU ({wall:.1f} s wall)"


@pytest.mark.slow
def test_injected_source_is_found_where_injected(tmp_path: Path, client: object) -> None:
    n_files, injected = 8, 150
    paths = write_observations(
        tmp_path / "obs", n_files, seed=11, n_events=3000, source_counts=injected
    )
    store = tmp_path / "synthetic.zarr"
    params = {"on_radius": 0.25, "map_center": "target", "map_size": 2.0, "map_binsz": 0.05}
    summary = esap_dask.map_observations(
        "dl3-products", paths, store, client=client, params=params, progress=False
    )
    assert summary.succeeded == n_files and summary.failed == 0
    ds = xr.open_zarr(store)
    total = stack(ds)
    # the excess matches the injected number within Poisson errors (3 sigma)
    n_on, n_off, alpha = float(total.n_on), float(total.n_off), float(total.alpha)
    error = np.sqrt(n_on + alpha**2 * n_off)
    assert abs(float(total.excess) - n_files * injected) < 3 * error
    assert float(total.significance) > 20
    # the brightest pixel of the stacked map is the injected position
    image = total.counts_map
    peak = image.where(image == image.max(), drop=True)
    assert abs(float(peak.x[0])) <= 0.05 and abs(float(peak.y[0])) <= 0.05
    # a region 1 degree off the source holds no excess
    elsewhere = esap_dask.map_observations(
        "dl3-products",
        paths,
        tmp_path / "elsewhere.zarr",
        client=client,
        progress=False,
        params={
            "on_radius": 0.25,
            "target": f"{DEFAULT_TARGET[0] + 1.2},{DEFAULT_TARGET[1]}",
        },
    )
    assert elsewhere.succeeded == n_files
    empty = stack(xr.open_zarr(tmp_path / "elsewhere.zarr"))
    assert abs(float(empty.significance)) < 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"target": "83.6"}, r"parameter 'target': '83\.6' is not 'RA,DEC'"),
        ({"target": "400,10"}, r"parameter 'target': '400,10' is not 'RA,DEC'"),
        ({"energy_min": 10, "energy_max": 1}, r"the maximum must be above the minimum"),
        ({"map_size": 0.02, "map_binsz": 0.05}, r"the map would have no pixel"),
    ],
)
def test_bad_parameters_fail_before_any_observation(
    tmp_path: Path, client: object, params: dict, message: str
) -> None:
    paths = write_observations(tmp_path / "obs", 2)
    with pytest.raises(esap_dask.ParameterError, match=message):
        esap_dask.map_observations(
            "dl3-products",
            paths,
            tmp_path / "bad.zarr",
            client=client,
            params=params,
            progress=False,
        )
    assert not (tmp_path / "bad.zarr" / "zarr.json").exists()
