"""Errors worded for their caller: Python, the command line, the job service.

An error that tells the user what to give instead names it in the caller's words:
``store=`` in Python, ``--store`` on the command line. ``str(err)`` is the library's
(Python's) wording, also what the job service reports; the CLI prints
:func:`for_cli`.

Examples
--------
>>> err = Worded("x.zarr: is a file", Remedy("give another store", "give another --store"))
>>> str(err), for_cli(err)
('x.zarr: is a file; give another store', 'x.zarr: is a file; give another --store')
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Remedy", "Worded", "for_cli"]


class Remedy(NamedTuple):
    """What to do, said to a Python caller and to a command-line user."""

    python: str
    cli: str


class Worded(Exception):
    """Mixin of errors whose message ends with a :class:`Remedy`.

    ``Worded(message, remedy)``; without a remedy it is a plain message. (Pickled, as
    errors raised on workers are, it keeps the Python wording.)
    """

    def __init__(self, message: str, remedy: Remedy | None = None) -> None:
        self.message, self.remedy = message, remedy
        super().__init__(f"{message}; {remedy.python}" if remedy else message)


def for_cli(err: BaseException) -> str:
    """``err``'s message in a command-line user's words."""
    if isinstance(err, Worded) and err.remedy is not None:
        return f"{err.message}; {err.remedy.cli}"
    return str(err)
