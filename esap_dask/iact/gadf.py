"""Reading IACT DL3 event lists in the GADF format (gamma-astro-data-formats 0.2/0.3).

A GADF observation is an ``EVENTS`` table (columns ``EVENT_ID``, ``TIME``, ``RA``,
``DEC``, ``ENERGY``; header keywords ``OBS_ID``, ``RA_PNT``, ``DEC_PNT``,
``LIVETIME``, ``TSTART``, ``TSTOP``, ...), a ``GTI`` table, and instrument
response functions (IRFs: ``AEFF``, ``EDISP``, ``PSF``, ``BKG``) in the same file
or in other files listed by an ``hdu-index``. An ``obs-index`` lists the
observations of a data release with their metadata.

Reading tolerates the variations found between instruments: gzip or not, extra
HDUs and columns, IRFs in separate files, and optional header keywords missing
(taken from the ``obs-index`` when one is found next to the file or in its
parent directory). What is genuinely missing raises :class:`GADFError` naming
the file and the item::

    from esap_dask.iact.gadf import read_events, select_observations

    events = read_events("data/hess_dl3_dr1_obs_id_023523.fits.gz")
    events.livetime, events.ra_pnt, len(events.time)
    crab = select_observations("obs-index.fits.gz", target="crab", zenith=(0, 50))
"""

from __future__ import annotations

import functools
import gzip
import io
import itertools
import os
import posixpath
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from esap_dask.engine.inputs import read_input
from esap_dask.engine.observations import Observation, ObservationIndex, SelectionError
from esap_dask.iact.selection import parse_selection, selection_mask

if TYPE_CHECKING:
    from astropy.io import fits
else:

    class _Fits:
        """``astropy.io.fits``, imported on first use.

        Importing it took 0.31 s of the 0.65 s of ``esap-dask pipelines`` (pyinstrument),
        which loads every catalog pipeline, and this module with the IACT ones; listing
        them reads no FITS file.
        """

        def __getattr__(self, name: str) -> Any:
            from astropy.io import fits as module

            globals()["fits"] = module
            return getattr(module, name)

    fits = _Fits()

__all__ = [
    "IRF_TYPES",
    "OBSERVATION_INDEX",
    "EventList",
    "GADFError",
    "GADFSelectionError",
    "columns_of",
    "event_files",
    "find_index",
    "read_events",
    "read_index",
    "select_observations",
]

#: IRF components looked for, by their ``HDU_TYPE`` in an hdu-index (and HDUCLAS2 in a file).
IRF_TYPES = ("aeff", "edisp", "psf", "bkg")
_REQUIRED_COLUMNS = ("TIME", "RA", "DEC", "ENERGY")
_ENERGY_TO_TEV = {"tev": 1.0, "gev": 1e-3, "mev": 1e-6, "kev": 1e-9, "ev": 1e-12}
_FITS_BLOCK = 2880
_OBS_INDEX_NAMES = ("obs-index.fits.gz", "obs-index.fits")
_HDU_INDEX_NAMES = ("hdu-index.fits.gz", "hdu-index.fits")


class GADFError(ValueError):
    """A file is not a readable GADF event list, or lacks a required HDU, column or keyword."""


@dataclass
class EventList:
    """The events, good time intervals and metadata of one observation.

    Times are in seconds since the mission reference ``mjdref`` (MJD, TT);
    angles in degrees (ICRS/FK5 J2000); energies in TeV.
    """

    path: str
    obs_id: int
    event_id: np.ndarray
    time: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    energy: np.ndarray
    gti_start: np.ndarray
    gti_stop: np.ndarray
    ra_pnt: float
    dec_pnt: float
    livetime: float
    ontime: float
    deadc: float
    tstart: float
    tstop: float
    mjdref: float
    ra_obj: float = np.nan
    dec_obj: float = np.nan
    target: str = ""
    zenith: float = np.nan
    irfs: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_events(self) -> int:
        """Number of events in the EVENTS table."""
        return len(self.time)


def _zenith(keywords: Any) -> float | None:
    """ZEN_PNT, else 90 - ALT_PNT, from a header or an obs-index row; None if neither."""
    if keywords.get("ZEN_PNT") is not None:
        return float(keywords["ZEN_PNT"])
    if keywords.get("ALT_PNT") is not None:
        return 90.0 - float(keywords["ALT_PNT"])
    return None


@functools.lru_cache(maxsize=16)
def _read_table(path: str, mtime_ns: int) -> dict[str, np.ndarray]:
    del mtime_ns  # part of the cache key: a rewritten index is read again
    try:
        with fits.open(path, memmap=False) as hdus:
            return columns_of(hdus, path)
    except (OSError, EOFError, ValueError) as err:
        if isinstance(err, GADFError):
            raise
        raise GADFError(f"{path}: not a readable FITS index file ({err})") from err


def columns_of(hdus: fits.HDUList, where: str) -> dict[str, np.ndarray]:
    """The columns of the first binary table of an index file, by upper-case name."""
    hdu = next((h for h in hdus[1:] if isinstance(h, fits.BinTableHDU)), None)
    if hdu is None:
        raise GADFError(f"{where}: has no binary table; not an obs-index or hdu-index")
    data = hdu.data
    columns: dict[str, np.ndarray] = {}
    for name in data.columns.names:
        col = np.asarray(data[name])
        if col.dtype.kind in "SU":
            col = np.char.strip(col.astype(str))
        columns[name.upper()] = col
    return columns


def read_index(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The columns of an obs-index or hdu-index file, by upper-case name (cached per process).

    Raises
    ------
    GADFError
        When the file is not FITS or holds no binary table.
    """
    text = os.fspath(path)
    try:
        mtime = os.stat(text).st_mtime_ns
    except OSError as err:
        raise GADFError(f"{text}: index file cannot be read ({err.strerror})") from err
    return _read_table(text, mtime)


def find_index(path: str | os.PathLike[str], kind: str = "obs") -> Path | None:
    """The ``obs-index`` (``kind="obs"``) or ``hdu-index`` next to ``path`` or one level up."""
    names = _OBS_INDEX_NAMES if kind == "obs" else _HDU_INDEX_NAMES
    here = Path(path).resolve().parent
    for directory in (here, here.parent):
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def _index_row(index: dict[str, np.ndarray] | None, obs_id: int | None) -> dict[str, Any]:
    if index is None or obs_id is None or "OBS_ID" not in index:
        return {}
    rows = np.flatnonzero(index["OBS_ID"] == obs_id)
    if len(rows) == 0:
        return {}
    return {name: col[rows[0]].item() for name, col in index.items() if col.ndim == 1}


def _hdus(hdus: fits.HDUList) -> Iterator[Any]:
    """The extensions one by one, so that a lazily opened file parses only what is needed."""
    for i in itertools.count(1):
        try:
            yield hdus[i]
        except IndexError:
            return


def _find_hdu(hdus: fits.HDUList, name: str) -> Any:
    for hdu in _hdus(hdus):
        if str(hdu.header.get("EXTNAME", "")).strip().upper() == name:
            return hdu
    for hdu in _hdus(hdus):
        if str(hdu.header.get("HDUCLAS1", "")).strip().upper() == name:
            return hdu
    return None


def _irfs_in_file(hdus: fits.HDUList) -> set[str]:
    found = set()
    aliases = {"aeff": "EFF_AREA", "edisp": "EDISP", "psf": "PSF", "bkg": "BKG"}
    for hdu in _hdus(hdus):
        header = hdu.header
        labels = {
            str(header.get(k, "")).strip().upper() for k in ("EXTNAME", "HDUCLAS2", "HDUCLAS4")
        }
        for irf, alias in aliases.items():
            if irf.upper() in labels or alias in labels:
                found.add(irf)
    return found


def _irfs_from_hdu_index(path: str, obs_id: int) -> set[str] | None:
    location = find_index(path, "hdu")
    if location is None:
        return None
    index = read_index(location)
    rows = np.flatnonzero(index.get("OBS_ID", np.array([])) == obs_id)
    if len(rows) == 0:
        return None
    found = set()
    for row in rows:
        kind = str(index["HDU_TYPE"][row]).lower()
        target = location.parent / str(index["FILE_DIR"][row]) / str(index["FILE_NAME"][row])
        if kind in IRF_TYPES and target.is_file():
            found.add(kind)
    return found


def _column(data: Any, name: str, path: str) -> np.ndarray:
    names = [n.upper() for n in data.columns.names]
    if name not in names:
        have = ", ".join(data.columns.names)
        raise GADFError(
            f"{path}: EVENTS has no column {name!r} (it has: {have}); a GADF event list "
            f"needs {', '.join(_REQUIRED_COLUMNS)}"
        )
    return np.asarray(data.field(names.index(name)), dtype=np.float64)


def _energy_scale(hdu: Any, path: str) -> float:
    names = [n.upper() for n in hdu.columns.names]
    unit = str(hdu.columns[names.index("ENERGY")].unit or hdu.header.get("EUNIT", "TeV"))
    scale = _ENERGY_TO_TEV.get(unit.strip().lower())
    if scale is None:
        raise GADFError(f"{path}: ENERGY unit {unit!r} is not one of TeV, GeV, MeV, keV, eV")
    return scale


def read_events(
    path: str | os.PathLike[str],
    *,
    obs_index: str | os.PathLike[str] | None = None,
) -> EventList:
    """Read one GADF observation: events, GTIs, pointing, target, times and IRF presence.

    Parameters
    ----------
    path
        A GADF file with an ``EVENTS`` HDU (``.fits`` or ``.fits.gz``).
    obs_index
        The obs-index to take missing keywords from; default: an ``obs-index.fits[.gz]``
        next to ``path`` or in its parent directory, if there is one.

    Returns
    -------
    EventList
        ``notes`` lists what was taken from a fall-back (obs-index, GTI from TSTART/TSTOP).

    Raises
    ------
    GADFError
        When the file is missing, truncated or not FITS, or lacks the EVENTS HDU, a
        required column, or a required keyword that no obs-index provides.
    """
    text = os.fspath(path)
    try:
        with fits.open(io.BytesIO(_fits_bytes(text)), lazy_load_hdus=True) as hdus:
            return _read(text, hdus, obs_index)
    except FileNotFoundError as err:
        raise GADFError(f"{text}: no such file; check the observation list") from err
    except GADFError:
        raise
    except (OSError, EOFError, ValueError, TypeError, KeyError) as err:
        raise GADFError(
            f"{text}: not a readable FITS file ({type(err).__name__}: {err}); the file is "
            "truncated, corrupt or not FITS: download or regenerate it"
        ) from err


def _fits_bytes(path: str) -> bytes:
    """The (decompressed) bytes of a FITS file, checked to be whole.

    Read through :func:`~esap_dask.engine.inputs.read_input`: in a batch task, the
    ledger's checksum is that of these bytes, and the task does not read the file again
    for it (a second read took 515 µs of a 600 kB file, ``python -m bench.checksums
    --size 600000 --files 200``).
    """
    data = read_input(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:
            raise GADFError(
                f"{path}: truncated or corrupt gzip data ({err}); download or regenerate the file"
            ) from err
    if not data.startswith(b"SIMPLE  ="):
        raise GADFError(
            f"{path}: not a FITS file (it does not begin with a SIMPLE card); check the "
            "observation list"
        )
    if len(data) % _FITS_BLOCK:
        raise GADFError(
            f"{path}: truncated: {len(data)} bytes is not a whole number of 2880-byte FITS "
            "blocks; download or regenerate the file"
        )
    return data


def _read(path: str, hdus: fits.HDUList, obs_index: Any) -> EventList:
    events = _find_hdu(hdus, "EVENTS")
    if events is None:
        have = ", ".join(h.name for h in hdus) or "none"
        raise GADFError(f"{path}: has no EVENTS HDU (its HDUs: {have}); not a GADF event list")
    header = events.header
    data = events.data
    if data is None:
        raise GADFError(f"{path}: the EVENTS HDU holds no table data")
    columns = {name: _column(data, name, path) for name in _REQUIRED_COLUMNS}
    names = [n.upper() for n in data.columns.names]
    event_id = np.arange(len(columns["TIME"]), dtype=np.int64)  # EVENT_ID is optional here
    if "EVENT_ID" in names:
        event_id = np.asarray(data.field(names.index("EVENT_ID")), dtype=np.int64)
    notes: list[str] = []
    obs_id_value = header.get("OBS_ID")
    index_path = obs_index if obs_index is not None else find_index(path, "obs")
    index = read_index(index_path) if index_path is not None else None
    row = _index_row(index, int(obs_id_value) if obs_id_value is not None else None)

    def keyword(name: str, *, required: bool = True, default: Any = None) -> Any:
        value = header.get(name)
        if value is None and name in row:
            notes.append(f"{name} from the obs-index")
            value = row[name]
        if value is None and required and default is None:
            where = f"nor in the obs-index {index_path}" if index_path else "and no obs-index"
            raise GADFError(
                f"{path}: the EVENTS header has no keyword {name!r} {where} provides it; "
                "add it to the header or give an obs-index with that column"
            )
        return default if value is None else value

    if obs_id_value is None:
        raise GADFError(
            f"{path}: the EVENTS header has no keyword 'OBS_ID'; it identifies the observation "
            "(the obs-index is looked up by it), add it to the header"
        )
    gti = _find_hdu(hdus, "GTI")
    if gti is not None and gti.data is not None and len(gti.data):
        gti_start = np.asarray(gti.data["START"], dtype=np.float64)
        gti_stop = np.asarray(gti.data["STOP"], dtype=np.float64)
        tstart = float(keyword("TSTART", default=gti_start.min()))
        tstop = float(keyword("TSTOP", default=gti_stop.max()))
    else:
        tstart, tstop = float(keyword("TSTART")), float(keyword("TSTOP"))
        notes.append("no GTI HDU: one interval TSTART..TSTOP")
        gti_start, gti_stop = np.array([tstart]), np.array([tstop])
    ontime = float(keyword("ONTIME", default=float(np.sum(gti_stop - gti_start))))
    deadc = keyword("DEADC", required=False)
    livetime = keyword("LIVETIME", required=deadc is None)
    if livetime is None:
        livetime = ontime * float(deadc)
        notes.append("LIVETIME = ONTIME * DEADC")
    if deadc is None:
        deadc = float(livetime) / ontime if ontime > 0 else np.nan
    zenith = _zenith(header)
    if zenith is None and _zenith(row) is not None:
        zenith = _zenith(row)
        notes.append("zenith from the obs-index")
    mjdref = float(keyword("MJDREFI", default=0.0)) + float(keyword("MJDREFF", default=0.0))
    if header.get("MJDREF") is not None:
        mjdref = float(header["MJDREF"])
    irfs = _irfs_from_hdu_index(path, int(obs_id_value))  # the index is authoritative
    if not irfs:
        irfs = _irfs_in_file(hdus)
    target = header.get("OBJECT") or row.get("OBJECT") or row.get("TARGET_NAME") or ""
    return EventList(
        path=path,
        obs_id=int(obs_id_value),
        event_id=event_id,
        time=columns["TIME"],
        ra=columns["RA"],
        dec=columns["DEC"],
        energy=columns["ENERGY"] * _energy_scale(events, path),
        gti_start=gti_start,
        gti_stop=gti_stop,
        ra_pnt=float(keyword("RA_PNT")),
        dec_pnt=float(keyword("DEC_PNT")),
        livetime=float(livetime),
        ontime=ontime,
        deadc=float(deadc),
        tstart=tstart,
        tstop=tstop,
        mjdref=mjdref,
        ra_obj=float(keyword("RA_OBJ", required=False, default=np.nan)),
        dec_obj=float(keyword("DEC_OBJ", required=False, default=np.nan)),
        target=str(target).strip(),
        zenith=np.nan if zenith is None else zenith,
        irfs={irf: irf in irfs for irf in IRF_TYPES},
        notes=notes,
    )


def event_files(index_dir: Path, obs_ids: np.ndarray) -> dict[int, str]:
    """The event file of each of ``obs_ids`` under ``index_dir``: by its hdu-index, else
    by the ``OBS_ID`` of the FITS files under it."""
    hdu_index = next((index_dir / n for n in _HDU_INDEX_NAMES if (index_dir / n).is_file()), None)
    files: dict[int, str] = {}
    if hdu_index is not None:
        hdu = read_index(hdu_index)
        for i in np.flatnonzero(np.char.lower(hdu["HDU_TYPE"].astype(str)) == "events"):
            path = hdu_index.parent / str(hdu["FILE_DIR"][i]) / str(hdu["FILE_NAME"][i])
            files[int(hdu["OBS_ID"][i])] = os.path.normpath(path)
        return files
    wanted = {int(o) for o in obs_ids}
    for candidate in sorted(index_dir.rglob("*.fits*")):
        if candidate.name in _OBS_INDEX_NAMES + _HDU_INDEX_NAMES:
            continue
        try:
            obs_id = fits.getval(candidate, "OBS_ID", extname="EVENTS")
        except (OSError, KeyError, IndexError):
            continue
        if int(obs_id) in wanted:
            files[int(obs_id)] = str(candidate)
    return files


class GADFSelectionError(GADFError, SelectionError):
    """A selection the obs-index cannot satisfy: a column it lacks, an obs_id it lacks."""


def _mask(
    index: Mapping[str, np.ndarray], header: Any, sel: Mapping[str, Any], where: str
) -> np.ndarray:
    """:func:`~esap_dask.iact.selection.selection_mask`; its errors as GADFSelectionError."""
    try:
        return selection_mask(index, header, sel, where)
    except SelectionError as err:
        raise GADFSelectionError(str(err)) from err


def select_observations(
    obs_index: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    **select: Any,
) -> list[Observation]:
    """The observations of an obs-index that match ``select``, in index order.

    The keys (``target``, ``cone``, ``zenith``, ``obs_id``, ``time``) and their values:
    :mod:`esap_dask.iact.selection`.

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
        index (:class:`GADFSelectionError`, a :class:`GADFError` too).
    GADFError
        When the index is not readable, or a selected observation has no event file.
    """
    sel = parse_selection(select)
    text = os.fspath(obs_index)
    if "://" in text and not text.startswith("file://"):
        return _select_url(text, sel, dict(storage_options or {}))
    location = Path(text.removeprefix("file://"))
    index = read_index(location)
    if "OBS_ID" not in index:
        raise GADFError(f"{location}: has no OBS_ID column; not an obs-index")
    header: Mapping[str, Any] = {}
    if "time" in sel:
        from astropy.io import fits

        header = fits.getheader(location, 1)
    ids = index["OBS_ID"].astype(np.int64)
    chosen = ids[_mask(index, header, sel, str(location))]
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
    chosen = ids[_mask(index, header, sel, url)]
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


def _is_obs_index(path: Path) -> bool:
    return path.name.startswith("obs-index") and ".fits" in path.name


#: GADF's obs-index as an observation list (``esap-dask run --observations obs-index.fits.gz``),
#: registered in the entry point group ``esap_dask.observation_indexes``.
OBSERVATION_INDEX = ObservationIndex(
    format="GADF",
    names=("obs-index.fits.gz", "obs-index.fits"),
    members=".fits.gz",
    matches=_is_obs_index,
    read=select_observations,
)
