"""CORSIKA steering cards, read strictly, and a real CORSIKA run in a container.

A steering card is CORSIKA's input: one keyword a line followed by its values
(``ERANGE 1.E3 1.E5``), ``*`` or ``c`` lines are comments, ``EXIT`` ends it.
:func:`parse_card` accepts only keywords it knows (:data:`KEYWORDS`: CORSIKA's
steering keywords, each with the kinds of its values), parses every value as a
number, a logical (``T``/``F``) or a plain word, and raises :class:`CardError`
naming the line and the keyword. Keywords the numpy model does not use are kept
as parsed lines (:attr:`Card.extra`), and :func:`format_card` writes the card a
real CORSIKA reads from those parsed values, never from the text it was given.
Keywords that name files or hosts outside the run (``DATDIR``, ``INFILE``,
``ATMFILE``, ...) are refused. Errors never quote the card beyond its keyword
(at most 16 characters), so a file read by mistake is not echoed.

Units are CORSIKA's: energies in GeV, angles in degrees, ``OBSLEV`` in cm,
``CWAVLG`` in nm.

:func:`read_card` reads a card file with bounds (regular files only, at most
:data:`MAX_CARD_BYTES`) and, given ``roots``, only under those directories
(real paths: no symlink out); it reads URLs only when asked to.

A real CORSIKA runs only from an installation the administrator configured
(:class:`CorsikaImage`, Dask config ``esap.corsika.images``); a job selects one by
name. :func:`corsika_command` builds the container command, :func:`run_corsika`
runs it with an argument list (no shell), the formatted card on its standard
input, a time limit and an output bound; :func:`read_long` reads the
longitudinal profiles and Gaisser–Hillas fits CORSIKA writes to ``DAT<run>.long``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esap_dask.pipeline import ParameterError

__all__ = [
    "KEYWORDS",
    "MAX_CARD_BYTES",
    "Card",
    "CardError",
    "CardLine",
    "CorsikaError",
    "CorsikaImage",
    "corsika_command",
    "corsika_image",
    "corsika_images",
    "format_card",
    "parse_card",
    "read_card",
    "read_long",
    "run_corsika",
    "run_seeds",
]

logger = logging.getLogger(__name__)

#: CORSIKA's seed range (RANMAR).
SEED_MAX = 900_000_000
#: Largest card file or text, in bytes; a real card is a few hundred lines.
MAX_CARD_BYTES = 64 * 1024
#: Most lines of a card, and most characters of a line.
MAX_CARD_LINES = 1000
MAX_LINE_LENGTH = 256
_ENGINES = ("apptainer", "singularity", "docker", "podman")

#: The keywords a card may hold besides those of :class:`Card`, with the kinds of their
#: values (``I`` integer, ``F`` number, ``L`` logical T/F, ``X`` integer or logical,
#: ``W`` word of letters, digits, ``_ . + -``, ``P`` such a word with ``/``) and how
#: many values are required; words after the last value are a comment (dropped).
#: From the CORSIKA 7.7 user's guide, chapter 4 (the IACT keywords included).
KEYWORDS: dict[str, tuple[str, int]] = {
    "VIEWCONE": ("FF", 2), "FIXCHI": ("F", 1), "TSTART": ("L", 1), "FIXHEI": ("FI", 1),
    "IMPACT": ("FF", 2), "ATMOD": ("I", 1), "ATMA": ("FFFFF", 4), "ATMB": ("FFFF", 4),
    "ATMC": ("FFFFF", 4), "ATMLAY": ("FFFF", 4), "ATMOSPHERE": ("IL", 2), "MAGNET": ("FF", 2),
    "GCOORD": ("FFF", 2), "DPMJET": ("LI", 2), "DPJSIG": ("L", 1), "EPOS": ("LI", 2),
    "EPOSIG": ("L", 1), "NEXUS": ("LI", 2), "NEXSIG": ("L", 1), "QGSJET": ("LI", 2),
    "QGSSIG": ("L", 1), "SIBYLL": ("LI", 2), "SIBSIG": ("L", 1), "SIBCHM": ("L", 1),
    "VENUS": ("LI", 2), "VENSIG": ("L", 1), "URQMD": ("LI", 2), "PYTHIA": ("II", 2),
    "HADFLG": ("IIIIII", 6), "NUSLCT": ("I", 1), "SIGMAQ": ("FFFF", 4), "PROPAQ": ("I", 1),
    "HILOW": ("F", 1), "ELMFLG": ("LL", 2), "STEPFC": ("F", 1), "RADNKG": ("F", 1),
    "CASCADE": ("LLL", 3), "CONEX": ("FFF", 3), "CX2COR": ("FFFF", 4), "CXWMX": ("FFFLL", 5),
    "CORSIKA": ("L", 1), "THIN": ("FFF", 3), "THINH": ("FF", 2), "THINEM": ("FF", 2),
    "MTHINH": ("FFFF", 4), "MSEED": ("III", 1), "MTHINR": ("F", 1), "MWEIC": ("IL", 2),
    "CORECUT": ("F", 1), "ECUTS": ("FFFFFF", 4), "TIMLIM": ("FL", 2), "LONGI": ("LFLL", 1),
    "MUMULT": ("L", 1), "EMADDI": ("L", 1), "MUADDI": ("L", 1), "NUADDI": ("L", 1),
    "INCLIN": ("FFFFFF", 6), "CURVOUT": ("L", 1), "ARRANG": ("F", 1), "AUGSCT": ("IFFII", 5),
    "AUGHIT": ("FF", 2), "DETCFG": ("F", 1), "MAXPRT": ("I", 1), "ECTMAP": ("F", 1),
    "DIRECT": ("P", 1), "PAROUT": ("LL", 2), "COMOUT": ("L", 1), "OUTPUT": ("I", 1),
    "PARALLEL": ("FFIL", 4), "CERARY": ("IIFFFF", 6), "CERFIL": ("X", 1),
    "CERQEF": ("LLL", 3), "CWAVRANG": ("FF", 2), "CSCAT": ("IFF", 3), "COREPOS": ("FF", 2),
    "TELESCOPE": ("FFFFI", 4), "TELFIL": ("W", 1), "TRAFLG": ("L", 1), "SRCPOS": ("FF", 2),
    "GEODEC": ("F", 1), "TRARAD": ("F", 1), "EINTER": ("F", 1), "COMPRESS": ("L", 1),
    "DATBAS": ("L", 1), "USER": ("W", 1), "HOST": ("W", 1), "DEBUG": ("LILI", 4),
    "EGSDEB": ("I", 1), "FLUDBG": ("L", 1), "GHEIDB": ("L", 1), "CDEBUG": ("L", 1),
    "INTTST": ("II", 2), "INTDEC": ("LLLL", 4), "INTSPC": ("L", 1), "DIFOFF": ("I", 1),
    "TRIGGER": ("I", 1), "PLOTSH": ("L", 1), "PLAXES": ("FFFFFF", 6),
    "PLCUTS": ("FFFFFL", 6), "IACT": ("WVVV", 2),
}  # fmt: skip
#: CORSIKA keywords that name files, pipes or hosts beyond the run's directory: refused.
REFUSED = frozenset(
    {
        "INFILE", "OUTFILE", "ATMFILE", "DATDIR", "CUTFILE", "CUTPAR", "HISTDS", "PIPE",
        "EPOPAR", "NEXPAR", "VENPAR", "DYNSTACK", "DYNSTACK_P", "REMOTECONTROL_IP",
        "REMOTECONTROL_P", "PRMFIL",
    }
)  # fmt: skip


class CardError(ParameterError):
    """A steering card has an unknown keyword, a missing one, or an invalid value.

    A :class:`~esap_dask.pipeline.ParameterError`: the card is a pipeline parameter,
    so the CLI and the job service report it as bad input.
    """


class CorsikaError(RuntimeError):
    """A CORSIKA run failed: its exit code or the limit it hit (its output is in the log)."""


@dataclass(frozen=True)
class CardLine:
    """One parsed line of a keyword the model does not use: its keyword and typed values."""

    keyword: str
    values: tuple[int | float | bool | str, ...] = ()

    def __post_init__(self) -> None:
        if self.keyword not in KEYWORDS:
            raise CardError(f"CardLine: {_shown(self.keyword, 16)!r} is not a keyword of KEYWORDS")
        for i, v in enumerate(self.values, start=1):
            ok = (
                isinstance(v, (bool, int))
                or (isinstance(v, float) and math.isfinite(v))
                or (isinstance(v, str) and bool(_PATH.match(v)) and ".." not in v.split("/"))
            )
            if not ok:
                raise CardError(f"CardLine {self.keyword}: value {i} is not a number, T/F or word")

    def __str__(self) -> str:
        words = ["T" if v is True else "F" if v is False else repr(v) if isinstance(v, float)
                 else str(v) for v in self.values]  # fmt: skip
        return f"{self.keyword:<8}{' '.join(words)}".rstrip()


@dataclass(frozen=True)
class Card:
    """The keywords of a steering card that a shower sweep uses (CORSIKA's units).

    Attributes
    ----------
    runnr, evtnr, nshow
        Run number (replaced per run by the sweep), first event number, showers a run.
    prmpar
        Primary particle: 1 gamma, 2 e+, 3 e-, 14 proton, ``A*100+Z`` for nuclei.
    eslope, erange
        Spectral index of the primary energy and its range in GeV.
    thetap, phip
        Zenith and azimuth ranges in degrees.
    seeds
        ``(seed, calls, billions)`` of each ``SEED`` line, in order.
    obslev
        Observation level above sea level, in cm.
    cersiz, cwavlg
        Cherenkov bunch size and wavelength band ``(low, high)`` in nm.
    longi_step
        Step of the longitudinal profile in g/cm² (``LONGI T <step> ...``).
    extra
        The parsed lines of other CORSIKA keywords (:class:`CardLine`), in order.
    """

    runnr: int = 1
    evtnr: int = 1
    nshow: int = 10
    prmpar: int = 14
    eslope: float = -2.7
    erange: tuple[float, float] = (1.0e3, 1.0e5)
    thetap: tuple[float, float] = (0.0, 0.0)
    phip: tuple[float, float] = (-180.0, 180.0)
    seeds: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (2, 0, 0), (3, 0, 0))
    obslev: float = 2200.0e2
    cersiz: float = 5.0
    cwavlg: tuple[float, float] = (300.0, 600.0)
    longi_step: float = 10.0
    extra: tuple[CardLine, ...] = field(default=(), compare=False)

    @property
    def mass_number(self) -> int:
        """Nucleons of the primary (1 for gamma, electrons and protons)."""
        return self.prmpar // 100 if self.prmpar >= 200 else 1

    @property
    def electromagnetic(self) -> bool:
        """Whether the primary is a photon or an electron (PRMPAR 1, 2, 3)."""
        return self.prmpar in (1, 2, 3)

    def __post_init__(self) -> None:
        for line in self.extra:
            if not isinstance(line, CardLine):
                raise CardError("Card.extra holds CardLine values (parsed lines), not text")

    def replace(self, **changes: Any) -> Card:
        """A copy with ``changes`` applied and validated again."""
        card = dataclasses.replace(self, **changes)
        _validate(card, {})
        return card


# keyword -> (attribute, value kinds)
_FIELDS: dict[str, tuple[str, str]] = {
    "RUNNR": ("runnr", "I"),
    "EVTNR": ("evtnr", "I"),
    "NSHOW": ("nshow", "I"),
    "PRMPAR": ("prmpar", "I"),
    "ESLOPE": ("eslope", "F"),
    "ERANGE": ("erange", "FF"),
    "THETAP": ("thetap", "FF"),
    "PHIP": ("phip", "FF"),
    "OBSLEV": ("obslev", "F"),
    "CERSIZ": ("cersiz", "F"),
    "CWAVLG": ("cwavlg", "FF"),
}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?$")
_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
_PATH = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./+-]{0,238}$")
_KEYWORD = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")
#: Control characters (C0 but tab, DEL, C1): refused anywhere in a card.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: Keyword lines hold letters, digits, blanks and ``_ . + - / = , :`` only.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+\-/=,: \t]")
_LOGICAL = {"T": True, "F": False, ".TRUE.": True, ".FALSE.": False, "TRUE": True, "FALSE": False}
_KIND = {
    "I": "a whole number",
    "F": "a number",
    "L": "a logical (T or F)",
    "X": "a whole number or a logical (T or F)",
    "W": "a word of letters, digits and _ . + - (at most 64 characters)",
    "P": "a path of letters, digits and _ . + - / (no '..')",
    "V": "a number or a word of letters, digits and _ . + -",
}


def _value(text: str, kind: str, keyword: str, index: int, where: str) -> Any:
    """One value of ``kind`` (see :data:`KEYWORDS`); errors name its position, not its text."""
    upper = text.upper()
    if kind in ("I", "F", "X", "V") and _NUMBER.match(text):
        value = float(upper.replace("D", "E"))
        if not math.isfinite(value):
            raise CardError(f"{where}: {keyword} value {index} is out of range")
        if kind == "F":
            return value
        if kind == "V":
            return value if ("." in text or "E" in upper or "D" in upper) else int(value)
        if value.is_integer():
            return int(value)
    elif kind in ("L", "X") and upper in _LOGICAL:
        return _LOGICAL[upper]
    elif (kind in ("W", "V") and _WORD.match(text)) or (
        kind == "P" and _PATH.match(text) and ".." not in text.split("/")
    ):
        return text
    raise CardError(f"{where}: {keyword} value {index} must be {_KIND[kind]}")


def _values(args: list[str], kinds: str, required: int, keyword: str, where: str) -> list[Any]:
    if len(args) < required:
        raise CardError(f"{where}: {keyword} needs {required} value(s), got {len(args)}")
    return [
        _value(a, k, keyword, i, where)
        for i, (a, k) in enumerate(zip(args, kinds, strict=False), start=1)
    ]


def _validate(card: Card, lines: dict[str, int], source: str = "card") -> None:
    def _check(ok: bool, keyword: str, message: str) -> None:
        if not ok:
            where = f"line {lines[keyword]}" if keyword in lines else "a default or override"
            raise CardError(f"{source}, {where}: {keyword} {message}")

    _check(0 <= card.runnr <= 999_999, "RUNNR", "must be between 0 and 999999")
    _check(1 <= card.evtnr <= 999_999, "EVTNR", "must be between 1 and 999999")
    _check(1 <= card.nshow <= 100_000, "NSHOW", "must be between 1 and 100000")
    known = card.prmpar in (1, 2, 3, 14) or (200 <= card.prmpar <= 5999)
    nucleus_ok = card.prmpar < 200 or 1 <= card.prmpar % 100 <= card.prmpar // 100
    _check(
        known and nucleus_ok,
        "PRMPAR",
        "is not a primary this model knows (1 gamma, 2 e+, 3 e-, 14 proton, "
        "A*100+Z for a nucleus, e.g. 402 helium, 5626 iron)",
    )
    lo, hi = card.erange
    _check(0 < lo <= hi <= 1e12, "ERANGE", "needs 0 < low <= high <= 1E12 GeV")
    _check(-10 <= card.eslope <= 0, "ESLOPE", "must be within -10 .. 0")
    t0, t1 = card.thetap
    _check(0 <= t0 <= t1 <= 70, "THETAP", "needs 0 <= low <= high <= 70 deg")
    p0, p1 = card.phip
    _check(-360 <= p0 <= p1 <= 360, "PHIP", "needs -360 <= low <= high <= 360 deg")
    _check(-1e5 <= card.obslev < 5e6, "OBSLEV", "must be between -1 km and 50 km (in cm)")
    _check(0 < card.cersiz <= 1e4, "CERSIZ", "(photons a bunch) must be within 0 .. 10000")
    w0, w1 = card.cwavlg
    _check(100 <= w0 < w1 <= 2000, "CWAVLG", "needs 100 <= low < high <= 2000 nm")
    _check(0 < card.longi_step <= 1e4, "LONGI", "step must be within 0 .. 10000 g/cm2")
    _check(bool(card.seeds), "SEED", "is missing: give at least one SEED line")
    _check(len(card.seeds) <= 10, "SEED", "is given more than 10 times")
    for seed, _, _ in card.seeds:
        _check(1 <= seed <= SEED_MAX, "SEED", f"must be within 1 .. {SEED_MAX}")


def _shown(text: str, limit: int = 200) -> str:
    """``text`` for an error message: printable ASCII only, at most ``limit`` characters."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return clean + ("..." if len(text) > limit else "")


def parse_card(text: str, *, source: str = "card") -> Card:
    """Parse and validate a steering card's text.

    Every line is a comment (``*`` or ``c`` first), a keyword of :data:`KEYWORDS` or of
    :class:`Card` with its values, or blank; ``EXIT`` ends the card. The card holds at most
    :data:`MAX_CARD_LINES` lines of :data:`MAX_LINE_LENGTH` characters, no control
    characters, and keyword lines hold letters, digits, blanks and ``_ . + - / = , :``.

    Raises
    ------
    CardError
        Naming ``source``, the line and the keyword (never more of the card's text):
        an unknown or refused keyword, a wrong number of values, a value of the wrong
        kind or out of range, a character that is not allowed.

    Examples
    --------
    >>> parse_card("NSHOW 5\\nERANGE 1.E3 1.E3\\nSEED 7 0 0\\nEXIT").nshow
    5
    """
    if len(text) > MAX_CARD_BYTES:
        raise CardError(f"{source}: longer than {MAX_CARD_BYTES} characters; is it a card?")
    rows = text.splitlines()
    if len(rows) > MAX_CARD_LINES:
        raise CardError(f"{source}: more than {MAX_CARD_LINES} lines; is it a card?")
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    seeds: list[tuple[int, int, int]] = []
    extra: list[CardLine] = []
    for number, raw in enumerate(rows, start=1):
        where = f"{source}, line {number}"
        if len(raw) > MAX_LINE_LENGTH:
            raise CardError(f"{where}: longer than {MAX_LINE_LENGTH} characters")
        bad = _CONTROL.search(raw)
        if bad:
            raise CardError(f"{where}, column {bad.start() + 1}: a control character")
        words = raw.split()
        if not words or words[0].startswith("*") or words[0].lower() == "c":
            continue
        bad = _UNSAFE.search(raw)
        if bad:
            raise CardError(
                f"{where}, column {bad.start() + 1}: a character a card line may not hold "
                "(values are numbers, T or F, or words of letters, digits and _ . + -)"
            )
        keyword, args = words[0].upper(), words[1:]
        if not _KEYWORD.match(keyword):
            raise CardError(
                f"{where}: not a CORSIKA keyword (a keyword is a letter, then at most 15 "
                "letters, digits or '_')"
            )
        if keyword == "EXIT":
            break
        if keyword == "SEED":
            nums = _values(args, "III", 1, keyword, where)
            nums += [0] * (3 - len(nums))
            if not 1 <= nums[0] <= SEED_MAX:
                raise CardError(f"{where}: SEED must be within 1 .. {SEED_MAX}")
            seeds.append((nums[0], nums[1], nums[2]))
            lines.setdefault("SEED", number)
            continue
        if keyword in _FIELDS:
            attr, kinds = _FIELDS[keyword]
            if keyword in lines:
                raise CardError(f"{where}: {keyword} given twice (first on line {lines[keyword]})")
            nums = _values(args, kinds, len(kinds), keyword, where)
            values[attr] = tuple(nums) if len(kinds) > 1 else nums[0]
            lines[keyword] = number
            continue
        if keyword in REFUSED:
            raise CardError(
                f"{where}: {keyword} names a file or host outside the run; it is not accepted "
                "here (the files of a run are written in its own directory)"
            )
        if keyword not in KEYWORDS:
            raise CardError(
                f"{where}: unknown keyword {keyword!r}; concordia accepts CORSIKA's steering "
                "keywords (docs/pipelines.md lists them)"
            )
        kinds, required = KEYWORDS[keyword]
        parsed = _values(args, kinds, required, keyword, where)
        if keyword == "LONGI" and len(parsed) >= 2:
            values["longi_step"] = parsed[1]
            lines["LONGI"] = number
        extra.append(CardLine(keyword, tuple(parsed)))
    if seeds:
        values["seeds"] = tuple(seeds)
    card = Card(**values, extra=tuple(extra))
    _validate(card, lines, source)
    return card


def format_card(card: Card, *, run: int | None = None, seeds: Sequence[int] | None = None) -> str:
    """The card as CORSIKA reads it, for run ``run`` with ``seeds`` (one per SEED line).

    Written from the parsed values only: the text a card was parsed from never reaches
    CORSIKA.
    """
    seed_list = list(seeds) if seeds is not None else [s for s, _, _ in card.seeds]
    out = [
        f"RUNNR   {card.runnr if run is None else int(run)}",
        f"EVTNR   {card.evtnr}",
        f"NSHOW   {card.nshow}",
        f"PRMPAR  {card.prmpar}",
        f"ESLOPE  {card.eslope!r}",
        f"ERANGE  {card.erange[0]:.6E} {card.erange[1]:.6E}",
        f"THETAP  {card.thetap[0]!r} {card.thetap[1]!r}",
        f"PHIP    {card.phip[0]!r} {card.phip[1]!r}",
        *(f"SEED    {int(s)} 0 0" for s in seed_list),
        f"OBSLEV  {card.obslev:.6E}",
        f"CERSIZ  {card.cersiz!r}",
        f"CWAVLG  {card.cwavlg[0]!r} {card.cwavlg[1]!r}",
        *(str(line) for line in card.extra),
        "EXIT",
    ]
    return "\n".join(out) + "\n"


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|:)|::")


def read_card(
    path: str | os.PathLike[str],
    *,
    roots: Sequence[str | os.PathLike[str]] | None = None,
    urls: bool = False,
) -> str:
    """The text of the card file ``path``, read with bounds and, given ``roots``, confined.

    Parameters
    ----------
    path
        A local path; a URL (``s3://...``, ``https://...``) only with ``urls``.
    roots
        Directories the file must lie under, checked on its real path (symlinks
        resolved, and checked again on the opened file), for a service reading on
        behalf of others; a relative ``path`` is then refused. ``None``: any path the
        process can read (a user's own machine).
    urls
        Read URLs through fsspec (never with ``roots``).

    Returns
    -------
    str
        The card's text, ending with a new line (so it is never taken for a path again).

    Raises
    ------
    CardError
        Naming ``path`` and what is wrong: outside the roots, a URL, missing, not a
        regular file (a FIFO, a device, a directory), empty, larger than
        :data:`MAX_CARD_BYTES`, not UTF-8. Never with the file's content.
    """
    name = _shown(os.fspath(path))
    text = os.fspath(path)
    if _URL.search(text):
        if roots is not None or not urls:
            raise CardError(
                f"card {name}: a URL; cards are read from URLs only on your own machine with "
                "the Dask config esap.corsika.card-urls: true (the job service never does); "
                "give the card's text"
            )
        return _read_url(text, name)
    if "\x00" in text:
        raise CardError(f"card {name}: not a valid path")
    if roots is not None:
        if not os.path.isabs(text):
            raise CardError(f"card {name}: give an absolute path under the data roots")
        real = os.path.realpath(text)
        bases = [os.path.realpath(os.fspath(r)) for r in roots]
        if not any(_under(real, b) for b in bases):
            raise CardError(f"card {name}: outside the data roots this service reads")
    else:
        real = os.path.realpath(os.path.expanduser(text))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise CardError(
            f"card {name}: no such file; give a path that exists, or the card's text"
        ) from None
    except OSError as err:
        raise CardError(f"card {name}: cannot be read ({err.strerror})") from None
    try:
        if roots is not None:  # the file opened is the one checked (no swap in between)
            try:
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                opened = real
            if not any(_under(opened, b) for b in bases):
                raise CardError(f"card {name}: outside the data roots this service reads")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CardError(f"card {name}: not a regular file (a card is a text file)")
        if info.st_size == 0:
            raise CardError(f"card {name}: empty (or a file of /proc or /sys); give a card file")
        if info.st_size > MAX_CARD_BYTES:
            raise CardError(f"card {name}: larger than {MAX_CARD_BYTES} bytes; is it a card?")
        os.set_blocking(fd, True)
        data = os.read(fd, MAX_CARD_BYTES + 1)
    finally:
        os.close(fd)
    return _decoded(data, name)


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _read_url(url: str, name: str) -> str:
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            data = f.read(MAX_CARD_BYTES + 1)
    except FileNotFoundError:
        raise CardError(f"card {name}: no such file") from None
    except Exception as err:  # fsspec backends raise many kinds
        raise CardError(f"card {name}: cannot be read ({type(err).__name__})") from None
    return _decoded(data, name)


def _decoded(data: bytes, name: str) -> str:
    if len(data) > MAX_CARD_BYTES:
        raise CardError(f"card {name}: larger than {MAX_CARD_BYTES} bytes; is it a card?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CardError(f"card {name}: not UTF-8 text; is it a card?") from None
    return text if text.endswith("\n") else text + "\n"


def run_seeds(card: Card, run: int) -> tuple[np.random.SeedSequence, list[int]]:
    """The seed sequence of run ``run`` and one CORSIKA seed per ``SEED`` line.

    Both derive from the card's seeds and the run number only, so a run gives
    the same showers wherever and whenever it runs, and runs differ.
    """
    entropy = [int(v) for line in card.seeds for v in line]
    seq = np.random.SeedSequence(entropy, spawn_key=(int(run),))
    state = seq.generate_state(len(card.seeds), dtype=np.uint64)
    return seq, [int(s % (SEED_MAX - 1)) + 1 for s in state]


_IMAGE = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./:@+-]{0,511}$")
_PROGRAM = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./+-]{0,255}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CorsikaImage:
    """A CORSIKA installation the administrator allows: a container image and its program.

    Configured under the Dask config key ``esap.corsika.images`` (a mapping of names to
    these fields); a job selects one by name (``concordia``'s ``corsika`` parameter)::

        esap:
          corsika:
            images:
              corsika-77500:
                image: /cvmfs/images/corsika-77500.sif
                executable: corsika77500Linux_QGSII_urqmd
                engine: apptainer

    Attributes
    ----------
    name
        The name jobs use.
    image
        The container image: a ``.sif`` path or ``docker://`` URI (apptainer,
        singularity), or a registry reference (docker, podman).
    executable
        The CORSIKA program inside the image.
    engine
        ``apptainer``, ``singularity``, ``docker`` or ``podman``.
    runtime
        The engine's program on the host, when it is not ``engine`` on the PATH.
    timeout
        Seconds a run may take before it is killed.
    max_output
        Bytes of standard output and error a run may write before it is killed.
    """

    name: str
    image: str
    executable: str = "corsika"
    engine: str = "apptainer"
    runtime: str = ""
    timeout: float = 24 * 3600.0
    max_output: int = 64 * 2**20

    def __post_init__(self) -> None:
        where = f"Dask config esap.corsika.images.{_shown(self.name, 64)}"
        if not _NAME.match(self.name):
            raise CardError(f"{where}: a name is letters, digits and _ . - (at most 64)")
        if not isinstance(self.image, str) or not _IMAGE.match(self.image):
            raise CardError(
                f"{where}.image: give an image path or reference (letters, digits and "
                "_ . / : @ + -, not starting with '-')"
            )
        if not isinstance(self.executable, str) or not _PROGRAM.match(self.executable):
            raise CardError(
                f"{where}.executable: give the program's name or path in the image "
                "(letters, digits and _ . / + -, not starting with '-')"
            )
        if self.engine not in _ENGINES:
            raise CardError(f"{where}.engine: one of {', '.join(_ENGINES)}")
        if self.runtime and not _PROGRAM.match(self.runtime):
            raise CardError(f"{where}.runtime: a program name or path (not starting with '-')")
        if not 0 < float(self.timeout) <= 30 * 86400:
            raise CardError(f"{where}.timeout: seconds, more than 0 and at most 30 days")
        if not 0 < int(self.max_output) <= 2**40:
            raise CardError(f"{where}.max_output: bytes, more than 0")


def corsika_images() -> dict[str, CorsikaImage]:
    """The CORSIKA installations of the Dask config ``esap.corsika.images``, by name."""
    import dask.config

    import esap_dask.config  # noqa: F401 - the esap.* defaults this reads

    entries = dask.config.get("esap.corsika.images") or {}
    if not isinstance(entries, Mapping):
        raise CardError("Dask config esap.corsika.images: a mapping of names to images")
    fields = {f.name for f in dataclasses.fields(CorsikaImage)} - {"name"}
    images = {}
    for name, entry in entries.items():
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, Mapping):
            raise CardError(f"Dask config esap.corsika.images.{_shown(str(name), 64)}: a mapping")
        options = {str(k).replace("-", "_"): v for k, v in entry.items()}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise CardError(
                f"Dask config esap.corsika.images.{_shown(str(name), 64)}: unknown key(s) "
                f"{_shown(', '.join(unknown))}; use {', '.join(sorted(fields))}"
            )
        images[str(name)] = CorsikaImage(name=str(name), **options)
    return images


def corsika_image(name: str) -> CorsikaImage:
    """The configured CORSIKA installation called ``name``.

    Raises
    ------
    CardError
        When ``name`` is not a configured one (the message lists those that are).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise CardError(
            "a CORSIKA installation is chosen by name (letters, digits and _ . -); the "
            "administrator configures them under the Dask config esap.corsika.images"
        )
    images = corsika_images()
    if name not in images:
        known = ", ".join(sorted(images)) or "none are configured"
        raise CardError(
            f"{name!r} is not a CORSIKA installation of this site ({known}; Dask config "
            "esap.corsika.images)"
        )
    return images[name]


def _safe_word(value: str, what: str) -> str:
    if (
        not value
        or value.startswith("-")
        or _CONTROL.search(value)
        or any(c.isspace() for c in value)
    ):
        raise CardError(f"{what}: not starting with '-', no blanks or control characters")
    return value


def corsika_command(
    image: str,
    *,
    engine: str = "apptainer",
    executable: str = "corsika",
    workdir: str = "/work",
    binds: Sequence[str] = (),
    runtime: str = "",
) -> list[str]:
    """The argv that runs CORSIKA in ``image`` in ``workdir``; the card goes to its stdin.

    ``--`` ends the runtime's options, so the image is never read as one. apptainer
    and singularity run with ``--containall`` (no host home, /tmp or environment);
    docker and podman with no network and the caller's uid.

    Raises
    ------
    CardError
        For an engine that is not apptainer, singularity, docker or podman, no image,
        or an image, executable or bind that starts with ``-`` or holds blanks.
    """
    if not image:
        raise CardError("no CORSIKA image: configure one under the Dask config esap.corsika.images")
    if engine not in _ENGINES:
        raise CardError(
            f"CORSIKA engine {_shown(engine, 32)!r} is not one of {', '.join(_ENGINES)}"
        )
    _safe_word(image, "the CORSIKA image")
    _safe_word(executable, "the CORSIKA executable")
    mounts = [_safe_word(m, "a bind") for m in (f"{workdir}:{workdir}", *binds)]
    program = runtime or engine
    if engine in ("apptainer", "singularity"):
        args = [program, "exec", "--containall", "--pwd", workdir]
        for m in mounts:
            args += ["--bind", m]
        return [*args, "--", image, executable]
    args = [program, "run", "--rm", "-i", "--network", "none"]
    args += ["--user", f"{os.getuid()}:{os.getgid()}", "--workdir", workdir]
    for m in mounts:
        args += ["--volume", m]
    return [*args, "--", image, executable]


_GH = re.compile(r"PARAMETERS\s*=\s*(.+)")


def read_long(path: str | Path) -> list[dict[str, Any]]:
    """Per shower of a CORSIKA ``DAT<run>.long`` file: depth, charged particles, GH fit.

    Returns one dict per shower with ``depth`` and ``charged`` arrays (the
    particle table, vertical depth in g/cm²) and, when CORSIKA fitted it,
    ``nmax``, ``x1`` and ``xmax`` from the Gaisser–Hillas parameters P1–P3.
    """
    showers: list[dict[str, Any]] = []
    rows: list[list[float]] | None = None
    for line in Path(path).read_text().splitlines():
        text = line.strip()
        if text.startswith("LONGITUDINAL DISTRIBUTION"):
            rows = []
            showers.append({})
            continue
        if text.startswith("LONGITUDINAL ENERGY") or text.startswith("FIT OF"):
            if rows is not None and showers:
                table = np.asarray(rows) if rows else np.empty((0, 8))
                showers[-1]["depth"], showers[-1]["charged"] = table[:, 0], table[:, 7]
            rows = None
            continue
        match = _GH.search(text)
        if match and showers:
            p = [float(v) for v in match[1].split()]
            showers[-1].update(nmax=p[0], x1=p[1], xmax=p[2])
            continue
        if rows is not None and text and text[0].isdigit():
            rows.append([float(v) for v in text.split()])
    return showers


def _column(showers: list[dict[str, Any]], key: str, n: int) -> np.ndarray:
    values = [s.get(key, np.nan) for s in showers[:n]]
    return np.asarray(values + [np.nan] * (n - len(values)), dtype=float)


#: Environment variables a container runtime gets from the worker (nothing else).
RUNTIME_ENVIRONMENT = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR",
    "DOCKER_HOST", "CONTAINER_HOST", "APPTAINER_CACHEDIR", "APPTAINER_TMPDIR",
    "SINGULARITY_CACHEDIR", "SINGULARITY_TMPDIR",
)  # fmt: skip


def _tail(path: Path, limit: int = 2000) -> str:
    """The last ``limit`` bytes of a log, as printable ASCII lines."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
        data = f.read(limit)
    text = data.decode("ascii", errors="replace")
    return "".join(c if c == "\n" or " " <= c <= "~" else "?" for c in text)


def _run(argv: list[str], card: str, workdir: str, image: CorsikaImage, run: int) -> None:
    """Run ``argv`` with ``card`` on stdin, within the image's time and output bounds."""
    log = Path(workdir) / "corsika.log"
    env = {k: os.environ[k] for k in RUNTIME_ENVIRONMENT if k in os.environ}
    problem = ""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + float(image.timeout)
        data: bytes | None = card.encode()
        try:
            while True:
                try:
                    proc.communicate(data, timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    data = None
                if time.monotonic() > deadline:
                    problem = f"ran longer than {float(image.timeout):g} s (its timeout)"
                elif log.stat().st_size > int(image.max_output):
                    problem = f"wrote more than {int(image.max_output)} bytes of output"
                if problem:
                    break
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if problem or proc.returncode:
        what = problem or f"exited {proc.returncode}"
        logger.warning(
            "CORSIKA run %d (%s) %s; the end of its output:\n%s",
            run,
            image.name,
            what,
            _tail(log),
        )
        raise CorsikaError(
            f"CORSIKA run {run} ({image.name}) {what}; see the worker's log for its output"
        )


def run_corsika(
    card: Card,
    run: int,
    seeds: Sequence[int],
    *,
    image: CorsikaImage,
    depth: np.ndarray,
    n_core: int,
) -> dict[str, Any]:
    """Run the configured CORSIKA ``image`` for one run; its products in the ``concordia`` schema.

    CORSIKA runs in a fresh working directory (its ``DIRECT``), with the card
    formatted from ``card`` on its standard input, no shell, a minimal environment
    (:data:`RUNTIME_ENVIRONMENT`), and the image's ``timeout`` and ``max_output``.
    The profiles and Gaisser–Hillas fits are read from ``DAT<run>.long`` (vertical
    depth, interpolated on ``depth``). What only the binary file holds (energies,
    angles, Cherenkov bunches) is left NaN.

    Raises
    ------
    CorsikaError
        When CORSIKA exits with an error or hits a bound; the message says which, and
        the end of its output goes to the worker's log (never into the error).
    """
    with tempfile.TemporaryDirectory(prefix=f"corsika-{int(run)}-") as workdir:
        kept = tuple(line for line in card.extra if line.keyword != "DIRECT")
        direct = card.replace(extra=(*kept, CardLine("DIRECT", (f"{workdir}/",))))
        text = format_card(direct, run=run, seeds=seeds)
        argv = corsika_command(
            image.image,
            engine=image.engine,
            executable=image.executable,
            workdir=workdir,
            runtime=image.runtime,
        )
        _run(argv, text, workdir, image, int(run))
        long_file = Path(workdir) / f"DAT{int(run):06d}.long"
        if not long_file.is_file():
            raise CorsikaError(
                f"CORSIKA run {run} ({image.name}) wrote no {long_file.name}; is LONGI T in "
                "the card, and does the image's CORSIKA write longitudinal profiles?"
            )
        try:
            long = read_long(long_file)
        except (ValueError, IndexError):
            raise CorsikaError(
                f"CORSIKA run {run} ({image.name}): {long_file.name} is not a CORSIKA .long file"
            ) from None
    n = card.nshow
    nan = np.full(n, np.nan)
    profile = np.full((n, len(depth)), np.nan)
    for i, shower in enumerate(long[:n]):
        if len(shower.get("depth", ())):
            profile[i] = np.interp(depth, shower["depth"], shower["charged"], right=np.nan)
    return {
        "energy": nan,
        "zenith": nan,
        "azimuth": nan,
        "first_interaction": _column(long, "x1", n),
        "xmax": _column(long, "xmax", n),
        "nmax": _column(long, "nmax", n),
        "profile": profile,
        "cherenkov_density": np.full((n, n_core), np.nan),
        "cherenkov_photons": nan,
    }
