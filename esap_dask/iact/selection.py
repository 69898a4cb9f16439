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

This module parses selections and masks index columns; reading an obs-index (a path or a
URL) and finding its event files is :func:`esap_dask.iact.gadf.select_observations`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from esap_dask.engine.observations import SelectionError, parse_range

__all__ = ["KEYS", "parse_selection", "selection_mask"]

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
    raise SelectionError(
        f"{where}: has neither TSTART/TSTOP (with MJDREFI in its header) nor DATE-OBS/DATE-END "
        "columns to select by time"
    )


def selection_mask(
    index: Mapping[str, np.ndarray], header: Mapping[str, Any], sel: Mapping[str, Any], where: str
) -> np.ndarray:
    """Which rows of the index columns ``index`` match ``sel`` (from :func:`parse_selection`).

    ``header``: the index table's header (``MJDREFI``, ``TIMESYS``, ... for ``time``);
    ``where``: how errors name the index. Raises :class:`SelectionError` for a column the
    selection needs that the index lacks, or an obs_id of a list it does not hold.
    """
    ids = index["OBS_ID"].astype(np.int64)
    keep = np.ones(len(ids), dtype=bool)
    if "target" in sel:
        columns = [c for c in ("OBJECT", "TARGET_NAME") if c in index]
        if not columns:
            raise SelectionError(f"{where}: has no OBJECT or TARGET_NAME column for 'target'")
        needle = sel["target"].lower()
        match = np.zeros(len(ids), dtype=bool)
        for c in columns:
            match |= np.array([needle in str(v).lower() for v in index[c]], dtype=bool)
        keep &= match
    if "cone" in sel:
        if "RA_PNT" not in index or "DEC_PNT" not in index:
            raise SelectionError(f"{where}: has no RA_PNT/DEC_PNT columns for 'cone'")
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
            raise SelectionError(f"{where}: has no ZEN_PNT or ALT_PNT column for 'zenith'")
        keep &= (zen >= lo) & (zen <= hi)
    if "obs_id" in sel:
        wanted = np.asarray(sel["obs_id"], dtype=np.int64)
        unknown = sorted(set(wanted.tolist()) - set(ids.tolist()))
        # a range names the ids it spans, not ids that must all exist
        if unknown and not isinstance(sel["obs_id"], range):
            raise SelectionError(
                f"{where}: obs_id(s) {unknown[:5]} are not in the obs-index; "
                "check the selection obs_id"
            )
        keep &= np.isin(ids, wanted)
    if "time" in sel:
        lo, hi = sel["time"]
        start, stop = _times(index, header, where)
        keep &= (start >= lo) & (stop <= hi)
    return keep
