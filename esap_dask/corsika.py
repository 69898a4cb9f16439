"""CORSIKA steering cards, and a real CORSIKA run in a container.

A steering card is CORSIKA's input: one keyword a line followed by its values
(``ERANGE 1.E3 1.E5``), ``*`` or ``c`` lines are comments, ``EXIT`` ends it.
:func:`parse_card` reads the keywords the ``concordia`` pipeline uses, checks
each value (type, count, range) and raises :class:`CardError` naming the
keyword and the line; keywords it does not use but CORSIKA knows are kept
verbatim (:attr:`Card.extra`), so the card can be handed to a real CORSIKA.

Units are CORSIKA's: energies in GeV, angles in degrees, ``OBSLEV`` in cm,
``CWAVLG`` in nm.

:func:`corsika_command` builds the command that runs a real CORSIKA executable
inside a container image (apptainer, singularity, docker or podman), with the
card of one run on its standard input; :func:`read_long` reads the longitudinal
profiles and Gaisser–Hillas fits CORSIKA writes to ``DAT<run>.long``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esap_dask.pipeline import ParameterError

__all__ = [
    "Card",
    "CardError",
    "corsika_command",
    "format_card",
    "parse_card",
    "read_long",
    "run_seeds",
]

#: Keywords CORSIKA knows that the numpy model does not use (kept for a real run).
PASSTHROUGH = frozenset(
    {
        "ATMOD", "MAGNET", "ECUTS", "MUADDI", "MUMULT", "ELMFLG", "STEPFC", "RADNKG",
        "ARRANG", "FIXHEI", "FIXCHI", "HADFLG", "QGSJET", "QGSSIG", "HILOW", "ECTMAP",
        "MAXPRT", "DIRECT", "USER", "DEBUG", "DATBAS", "PAROUT", "CERFIL", "CERQEF",
        "CSCAT", "CERARY", "TELESCOPE", "TELFIL", "IACT", "ATMOSPHERE", "VIEWCONE",
        "HOST", "OUTFILE", "TSTART",
    }
)  # fmt: skip
#: CORSIKA's seed range (RANMAR).
SEED_MAX = 900_000_000
_ENGINES = ("apptainer", "singularity", "docker", "podman")


class CardError(ParameterError):
    """A steering card has an unknown keyword, a missing one, or an invalid value.

    A :class:`~esap_dask.pipeline.ParameterError`: the card is a pipeline parameter,
    so the CLI and the job service report it as bad input.
    """


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
        Lines of other CORSIKA keywords, verbatim.
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
    extra: tuple[str, ...] = field(default=(), compare=False)

    @property
    def mass_number(self) -> int:
        """Nucleons of the primary (1 for gamma, electrons and protons)."""
        return self.prmpar // 100 if self.prmpar >= 200 else 1

    @property
    def electromagnetic(self) -> bool:
        """Whether the primary is a photon or an electron (PRMPAR 1, 2, 3)."""
        return self.prmpar in (1, 2, 3)

    def replace(self, **changes: Any) -> Card:
        """A copy with ``changes`` applied and validated again."""
        card = dataclasses.replace(self, **changes)
        _validate(card, {})
        return card


# keyword -> (attribute, value types, number of values)
_FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "RUNNR": ("runnr", (int,)),
    "EVTNR": ("evtnr", (int,)),
    "NSHOW": ("nshow", (int,)),
    "PRMPAR": ("prmpar", (int,)),
    "ESLOPE": ("eslope", (float,)),
    "ERANGE": ("erange", (float, float)),
    "THETAP": ("thetap", (float, float)),
    "PHIP": ("phip", (float, float)),
    "OBSLEV": ("obslev", (float,)),
    "CERSIZ": ("cersiz", (float,)),
    "CWAVLG": ("cwavlg", (float, float)),
}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?$")


def _number(text: str, kind: type, keyword: str, where: str) -> Any:
    if not _NUMBER.match(text):
        raise CardError(f"{where}: {keyword} value {text!r} is not a number")
    value = float(text.replace("D", "E").replace("d", "e"))
    if kind is int:
        if not value.is_integer():
            raise CardError(f"{where}: {keyword} value {text!r} must be a whole number")
        return int(value)
    return value


def _validate(card: Card, lines: dict[str, int], source: str = "card") -> None:
    def _check(ok: bool, keyword: str, _: Any, message: str) -> None:
        if not ok:
            where = f"line {lines[keyword]}" if keyword in lines else "a default or override"
            raise CardError(f"{source}, {where}: {keyword} {message}")

    _check(card.runnr >= 0, "RUNNR", lines, "must be 0 or more")
    _check(card.evtnr >= 1, "EVTNR", lines, "must be 1 or more")
    _check(1 <= card.nshow <= 100_000, "NSHOW", lines, "must be between 1 and 100000")
    known = card.prmpar in (1, 2, 3, 14) or (200 <= card.prmpar <= 5999)
    nucleus_ok = card.prmpar < 200 or 1 <= card.prmpar % 100 <= card.prmpar // 100
    _check(
        known and nucleus_ok,
        "PRMPAR",
        lines,
        f"{card.prmpar} is not a primary this model knows (1 gamma, 2 e+, 3 e-, 14 proton, "
        "A*100+Z for a nucleus, e.g. 402 helium, 5626 iron)",
    )
    lo, hi = card.erange
    _check(0 < lo <= hi, "ERANGE", lines, f"needs 0 < low <= high GeV, got {lo:g} {hi:g}")
    _check(-10 <= card.eslope <= 0, "ESLOPE", lines, f"{card.eslope:g} is outside -10 .. 0")
    t0, t1 = card.thetap
    _check(0 <= t0 <= t1 <= 70, "THETAP", lines, f"needs 0 <= low <= high <= 70 deg: {t0:g} {t1:g}")
    p0, p1 = card.phip
    _check(
        -360 <= p0 <= p1 <= 360, "PHIP", lines, f"needs -360 <= low <= high <= 360: {p0:g} {p1:g}"
    )
    _check(-1e5 <= card.obslev < 5e6, "OBSLEV", lines, f"{card.obslev:g} cm is not below 50 km")
    _check(card.cersiz > 0, "CERSIZ", lines, "(photons a bunch) must be positive")
    w0, w1 = card.cwavlg
    _check(
        100 <= w0 < w1 <= 2000, "CWAVLG", lines, f"needs 100 <= low < high <= 2000: {w0:g} {w1:g}"
    )
    _check(card.longi_step > 0, "LONGI", lines, "step must be positive")
    _check(bool(card.seeds), "SEED", lines, "is missing: give at least one SEED line")
    for seed, _, _ in card.seeds:
        _check(1 <= seed <= SEED_MAX, "SEED", lines, f"{seed} is outside 1 .. {SEED_MAX}")


def parse_card(text: str, *, source: str = "card") -> Card:
    """Parse and validate a steering card's text.

    Raises
    ------
    CardError
        Naming ``source``, the line and the keyword: an unknown keyword, a wrong
        number of values, a value that is not a number or out of range.

    Examples
    --------
    >>> parse_card("NSHOW 5\\nERANGE 1.E3 1.E3\\nSEED 7 0 0\\nEXIT").nshow
    5
    """
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    seeds: list[tuple[int, int, int]] = []
    extra: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}, line {number}"
        words = raw.split()
        if not words or words[0].startswith("*") or words[0].lower() == "c":
            continue
        keyword, args = words[0].upper(), words[1:]
        if keyword == "EXIT":
            break
        if keyword == "SEED":
            if not 1 <= len(args) <= 3:
                raise CardError(f"{where}: SEED takes 1 to 3 values (seed calls billions)")
            nums = [_number(a, int, keyword, where) for a in args] + [0] * (3 - len(args))
            if not 1 <= nums[0] <= SEED_MAX:
                raise CardError(f"{where}: SEED {nums[0]} is outside 1 .. {SEED_MAX}")
            seeds.append((nums[0], nums[1], nums[2]))
            lines.setdefault("SEED", number)
            continue
        if keyword == "LONGI":
            if len(args) >= 2:
                values["longi_step"] = _number(args[1], float, keyword, where)
                lines["LONGI"] = number
            extra.append(raw.strip())
            continue
        if keyword in PASSTHROUGH:
            extra.append(raw.strip())
            continue
        if keyword not in _FIELDS:
            raise CardError(
                f"{where}: unknown keyword {keyword!r}; known: "
                f"{', '.join(sorted({*_FIELDS, 'SEED', 'LONGI', 'EXIT'}))} (and CORSIKA's "
                "others that the model ignores, e.g. ATMOD, MAGNET, ECUTS)"
            )
        attr, kinds = _FIELDS[keyword]
        if keyword in lines:
            raise CardError(f"{where}: {keyword} given twice (first on line {lines[keyword]})")
        if len(args) < len(kinds):
            raise CardError(
                f"{where}: {keyword} needs {len(kinds)} value(s), got {len(args)}: {raw.strip()!r}"
            )
        nums = [_number(a, k, keyword, where) for a, k in zip(args, kinds, strict=False)]
        values[attr] = tuple(nums) if len(kinds) > 1 else nums[0]
        lines[keyword] = number
    if seeds:
        values["seeds"] = tuple(seeds)
    card = Card(**values, extra=tuple(extra))
    _validate(card, lines, source)
    return card


def format_card(card: Card, *, run: int | None = None, seeds: Sequence[int] | None = None) -> str:
    """The card as CORSIKA reads it, for run ``run`` with ``seeds`` (one per SEED line)."""
    seed_list = list(seeds) if seeds is not None else [s for s, _, _ in card.seeds]
    out = [
        f"RUNNR   {card.runnr if run is None else run}",
        f"EVTNR   {card.evtnr}",
        f"NSHOW   {card.nshow}",
        f"PRMPAR  {card.prmpar}",
        f"ESLOPE  {card.eslope!r}",
        f"ERANGE  {card.erange[0]:.6E} {card.erange[1]:.6E}",
        f"THETAP  {card.thetap[0]!r} {card.thetap[1]!r}",
        f"PHIP    {card.phip[0]!r} {card.phip[1]!r}",
        *(f"SEED    {s} 0 0" for s in seed_list),
        f"OBSLEV  {card.obslev:.6E}",
        f"CERSIZ  {card.cersiz!r}",
        f"CWAVLG  {card.cwavlg[0]!r} {card.cwavlg[1]!r}",
        *card.extra,
        "EXIT",
    ]
    return "\n".join(out) + "\n"


def run_seeds(card: Card, run: int) -> tuple[np.random.SeedSequence, list[int]]:
    """The seed sequence of run ``run`` and one CORSIKA seed per ``SEED`` line.

    Both derive from the card's seeds and the run number only, so a run gives
    the same showers wherever and whenever it runs, and runs differ.
    """
    entropy = [int(v) for line in card.seeds for v in line]
    seq = np.random.SeedSequence(entropy, spawn_key=(int(run),))
    state = seq.generate_state(len(card.seeds), dtype=np.uint64)
    return seq, [int(s % (SEED_MAX - 1)) + 1 for s in state]


def corsika_command(
    image: str,
    *,
    engine: str = "apptainer",
    executable: str = "corsika",
    workdir: str = "/work",
    binds: Sequence[str] = (),
) -> list[str]:
    """The argv that runs CORSIKA in ``image`` in ``workdir``; the card goes to its stdin.

    Raises
    ------
    CardError
        For an engine that is not apptainer, singularity, docker or podman, or no image.
    """
    if not image:
        raise CardError("corsika_image is empty: give the container image that holds CORSIKA")
    if engine not in _ENGINES:
        raise CardError(f"corsika_engine {engine!r} is not one of {', '.join(_ENGINES)}")
    mounts = [f"{workdir}:{workdir}", *binds]
    if engine in ("apptainer", "singularity"):
        args = [engine, "exec", "--cleanenv", "--pwd", workdir]
        for m in mounts:
            args += ["--bind", m]
        return [*args, image, executable]
    args = [engine, "run", "--rm", "-i", "--workdir", workdir]
    for m in mounts:
        args += ["--volume", m]
    return [*args, image, executable]


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


def run_corsika(
    card: Card,
    run: int,
    seeds: Sequence[int],
    *,
    image: str,
    engine: str,
    executable: str,
    depth: np.ndarray,
    n_core: int,
) -> dict[str, Any]:
    """Run CORSIKA in ``image`` for one run; its products in the ``concordia`` schema.

    CORSIKA writes its binary particle file and ``DAT<run>.long`` in a fresh
    working directory; the profiles and Gaisser–Hillas fits are read from the
    latter (vertical depth, interpolated on ``depth``). What only the binary file
    holds (energies, angles, Cherenkov bunches) is left NaN.

    Raises
    ------
    RuntimeError
        When CORSIKA exits with an error, with the command and its output's tail.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"corsika-{run}-") as workdir:
        kept = tuple(e for e in card.extra if not e.upper().startswith("DIRECT"))
        direct = card.replace(extra=(*kept, f"DIRECT  {workdir}/"))
        text = format_card(direct, run=run, seeds=seeds)
        argv = corsika_command(image, engine=engine, executable=executable, workdir=workdir)
        done = subprocess.run(argv, input=text, cwd=workdir, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(
                f"CORSIKA run {run} failed (exit {done.returncode}): {' '.join(argv)}\n"
                f"{done.stdout[-1500:]}{done.stderr[-1500:]}"
            )
        long = read_long(Path(workdir) / f"DAT{run:06d}.long")
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
