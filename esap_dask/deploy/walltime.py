"""Walltimes and worker lifetimes: batch and grid workers retire before they are killed.

A batch job (SLURM, PBS, SGE, LSF, HTCondor) or a grid job (DIRAC) is killed at its
walltime. Its worker is told to leave earlier (``dask worker --lifetime``), one at a
time (``--lifetime-stagger``), so that its results move to other workers; on SLURM the
cluster renews the worker ahead of that (:func:`renew_after`).
"""

from __future__ import annotations

from dask.utils import parse_timedelta

from esap_dask.deploy.facility import FacilityError

__all__ = ["lifetime_arguments", "parse_walltime", "renew_after", "worker_lifetime"]


def parse_walltime(walltime: str | int | float, facilitytype: str = "slurm") -> float:
    """A batch walltime in seconds.

    Parameters
    ----------
    walltime
        SLURM: ``minutes``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``;
        PBS/SGE: ``HH:MM:SS``; LSF: ``HH:MM``; or a Dask duration such as ``"90m"``.
    facilitytype
        Decides how a two-field ``A:B`` value reads (LSF: hours:minutes, else minutes:seconds).

    Examples
    --------
    >>> parse_walltime("01:30:00")
    5400.0
    >>> parse_walltime("1-00:00")
    86400.0
    >>> parse_walltime("00:30", "lsf")
    1800.0
    """
    if isinstance(walltime, int | float):
        return float(walltime) * 60.0
    text = str(walltime).strip()
    days = 0.0
    if "-" in text:
        d, text = text.split("-", 1)
        days = float(d)
        parts = [float(p) for p in text.split(":")] + [0.0] * 2
        return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    if not any(c.isalpha() for c in text):
        parts = [float(p) for p in text.split(":")]
        if len(parts) == 1:
            return parts[0] * 60.0
        if len(parts) == 2:
            a, b = parts
            return a * 3600 + b * 60 if facilitytype == "lsf" else a * 60 + b
        h, m, s = parts[-3:]
        return h * 3600 + m * 60 + s
    seconds = parse_timedelta(text)
    assert seconds is not None
    return float(seconds)


def worker_lifetime(
    walltime_s: float, margin: str | float | None = None, stagger: str | float | None = None
) -> tuple[float, float]:
    """``(lifetime, stagger)`` in seconds for workers of jobs with this walltime.

    A worker lives ``walltime − margin`` ± ``stagger`` seconds, so the workers of
    one array do not all leave at once and each has ``margin/2`` at least to hand
    its data over before the batch system's kill. The default margin is 10% of the
    walltime, within [1 min, 10 min] and at most a quarter of the walltime; the
    default stagger is half the margin.
    """
    if margin is None:
        m = min(max(0.1 * walltime_s, 60.0), 600.0, walltime_s / 4)
    else:
        m = float(parse_timedelta(margin) or 0)
    if not 0 < m < walltime_s:
        raise FacilityError(
            f"lifetime_margin {margin!r} must be shorter than the walltime ({walltime_s:.0f} s)"
        )
    s = m / 2 if stagger is None else float(parse_timedelta(stagger) or 0)
    return walltime_s - m, min(s, m / 2, walltime_s - m)


def lifetime_arguments(lifetime: float, stagger: float) -> list[str]:
    """``dask worker`` options for a :func:`worker_lifetime`.

    Examples
    --------
    >>> lifetime_arguments(*worker_lifetime(3600))
    ['--lifetime', '3240s', '--lifetime-stagger', '180s']
    >>> lifetime_arguments(*worker_lifetime(60, margin="20s"))
    ['--lifetime', '40s', '--lifetime-stagger', '10s']
    """
    return ["--lifetime", f"{lifetime:.0f}s", "--lifetime-stagger", f"{stagger:.0f}s"]


def renew_after(lifetime: float, stagger: float) -> float:
    """When the cluster starts a worker's successor: early enough that it connects in time.

    The successor is submitted a third of the earliest lifetime (at most 2 min)
    before the worker could leave by itself; the cluster spreads renewals over a
    further ``stagger`` seconds earlier.

    Examples
    --------
    >>> renew_after(3240, 180)
    2940.0
    """
    earliest = lifetime - stagger
    return earliest - min(120.0, earliest / 3)
