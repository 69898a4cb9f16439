"""The 105 H.E.S.S. DR1 runs read from the local S3 by grid workers of the dirac facility.

Needs ``bash scripts/diracx.sh start`` (DiracX, its moto S3 and the local site, on
loopback). The release is uploaded from ../shared (read in place, never copied into
the project) into a bucket of this test; grid workers read the runs through fsspec
with the input storage options of the facility (the Dask config key
``esap.facilities.dirac.storage_options``), and write their store on the same S3.
The products equal those of the same pipelines run on the local files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xarray as xr
from distributed import Client

import esap_dask
import esap_dask.catalogs.facilities as facilities
from esap_dask import map_observations
from esap_dask.config import WORKER_ENVIRONMENT
from tests.conftest import ROOT
from tests.test_dirac import dirac_env, diracx
from tests.test_dirac_mapper import dirac_s3, s3

pytestmark = [pytest.mark.dirac, pytest.mark.slow]
__all__ = ["dirac_env", "dirac_s3", "diracx", "s3"]  # fixtures used here


@pytest.fixture(scope="module")
def hess_s3(s3: dict[str, Any], hess_dir: Path) -> Iterator[str]:
    """The release (obs-index, hdu-index, 105 runs) under ``s3://<bucket>/hess-dl3-dr1/``."""
    fs, prefix = s3["fs"], f"{s3['bucket']}/hess-dl3-dr1"
    for name in ("obs-index.fits.gz", "hdu-index.fits.gz"):
        fs.put_file(str(hess_dir / name), f"{prefix}/{name}")
    runs = sorted((hess_dir / "data").glob("*.fits.gz"))
    assert len(runs) == 105
    fs.put([str(p) for p in runs], f"{prefix}/data/")
    yield f"s3://{prefix}"


def identical_products(remote: str, local: Path, opts: dict[str, Any]) -> None:
    with (
        xr.open_zarr(remote, storage_options=opts) as a,
        xr.open_zarr(local) as b,
    ):
        names = [v for v in b.data_vars if not str(v).startswith("ledger_")]
        assert sorted(names) == sorted(v for v in a.data_vars if not str(v).startswith("ledger_"))
        # the stores' own attrs (creation time, runs) differ; every array and its attrs agree
        xr.testing.assert_identical(
            a[names].load().assign_attrs(esap=None), b[names].load().assign_attrs(esap=None)
        )


def test_hess_from_s3_on_grid_workers_equals_local_reruns_only_the_changed(
    dirac_s3: dict[str, Any],
    hess_s3: str,
    hess_dir: Path,
    client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dl3-products (a glob) and gammapy-spectrum (the obs-index URL) from S3 on dirac."""
    # the site starts the shared environment's python: its workers import this tree's code
    monkeypatch.setitem(WORKER_ENVIRONMENT, "PYTHONPATH", str(ROOT))
    bucket, opts, fs = dirac_s3["bucket"], dirac_s3["options"], dirac_s3["fs"]
    dl3_store, spec_store = f"s3://{bucket}/dl3.zarr", f"s3://{bucket}/spectrum.zarr"
    cluster = facilities.open_cluster("dirac", poll_interval=1, walltime="01:00:00")
    try:
        with Client(cluster) as grid:
            cluster.scale(2)
            grid.wait_for_workers(2, timeout=180)
            dl3 = map_observations(
                "dl3-products", f"{hess_s3}/data/*.fits.gz", dl3_store,
                client=grid, facility="dirac", progress=False,
            )  # fmt: skip
            assert (dl3.total, dl3.succeeded) == (105, 105), dl3.failures
            spec = map_observations(
                "gammapy-spectrum", f"{hess_s3}/obs-index.fits.gz", spec_store,
                client=grid, facility="dirac", progress=False,
            )  # fmt: skip
            assert spec.total == 105 and spec.failed + spec.succeeded == 105

            again = map_observations(
                "dl3-products", f"{hess_s3}/data/*.fits.gz", dl3_store,
                client=grid, facility="dirac", progress=False,
            )  # fmt: skip
            assert (again.skipped, again.processed) == (105, 0), "an unchanged rerun runs nothing"

            name = "hess_dl3_dr1_obs_id_023523.fits.gz"  # uploaded again: a new Last-Modified
            fs.put_file(str(hess_dir / "data" / name), f"{hess_s3[5:]}/data/{name}")
            changed = map_observations(
                "dl3-products", f"{hess_s3}/data/*.fits.gz", dl3_store,
                client=grid, facility="dirac", progress=False,
            )  # fmt: skip
            assert (changed.processed, changed.succeeded, changed.skipped) == (1, 1, 104)
    finally:
        cluster.close()

    table = esap_dask.ledger(dl3_store, storage_options=opts)
    assert all(str(s).startswith(f"{hess_s3}/data/") for s in table.source)
    assert all(str(fp).startswith("etag:") for fp in table.fingerprint)
    assert all(len(str(c)) == 64 for c in table.checksum)

    local_dl3, local_spec = tmp_path / "dl3.zarr", tmp_path / "spectrum.zarr"
    ran = map_observations(
        "dl3-products", str(hess_dir / "data" / "*.fits.gz"), local_dl3,
        client=client, progress=False,
    )  # fmt: skip
    assert ran.succeeded == 105
    local = map_observations(
        "gammapy-spectrum", hess_dir / "obs-index.fits.gz", local_spec,
        client=client, progress=False,
    )  # fmt: skip
    assert (local.succeeded, local.failed) == (spec.succeeded, spec.failed)
    assert sorted(f["observation"] for f in local.failures) == sorted(
        f["observation"] for f in spec.failures
    )
    identical_products(dl3_store, local_dl3, opts)
    identical_products(spec_store, local_spec, opts)
