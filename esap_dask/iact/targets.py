"""Sky positions given as pipeline parameters: one parser for every IACT pipeline."""

from __future__ import annotations

from esap_dask.pipeline import ParameterError

__all__ = ["parse_target"]


def parse_target(text: str, name: str = "target") -> tuple[float, float] | None:
    """``(ra, dec)`` in degrees (ICRS) of a ``"RA,DEC"`` parameter; None for ``""``.

    An empty value means "each file's own target" (its ``RA_OBJ``, ``DEC_OBJ``).

    Examples
    --------
    >>> parse_target("83.633, 22.014")
    (83.633, 22.014)
    >>> parse_target("") is None
    True
    """
    if not text.strip():
        return None
    try:
        ra, dec = (float(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        ra = dec = float("nan")
    if not (0 <= ra <= 360 and -90 <= dec <= 90):
        raise ParameterError(
            f"parameter {name!r}: {text!r} is not 'RA,DEC' in degrees (ICRS, 0 <= RA <= 360, "
            "-90 <= DEC <= 90), e.g. '83.633,22.014'; leave it empty to use each file's "
            "RA_OBJ, DEC_OBJ"
        )
    return ra, dec
