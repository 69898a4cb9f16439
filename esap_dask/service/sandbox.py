"""The job service's input sandbox: every value of a request is confined and bounded.

Whatever reaches the service from a request is treated as hostile: it may name
any path, hold any byte, or try to become a command. This module is the one
place that turns such values into things the service may use:

- **Files only under the data roots.** ``esap-dask serve --data-root DIR``
  (repeatable) names the directories whose files jobs may read; without one the
  service reads no file at all, and observations can only be run numbers or
  ranges (``1..100``). That default is deliberate: a shared service that reads
  any file it can open leaks its own secrets (its token file, ``/proc/self/environ``,
  other users' stores), so reading files is something its administrator turns on,
  for the directories that hold data. A path is accepted when its *real* path
  (symlinks resolved) is inside a root and is a regular file: no device
  (``/dev/zero``), FIFO, socket or directory. Relative paths are taken from the
  first root under which they exist; ``..`` is refused. The mapper receives the real path.
- **URLs only under URL data roots.** ``--data-root s3://bucket/runs/`` (or an
  ``https://`` prefix) lets observations be URLs under it, read by the workers; never
  ``file://``, never a host that resolves to loopback or link-local unless the root
  names it (:mod:`esap_dask.service.urls`). Without a URL root, URLs are refused (the
  service fetches nothing on a user's behalf).
- **Bounded counts.** A glob is expanded lazily and refused past
  :attr:`Sandbox.max_observations` matches, before any list is built; ranges,
  lists and list files are counted the same way.
- **List files only on request**: ``observations=list:PATH`` reads ``PATH``
  (under a root) as one observation a line (``#`` comments, relative lines from
  the list's directory); every line is confined like a path of the request. A
  ``.txt`` file given without ``list:`` is one observation, as any other file.
- **Errors never echo what a file holds.** They name the parameter and the
  user's own value (shortened, control characters escaped), and say "line 7 of
  the list file is outside the data roots", never the line.
- **Text a UWS document can carry.** Names and values with characters that XML 1.0
  cannot hold (control characters) are refused, so no job document can fail to
  render.

:class:`Redactor` does the reverse for what goes out: results shown to users
carry paths relative to the data root (or the job directory), not server paths.
"""

from __future__ import annotations

import glob as globmod
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from esap_dask.service.urls import UrlRoot, confine_url, parse_url_root

__all__ = [
    "LIST_PREFIX",
    "MAX_VALUE_CHARS",
    "JobParameterError",
    "QuotaError",
    "Redactor",
    "Sandbox",
    "check_text",
    "show",
]

#: ``observations=list:PATH`` reads PATH as a list file.
LIST_PREFIX = "list:"
#: Longest parameter value accepted (a steering card's text fits).
MAX_VALUE_CHARS = 65_536
#: Longest RUNID (the database column).
MAX_RUNID_CHARS = 255
#: Largest list file read, and its longest line.
MAX_LIST_BYTES = 64 << 20
MAX_LINE_CHARS = 4096
#: Characters XML 1.0 cannot hold (the C0 controls but tab, CR, LF; surrogates; U+FFFE/F).
XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SHOWN = 80


class JobParameterError(ValueError):
    """A job parameter is missing, unknown or invalid; the message names it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"parameter {name!r}: {message}")
        self.name = name


class QuotaError(JobParameterError):
    """A request that a configured limit refuses; the message names the limit."""


def show(value: object, limit: int = _SHOWN) -> str:
    """A user-given value for an error message: quoted, shortened, non-printables escaped.

    >>> show("a\\x00b")
    "'a\\\\x00b'"
    """
    text = str(value)
    cut = len(text) > limit
    text = text[:limit]
    escaped = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
    return f"'{escaped}{'...' if cut else ''}'"


def check_text(name: str, value: str, *, limit: int = MAX_VALUE_CHARS) -> None:
    """Refuse a name or value that a UWS (XML) document could not carry, or too long.

    Raises
    ------
    JobParameterError
        Naming the parameter and the first offending character.
    """
    bad = XML_INVALID.search(value)
    if bad:
        raise JobParameterError(
            name,
            f"contains the control character U+{ord(bad.group()):04X} at position "
            f"{bad.start()}; give printable text",
        )
    if len(value) > limit:
        raise JobParameterError(name, f"longer than {limit} characters")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class Sandbox:
    """Where job inputs may come from and how many there may be.

    Parameters
    ----------
    roots
        Real paths of the data roots (see :meth:`create`); empty: no file is read.
    max_observations
        Most observations one job may map.
    parameter_maxima
        ``{"pipeline.param" or "param": maximum}``: bounds of numeric pipeline
        parameters on top of the pipelines' own.
    """

    roots: tuple[str, ...] = ()
    max_observations: int = 100_000
    parameter_maxima: Mapping[str, float] = field(default_factory=dict)
    #: URL prefixes observations may come from (``s3://bucket/runs/``)
    url_roots: tuple[UrlRoot, ...] = ()

    @classmethod
    def create(
        cls,
        roots: Iterable[str | os.PathLike[str]] = (),
        *,
        max_observations: int = 100_000,
        parameter_maxima: Mapping[str, float] | None = None,
        private: Mapping[str, str | os.PathLike[str] | None] | None = None,
    ) -> Sandbox:
        """A sandbox over existing directories ``roots``.

        ``private`` names the service's own files and directories (``{"data
        directory": ..., "token file": ...}``): a root may not contain them, nor lie
        inside them (users would read each other's stores, or the tokens).

        Raises
        ------
        ValueError
            For a root that is not a directory, or that overlaps a private path.
        """
        real: list[str] = []
        urls: list[UrlRoot] = []
        for root in roots:
            if "://" in str(root):
                urls.append(parse_url_root(str(root)))
                continue
            path = os.path.realpath(os.fspath(root))
            if not os.path.isdir(path):
                raise ValueError(f"data root {os.fspath(root)}: not an existing directory")
            for what, mine in (private or {}).items():
                if mine is None:
                    continue
                own = os.path.realpath(os.fspath(mine))
                if _inside(own, path) or _inside(path, own):
                    raise ValueError(
                        f"data root {os.fspath(root)} overlaps the service's {what} ({own}): "
                        "jobs could read it; give a data root that holds only input data"
                    )
            real.append(path)
        if max_observations < 1:
            raise ValueError(f"the observation cap must be at least 1, not {max_observations}")
        return cls(tuple(real), max_observations, dict(parameter_maxima or {}), tuple(urls))

    # -- single paths ----------------------------------------------------------------------

    def url(self, name: str, text: str, *, where: str = "", glob: bool = False) -> str:
        """``text`` when it is a URL under a URL data root (see :mod:`esap_dask.service.urls`).

        Raises
        ------
        JobParameterError
            Naming ``name`` and ``where`` (default: the value, shortened) and the reason.
        """
        why = confine_url(text, self.url_roots, glob=glob)
        if why is not None:
            raise JobParameterError(name, f"{where or show(text)} {why}")
        return text

    def url_glob(self, name: str, pattern: str, facility: str = "local") -> list[str]:
        """The URLs matching ``pattern`` (under a URL root), listed through fsspec, counted."""
        from esap_dask.engine.remote import RemoteInputError, expand_url, input_options

        where = show(pattern)
        self.url(name, pattern, glob=True)
        try:
            found = expand_url(pattern, input_options([pattern], facility))
        except RemoteInputError:
            raise JobParameterError(
                name, f"the glob {where} cannot be listed; check the URL and the bucket"
            ) from None
        if not found:
            raise JobParameterError(name, f"no object matches {where}; check the pattern")
        self.count_ok(name, len(found), f"the glob {where}")
        return [self.url(name, u, where=f"a match of {where}") for u in found]

    def _refuse_form(self, name: str, text: str, where: str) -> None:
        if "://" in text:
            why = confine_url(text, self.url_roots)
            raise JobParameterError(name, f"{where} {why or 'is a URL where a path is expected'}")
        if not self.roots:
            raise JobParameterError(
                name,
                "this service reads no files (it has no data roots: esap-dask serve "
                "--data-root DIR); give run numbers or a range like 1..10",
            )
        if not text or text.startswith("-") or "\x00" in text:
            raise JobParameterError(name, f"{where} is not a path under the data roots")
        if ".." in text.split("/"):
            raise JobParameterError(name, f"{where} contains '..'; give a path without it")

    def file(self, name: str, text: str, *, base: str | None = None, where: str = "") -> str:
        """The real path of a regular file under a data root named by ``text``.

        ``base``: the directory relative paths start from (default: each root in
        turn). ``where``: how errors name the value (default: the value itself,
        shortened) — content read from a file is never put in a message.

        Raises
        ------
        JobParameterError
            Naming ``name`` and ``where``.
        """
        where = where or show(text)
        self._refuse_form(name, text, where)
        if os.path.isabs(text):
            candidates = [text]
        else:
            candidates = [os.path.join(b, text) for b in ([base] if base else self.roots)]
        problem = "does not exist under the data roots"
        for candidate in candidates:
            real = os.path.realpath(candidate)
            if not any(_inside(real, root) for root in self.roots):
                problem = "is outside the data roots"
                continue
            try:
                mode = os.stat(real).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode):
                problem = "is not a regular file (devices, FIFOs and directories are refused)"
                continue
            return real
        raise JobParameterError(name, f"{where} {problem}")

    # -- many paths ------------------------------------------------------------------------

    def count_ok(self, name: str, count: int, what: str) -> None:
        """Refuse ``count`` observations past the cap, naming the limit."""
        if count > self.max_observations:
            raise QuotaError(
                name,
                f"{what} holds more than {self.max_observations} observations, the most one "
                "job may map on this service (esap-dask serve --max-observations); split it "
                "into several jobs",
            )

    def glob(self, name: str, pattern: str) -> list[str]:
        """The real paths of the regular files that ``pattern`` matches under a root, sorted.

        The matches are counted lazily: past :attr:`max_observations` the glob is
        refused before a list of them is built.
        """
        where = show(pattern)
        self._refuse_form(name, pattern, where)
        if os.path.isabs(pattern):
            candidates = [pattern]
        else:
            candidates = [os.path.join(root, pattern) for root in self.roots]
        outside = False
        for candidate in candidates:
            parts = candidate.split("/")
            fixed = next((i for i, p in enumerate(parts) if globmod.has_magic(p)), len(parts) - 1)
            prefix = os.path.realpath("/".join(parts[:fixed]) or "/")
            if not any(_inside(prefix, root) for root in self.roots):
                outside = True
                continue
            matches = globmod.iglob(candidate, recursive=True)
            found = list(islice(matches, self.max_observations + 1))
            if not found:
                continue
            self.count_ok(name, len(found), f"the glob {where}")
            paths = []
            for match in sorted(found):
                shown = show(os.path.relpath(match, "/".join(parts[:fixed]) or "/"))
                paths.append(self.file(name, match, where=f"the match {shown} of {where}"))
            return paths
        if outside:
            raise JobParameterError(name, f"the glob {where} is outside the data roots")
        raise JobParameterError(
            name, f"no file under the data roots matches {where}; check the pattern"
        )

    def list_file(self, name: str, text: str) -> list[str]:
        """The observations of a list file: one path a line, each confined; see the module doc."""
        path = self.file(name, text)
        if os.stat(path).st_size > MAX_LIST_BYTES:
            raise JobParameterError(
                name, f"the list file {show(text)} is larger than {MAX_LIST_BYTES >> 20} MiB"
            )
        base = os.path.dirname(path)
        entries: list[str] = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                where = f"line {number} of the list file"
                if len(line) > MAX_LINE_CHARS or XML_INVALID.search(line):
                    raise JobParameterError(name, f"{where} is not a path")
                if "://" in line:
                    entries.append(self.url(name, line, where=where))
                else:
                    entries.append(self.file(name, line, base=base, where=where))
                self.count_ok(name, len(entries), f"the list file {show(text)}")
        if not entries:
            raise JobParameterError(name, f"the list file {show(text)} lists no observation")
        return entries

    # -- bounds ----------------------------------------------------------------------------

    def check_maxima(self, pipeline: str, params: Mapping[str, Any]) -> None:
        """Refuse numeric pipeline parameters above this service's maxima."""
        for key, value in params.items():
            limit = self.parameter_maxima.get(f"{pipeline}.{key}", self.parameter_maxima.get(key))
            if limit is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value > limit:
                raise QuotaError(
                    key,
                    f"{value!r} is above this service's maximum {limit:g} "
                    "(esap-dask serve --max-parameter)",
                )


class Redactor:
    """Rewrites server paths in text shown to users: data roots and job directories.

    A path under a data root is shown relative to it; the job's own directory
    disappears (its store shows as ``store.zarr``); the rest of the service's data
    directory shows as ``<service>``.
    """

    def __init__(self, roots: Sequence[str], data_dir: str | os.PathLike[str]) -> None:
        self.roots = [r.rstrip("/") for r in roots if r.rstrip("/")]
        self.data_dir = os.fspath(data_dir).rstrip("/")

    def __call__(self, text: str, job_dir: str | os.PathLike[str] | None = None) -> str:
        """``text`` with server paths replaced (longest prefixes first)."""
        pairs = [(f"{r}/", "") for r in self.roots]
        if job_dir is not None:
            pairs.append((f"{os.fspath(job_dir).rstrip('/')}/", ""))
        pairs.append((self.data_dir, "<service>"))
        for prefix, replacement in sorted(pairs, key=lambda p: -len(p[0])):
            text = text.replace(prefix, replacement)
        return text
