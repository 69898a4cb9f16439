"""The GADF reader: real H.E.S.S. files, instrument variations, and clear errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from esap_dask import Observation
from esap_dask.iact.gadf import GADFError, read_events, select_observations
from esap_dask.iact.synthetic import write_observations

HESS = Path(__file__).parents[2] / "shared" / "data" / "hess-dl3-dr1"
CRAB_RUN = HESS / "data" / "hess_dl3_dr1_obs_id_023523.fits.gz"


@pytest.fixture(scope="module")
def hess() -> Path:
    if not (HESS / "obs-index.fits.gz").is_file():
        pytest.fail(f"the H.E.S.S. DL3 DR1 data is missing: expected it at {HESS}")
    return HESS


def test_reads_a_hess_run_as_astropy_sees_it(hess: Path) -> None:
    events = read_events(CRAB_RUN)
    with fits.open(CRAB_RUN) as hdus:
        header, table = hdus["EVENTS"].header, hdus["EVENTS"].data
        gti = hdus["GTI"].data
        assert events.obs_id == header["OBS_ID"] == 23523
        assert events.n_events == len(table) == 7613
        assert events.livetime == header["LIVETIME"]
        assert events.deadc == header["DEADC"]
        assert (events.ra_pnt, events.dec_pnt) == (header["RA_PNT"], header["DEC_PNT"])
        assert (events.ra_obj, events.dec_obj) == (header["RA_OBJ"], header["DEC_OBJ"])
        np.testing.assert_array_equal(events.energy, table["ENERGY"])
        np.testing.assert_array_equal(events.ra, table["RA"])
        np.testing.assert_array_equal(events.gti_start, gti["START"])
    assert events.target == "Crab Nebula"
    assert events.zenith == pytest.approx(90 - header["ALT_PNT"])
    assert events.irfs == {"aeff": True, "edisp": True, "psf": True, "bkg": True}


def test_missing_keywords_come_from_the_obs_index(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1, seed=2, index=True)
    original = read_events(path)
    with fits.open(path) as hdus:
        for key in ("RA_OBJ", "DEC_OBJ", "LIVETIME", "ALT_PNT", "OBJECT"):
            del hdus["EVENTS"].header[key]
        hdus.writeto(path, overwrite=True)
    events = read_events(path)
    assert events.ra_obj == original.ra_obj
    assert events.livetime == pytest.approx(original.livetime)
    assert events.zenith == pytest.approx(original.zenith)
    assert events.target == "Synthetic source"
    assert "RA_OBJ from the obs-index" in events.notes


def test_missing_required_keyword_without_index_names_file_and_keyword(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1)
    with fits.open(path) as hdus:
        del hdus["EVENTS"].header["RA_PNT"]
        hdus.writeto(path, overwrite=True)
    with pytest.raises(GADFError, match=r"synthetic_obs_id_000001\.fits.*'RA_PNT'"):
        read_events(path)


def test_missing_column_and_missing_hdu_are_named(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1)
    with fits.open(path) as hdus:
        cols = [c for c in hdus["EVENTS"].columns if c.name != "ENERGY"]
        new = fits.BinTableHDU.from_columns(cols, header=hdus["EVENTS"].header)
        fits.HDUList([hdus[0], new, hdus["GTI"]]).writeto(tmp_path / "noenergy.fits")
        fits.HDUList([hdus[0], hdus["GTI"]]).writeto(tmp_path / "noevents.fits")
    with pytest.raises(GADFError, match=r"noenergy\.fits: EVENTS has no column 'ENERGY'"):
        read_events(tmp_path / "noenergy.fits")
    with pytest.raises(GADFError, match=r"noevents\.fits: has no EVENTS HDU"):
        read_events(tmp_path / "noevents.fits")


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.99])
@pytest.mark.parametrize("compressed", [True, False])
def test_truncated_files_are_named(tmp_path: Path, fraction: float, compressed: bool) -> None:
    whole = CRAB_RUN.read_bytes() if compressed else gzip.decompress(CRAB_RUN.read_bytes())
    truncated = tmp_path / ("cut.fits.gz" if compressed else "cut.fits")
    truncated.write_bytes(whole[: int(len(whole) * fraction)])
    with pytest.raises(GADFError, match=r"cut\.fits(\.gz)?: truncated"):
        read_events(truncated)


def test_non_fits_and_missing_files_are_named(tmp_path: Path) -> None:
    text = tmp_path / "notes.fits"
    text.write_text("these are not FITS data\n" * 120)
    with pytest.raises(GADFError, match=r"notes\.fits: not a FITS file"):
        read_events(text)
    with pytest.raises(GADFError, match=r"absent\.fits: no such file"):
        read_events(tmp_path / "absent.fits")


def test_gzip_extra_hdus_columns_and_gev_energies(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1, seed=5)
    plain = read_events(path)
    with fits.open(path) as hdus:
        events = hdus["EVENTS"]
        cols = list(events.columns)
        for c in cols:
            if c.name == "ENERGY":
                c.array = events.data["ENERGY"] * 1000
                c.unit = "GeV"
        cols.append(fits.Column("MULTIP", "J", array=np.full(len(events.data), 3)))
        new = fits.BinTableHDU.from_columns(cols, header=events.header)
        extra = fits.ImageHDU(np.zeros((4, 4)), name="POINTING")
        blob = tmp_path / "variant.fits"
        fits.HDUList([hdus[0], extra, new, hdus["GTI"]]).writeto(blob)
    gz = tmp_path / "variant.fits.gz"
    gz.write_bytes(gzip.compress(blob.read_bytes()))
    variant = read_events(gz)
    np.testing.assert_allclose(variant.energy, plain.energy, rtol=1e-6)
    assert variant.n_events == plain.n_events
    assert variant.livetime == plain.livetime


def test_irfs_in_separate_files_are_found_through_the_hdu_index(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1, index=True)
    assert read_events(path).irfs["aeff"] is False
    aeff = fits.BinTableHDU.from_columns([fits.Column("ENERG_LO", "E", array=[0.1])], name="AEFF")
    fits.HDUList([fits.PrimaryHDU(), aeff]).writeto(tmp_path / "irf_aeff.fits")
    from astropy.table import Table

    index = Table.read(tmp_path / "hdu-index.fits.gz")
    index.add_row((1, "aeff", "aeff_2d", ".", "irf_aeff.fits", "AEFF"))
    index.write(tmp_path / "hdu-index.fits.gz", overwrite=True)
    irfs = read_events(path).irfs
    assert irfs["aeff"] is True
    assert irfs["edisp"] is False


def test_obs_index_selection(hess: Path) -> None:
    index = hess / "obs-index.fits.gz"
    crab = select_observations(index, target="crab")
    assert [o.id for o in crab] == [
        f"hess_dl3_dr1_obs_id_0{i}.fits.gz" for i in (23523, 23526, 23559, 23592)
    ]
    assert all(o == Observation.of(o.value) for o in crab)
    assert all(Path(o.value).is_file() for o in crab)
    everything = select_observations(index)
    assert len(everything) == 105
    low = select_observations(index, zenith=(0, 30))
    zeniths = [read_events(o.value).zenith for o in low]
    assert 0 < len(low) < 105 and max(zeniths) <= 30
    chosen = select_observations(index, obs_ids=[23592, 20136])
    assert [read_events(o.value).obs_id for o in chosen] == [20136, 23592]
    with pytest.raises(GADFError, match=r"obs_id\(s\) \[1\] are not in the obs-index"):
        select_observations(index, obs_ids=[1])


def test_obs_index_without_hdu_index_scans_the_files(tmp_path: Path) -> None:
    paths = write_observations(tmp_path, 3, index=True)
    (tmp_path / "hdu-index.fits.gz").unlink()
    chosen = select_observations(tmp_path / "obs-index.fits.gz", obs_ids=[2, 3])
    assert [o.value for o in chosen] == [str(p) for p in paths[1:]]


def test_gti_and_time_keywords_stand_in_for_each_other(tmp_path: Path) -> None:
    [path] = write_observations(tmp_path, 1, seed=3)
    original = read_events(path)
    with fits.open(path) as hdus:
        fits.HDUList([hdus[0], hdus["EVENTS"]]).writeto(tmp_path / "no_gti.fits")
        del hdus["EVENTS"].header["TSTART"]
        del hdus["EVENTS"].header["TSTOP"]
        hdus.writeto(tmp_path / "no_tstart.fits")
    no_tstart = read_events(tmp_path / "no_tstart.fits")
    assert (no_tstart.tstart, no_tstart.tstop) == (original.tstart, original.tstop)
    no_gti = read_events(tmp_path / "no_gti.fits")
    assert no_gti.gti_start.tolist() == [original.tstart]
    assert no_gti.gti_stop.tolist() == [original.tstop]
    assert "no GTI HDU: one interval TSTART..TSTOP" in no_gti.notes
