"""gammapy-style selection of the observations of a GADF obs-index, local or at a URL.

The keys follow gammapy's ``ObservationTable`` selections (``sky_circle``, ``par_box``,
``time_box``) under the names an observer types::

    target=Crab            OBJECT or TARGET_NAME contains the text (case-insensitive)
    cone=83.63,22.01,3     pointing (RA_PNT, DEC_PNT) within 3 deg of RA 83.63, Dec 22.01
    zenith=0..40           ZEN_PNT (or 90 - ALT_PNT) within [0, 40] deg
    obs_id=23523,23526     these obs_ids (every one must be in the index); or 23523..23600
    time=2004-12-01..2005-01-31   observations wholly inside (TSTART/TSTOP with the index's
                           MJDREF and TIMESYS, else DATE-OBS/TIME-OBS and DATE-END/TIME-END);
                           ISO dates/times or MJDs (UTC)

Values are text (the CLI's ``--select KEY=VALUE``) or Python values (``zenith=(0, 40)``,
``obs_id=range(23523, 23601)``, ``cone=(83.63, 22.01, 3)``, ``time=(Time, Time)``). Every
key given must match. A bad key or value raises :class:`SelectionError` naming it.

The index may be a URL (``https://host/dr1/obs-index.fits.gz``, ``s3://bucket/dr1/...``): it
and the ``hdu-index`` beside it are read through fsspec, and the observations are the
URLs of the event files the hdu-index names.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from esap_dask.engine.observations import Observation, SelectionError, parse_range
from esap_dask.iact.gadf import GADFError

__all__ = ["KEYS", "GADFSelectionError", "parse_selection", "select_observations"]

#: The selection keys and what each takes.
KEYS = {
    "target": "text contained in OBJECT or TARGET_NAME, e.g. target=Crab",
    "cone": "RA,DEC,RADIUS in deg (ICRS), e.g. cone=83.63,22.01,3",
    "zenith": "MIN..MAX in deg, e.g. zenith=0..40",
    "obs_id": "ID,ID,... or FIRST..LAST, e.g. obs_id=23523..23600",
    "time": "START..STOP as ISO dates/times or MJDs (UTC), e.g. time=2004-12-01..2005-01-31",
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMERIC_RANGE = re.compile(rf"^\s*({_NUMBER})\s*\.\.\s*({_NUMBER})\s*$")


class GADFSelectionError(GADFError, SelectionError):
    """A selection the obs-index cannot satisfy: a column it lacks, an obs_id it lacks."""


def _bad(key: str, value: Any, why: str) -> SelectionError:
    return SelectionError(f"selection {key}={value!r}: {why}; give {KEYS[key]}")


def _floats(key: str, value: Any, n: int) -> tuple[float, ...]:
    if isinstance(value, str):
        match = _NUMERIC_RANGE.match(value) if n == 2 else None
        parts = [match[1], match[2]] if match else value.split(",")
    else:
        try:
            parts = list(value)
        except TypeError:
            raise _bad(key, value, f"expected {n} numbers") from None
    if len(parts) != n:
        raise _bad(key, value, f"expected {n} numbers, got {len(parts)}")
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise _bad(key, value, "not numbers") from None
    if not all(np.isfinite(numbers)):
        raise _bad(key, value, "not finite numbers")
    return numbers


def _obs_ids(value: Any) -> list[int] | range:
    """A list (every id must be in the index) or a range (the ids it spans that are)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)]
    if isinstance(value, range):
        return value
    if isinstance(value, str):
        bounds = parse_range(value)
        if bounds:
            if bounds[1] < bounds[0]:
                raise _bad("obs_id", value, "the last is before the first")
            return range(bounds[0], bounds[1] + 1)
    items = [v for v in re.split(r"[,\s]+", value) if v] if isinstance(value, str) else value
    try:
        ids = [int(v) for v in items]
    except (TypeError, ValueError):
        raise _bad("obs_id", value, "not integers") from None
    if not ids:
        raise _bad("obs_id", value, "empty")
    return ids


def _mjd(key: str, original: Any, value: Any) -> float:
    """A time as MJD (TT) from an astropy Time, an MJD number, or ISO text (UTC)."""
    from astropy.time import Time

    try:
        if isinstance(value, Time):
            return float(value.tt.mjd)
        if isinstance(value, (int, float, np.number)) or re.fullmatch(_NUMBER, str(value).strip()):
            return float(Time(float(value), format="mjd", scale="utc").tt.mjd)
        return float(Time(str(value).strip(), scale="utc").tt.mjd)
    except (ValueError, TypeError):
        raise _bad(key, original, f"{value!r} is not an ISO date/time or an MJD") from None


def _time(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        start, sep, stop = value.partition("..")
        if not sep:
            raise _bad("time", value, "expected START..STOP")
        parts: Sequence[Any] = (start, stop)
    else:
        try:
            parts = list(value)
        except TypeError:
            raise _bad("time", value, "expected (start, stop)") from None
        if len(parts) != 2:
            raise _bad("time", value, "expected (start, stop)")
    lo, hi = (_mjd("time", value, p) for p in parts)
    if hi < lo:
        raise _bad("time", value, "the stop is before the start")
    return lo, hi


def parse_selection(select: Mapping[str, Any]) -> dict[str, Any]:
    """``select`` checked and normalized: ``target`` str, ``cone`` (ra, dec, r), ``zenith``
    (lo, hi), ``obs_id`` list (or range) of int, ``time`` (MJD lo, MJD hi) in TT.

    ``obs_ids`` is taken as ``obs_id``. Raises :class:`SelectionError` naming a bad key or value.
    """
    out: dict[str, Any] = {}
    for raw_key, value in select.items():
        key = "obs_id" if raw_key == "obs_ids" else str(raw_key).strip().lower()
        if value is None:
            continue
        if key not in KEYS:
            raise SelectionError(
                f"unknown selection key {raw_key!r}; the keys are: "
                + "; ".join(f"{k} ({v})" for k, v in KEYS.items())
            )
        if key == "target":
            if not str(value).strip():
                raise _bad(key, value, "empty")
            out[key] = str(value).strip()
        elif key == "cone":
            ra, dec, radius = _floats(key, value, 3)
            if not -90 <= dec <= 90 or radius <= 0:
                raise _bad(key, value, "Dec must be within -90..90 and the radius above 0")
            out[key] = (ra, dec, radius)
        elif key == "zenith":
            lo, hi = _floats(key, value, 2)
            if hi < lo:
                raise _bad(key, value, "the maximum is below the minimum")
            out[key] = (lo, hi)
        elif key == "obs_id":
            out[key] = _obs_ids(value)
        else:
            out[key] = _time(value)
    return out


def _separation(ra1: np.ndarray, dec1: np.ndarray, ra2: float, dec2: float) -> np.ndarray:
    """Great-circle distance in deg (haversine: exact to well below an arcsecond)."""
    a1, d1, a2, d2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((d1 - d2) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((a1 - a2) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def _times(index: Mapping[str, np.ndarray], header: Mapping[str, Any], where: str) -> Any:
    """(start, stop) MJD (TT) of each row: TSTART/TSTOP + MJDREF, else DATE-OBS/DATE-END."""
    from astropy.time import Time

    if "TSTART" in index and "TSTOP" in index and "MJDREFI" in header:
        ref = float(header["MJDREFI"]) + float(header.get("MJDREFF", 0.0))
        scale = str(header.get("TIMESYS", "TT")).strip().lower()
        unit = {"s": 86400.0, "d": 1.0}.get(str(header.get("TIMEUNIT", "s")).strip(), 86400.0)
        start = Time(ref + index["TSTART"].astype(float) / unit, format="mjd", scale=scale)
        stop = Time(ref + index["TSTOP"].astype(float) / unit, format="mjd", scale=scale)
        return start.tt.mjd, stop.tt.mjd
    if "DATE-OBS" in index and "DATE-END" in index:

        def when(date: str, time: str) -> np.ndarray:
            stamps = [
                f"{d}T{t}" if t and "T" not in d else d
                for d, t in zip(index[date], index.get(time, [""] * len(index[date])), strict=True)
            ]
            return np.asarray(Time(stamps, scale="utc").tt.mjd)

        return when("DATE-OBS", "TIME-OBS"), when("DATE-END", "TIME-END")
    raise GADFSelectionError(
        f"{where}: has neither TSTART/TSTOP (with MJDREFI in its header) nor DATE-OBS/DATE-END "
        "columns to select by time"
    )


def _keep(
    index: Mapping[str, np.ndarray], header: Mapping[str, Any], sel: Mapping[str, Any], where: str
) -> np.ndarray:
    ids = index["OBS_ID"].astype(np.int64)
    keep = np.ones(len(ids), dtype=bool)
    if "target" in sel:
        columns = [c for c in ("OBJECT", "TARGET_NAME") if c in index]
        if not columns:
            raise GADFSelectionError(f"{where}: has no OBJECT or TARGET_NAME column for 'target'")
        needle = sel["target"].lower()
        match = np.zeros(len(ids), dtype=bool)
        for c in columns:
            match |= np.array([needle in str(v).lower() for v in index[c]], dtype=bool)
        keep &= match
    if "cone" in sel:
        if "RA_PNT" not in index or "DEC_PNT" not in index:
            raise GADFSelectionError(f"{where}: has no RA_PNT/DEC_PNT columns for 'cone'")
        ra, dec, radius = sel["cone"]
        sep = _separation(index["RA_PNT"].astype(float), index["DEC_PNT"].astype(float), ra, dec)
        keep &= sep <= radius
    if "zenith" in sel:
        lo, hi = sel["zenith"]
        if "ZEN_PNT" in index:
            zen = index["ZEN_PNT"].astype(float)
        elif "ALT_PNT" in index:
            zen = 90.0 - index["ALT_PNT"].astype(float)
        else:
            raise GADFSelectionError(f"{where}: has no ZEN_PNT or ALT_PNT column for 'zenith'")
        keep &= (zen >= lo) & (zen <= hi)
    if "obs_id" in sel:
        wanted = np.asarray(sel["obs_id"], dtype=np.int64)
        unknown = sorted(set(wanted.tolist()) - set(ids.tolist()))
        # a range names the ids it spans, not ids that must all exist
        if unknown and not isinstance(sel["obs_id"], range):
            raise GADFSelectionError(
                f"{where}: obs_id(s) {unknown[:5]} are not in the obs-index; "
                "check the selection obs_id"
            )
        keep &= np.isin(ids, wanted)
    if "time" in sel:
        lo, hi = sel["time"]
        start, stop = _times(index, header, where)
        keep &= (start >= lo) & (stop <= hi)
    return keep


def select_observations(
    obs_index: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    **select: Any,
) -> list[Observation]:
    """The observations of an obs-index that match ``select`` (keys: module doc), in index order.

    Parameters
    ----------
    obs_index
        An ``obs-index.fits[.gz]``, a path or a URL. The event files are found through
        the ``hdu-index`` beside it (for a local index without one, by reading ``OBS_ID``
        from the FITS files under its directory).
    storage_options
        fsspec options of an index at a URL.
    **select
        ``target``, ``cone``, ``zenith``, ``obs_id`` (or ``obs_ids``), ``time``.

    Returns
    -------
    list of Observation
        Files: ``Observation(id=<file name>, value=<path>, kind="file")``; for an index at
        a URL, ``kind="url"`` and the event file's URL. Ids as ``Observation.of`` gives them.

    Raises
    ------
    SelectionError
        A bad key or value; a column the selection needs, or an obs_id, missing from the
        index (:class:`GADFSelectionError`, a :class:`~esap_dask.iact.gadf.GADFError` too).
    GADFError
        When the index is not readable, or a selected observation has no event file.
    """
    sel = parse_selection(select)
    text = os.fspath(obs_index)
    if "://" in text and not text.startswith("file://"):
        return _select_url(text, sel, dict(storage_options or {}))
    from esap_dask.iact.gadf import event_files, read_index

    location = Path(text.removeprefix("file://"))
    index = read_index(location)
    if "OBS_ID" not in index:
        raise GADFError(f"{location}: has no OBS_ID column; not an obs-index")
    header: Mapping[str, Any] = {}
    if "time" in sel:
        from astropy.io import fits

        header = fits.getheader(location, 1)
    ids = index["OBS_ID"].astype(np.int64)
    chosen = ids[_keep(index, header, sel, str(location))]
    files = event_files(location.parent, chosen)
    _check_found(str(location), chosen, files)
    return [
        Observation(id=os.path.basename(files[int(o)]), value=files[int(o)], kind="file")
        for o in chosen
    ]


def _check_found(where: str, chosen: Iterable[Any], files: Mapping[int, str]) -> None:
    missing = [int(o) for o in chosen if int(o) not in files]
    if missing:
        raise GADFError(
            f"{where}: no event file found for obs_id(s) {missing[:5]}; check the hdu-index "
            "or the files next to the obs-index"
        )


def _select_url(url: str, sel: Mapping[str, Any], options: dict[str, Any]) -> list[Observation]:
    import fsspec.core
    from astropy.io import fits

    from esap_dask.iact.gadf import columns_of

    fs, _ = fsspec.core.url_to_fs(url, **options)

    def table(location: str, what: str) -> tuple[dict[str, np.ndarray], Any]:
        try:
            data = fs.cat_file(location)
        except FileNotFoundError as err:
            raise GADFError(f"{what} {location}: no such object; check the URL") from err
        except Exception as err:
            raise GADFError(
                f"{what} {location}: cannot be read ({type(err).__name__}: {err}); check the "
                "URL, that its server answers, and the input storage options"
            ) from err
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        with fits.open(io.BytesIO(data), memmap=False) as hdus:
            return columns_of(hdus, location), hdus[1].header.copy()

    index, header = table(url, "obs-index")
    if "OBS_ID" not in index:
        raise GADFError(f"{url}: has no OBS_ID column; not an obs-index")
    ids = index["OBS_ID"].astype(np.int64)
    chosen = ids[_keep(index, header, sel, url)]
    parts = urlsplit(url)
    base = posixpath.dirname(parts.path)
    hdu_index = None
    for name in ("hdu-index.fits.gz", "hdu-index.fits"):
        candidate = urlunsplit(parts._replace(path=posixpath.join(base, name), query=""))
        try:
            hdu_index, _ = table(candidate, "hdu-index")
            break
        except GADFError:
            continue
    if hdu_index is None:
        raise GADFError(
            f"{url}: no hdu-index.fits[.gz] beside it; an obs-index at a URL needs its "
            "hdu-index to find the event files"
        )
    files: dict[int, str] = {}
    for i in np.flatnonzero(np.char.lower(hdu_index["HDU_TYPE"].astype(str)) == "events"):
        where = posixpath.normpath(
            posixpath.join(base, str(hdu_index["FILE_DIR"][i]), str(hdu_index["FILE_NAME"][i]))
        )
        files[int(hdu_index["OBS_ID"][i])] = urlunsplit(parts._replace(path=where, query=""))
    _check_found(url, chosen, files)
    return [
        Observation(id=files[int(o)].rpartition("/")[2], value=files[int(o)], kind="url")
        for o in chosen
    ]
