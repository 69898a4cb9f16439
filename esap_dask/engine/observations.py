"""Observations: what a pipeline is mapped over, their ids and their fingerprints.

An observation is a file (a path), a URL, or any plain value (a run number for
a simulation). Each has an id, unique within a store: the file name for files
and URLs, ``str(value)`` for values. Fingerprints tell whether an observation
changed since it was processed: size and modification time for files (or a
SHA-256 of the content on request), a hash of the value otherwise.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import importlib
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple, Self, TypeVar, overload

import dask.config

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask.engine.globbing import LIST_SUFFIXES, parse_range, read_list, sorted_glob
from esap_dask.engine.inputs import (  # noqa: F401 - stat_fingerprint: its old home
    READ_CHUNK,
    open_checked,
    stat_fingerprint,
)

__all__ = [
    "LIST_SUFFIXES",
    "ContentTakenByWorkers",
    "Observation",
    "ObservationError",
    "ObservationIndex",
    "RunNumbers",
    "SelectionError",
    "TakenByWorkers",
    "ValueFingerprints",
    "as_observations",
    "fingerprint",
    "fingerprints",
    "observation_indexes",
    "parse_range",
    "sha256_fd",
    "sha256_file",
    "stat_fingerprint",
]

T = TypeVar("T")

#: Files with these suffixes given as ``--observations`` are read as lists, one entry a line.


class ObservationError(ValueError):
    """An observation list is empty, unreadable, or has duplicate ids."""


class SelectionError(ObservationError):
    """A selection over an observation index names an unknown key or a bad value."""


class Observation(NamedTuple):
    """One observation: its id in the store, the value the pipeline receives, and its kind.

    ``kind`` is ``"file"`` (a local path), ``"url"`` (``scheme://...``) or ``"value"``.
    (A named tuple: runs build tens of thousands of them, and reruns must be cheap.)
    """

    id: str
    value: Any
    kind: str = "value"

    @classmethod
    def of(cls, item: Any) -> Observation:
        """The observation for a path, URL, ``Observation`` or plain value."""
        if isinstance(item, (int, float)):  # run numbers: skip the slow ABC checks below
            return tuple.__new__(cls, (str(item), item, "value"))  # not the keyword call
        if isinstance(item, Observation):
            return item
        if isinstance(item, (str, os.PathLike)):
            text = os.fspath(item)
            if "://" in text:  # the id: the object's name, without a query (presigned URLs)
                name = text.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
                return tuple.__new__(cls, (name, text, "url"))
            # absolute: workers (batch jobs) do not share the driver's working directory
            path = text if text.startswith("/") and "/." not in text else os.path.abspath(text)
            # tuple.__new__, not the keyword call: 0.57 µs a path against 0.82 (10,000 files)
            return tuple.__new__(cls, (path.rpartition("/")[2], path, "file"))
        return tuple.__new__(cls, (str(item), item, "value"))


class MadeWhenRead(Sequence[T]):
    """A sequence of items made from plain values each time one is read (base class).

    Slices are of the same class, over a slice of the values; two are equal when they
    read as equal items (to lists too).
    """

    __slots__ = ("values",)

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = values

    @staticmethod
    def make(value: Any) -> T:
        """The item of one value."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Self: ...

    def __getitem__(self, index: int | slice) -> T | Self:
        if isinstance(index, slice):
            return type(self)(self.values[index])
        return self.make(self.values[index])

    def __iter__(self) -> Iterator[T]:
        return map(self.make, self.values)

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return list(self.values) == list(other.values)
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.values!r})"


class RunNumbers(MadeWhenRead[Observation]):
    """Run numbers (plain ``int``s, or a ``range``) as observations, each made when read.

    A run over a list of run numbers held one :class:`Observation` tuple, one id string
    and one fingerprint string per number for its whole length: 20 MiB of the driver's
    peak at 100,000 numbers (tracemalloc, ``bench.peers`` case ``rss``). This holds the
    numbers (a ``range`` as it is, a list as a tuple: the caller may change its list while
    a run goes on); batches are pickled as the numbers, and each worker makes the ids and
    fingerprints of its own rows.
    """

    __slots__ = ()
    values: range | tuple[int, ...]

    @staticmethod
    def make(value: Any) -> Observation:
        return _value(str(value), value)

    def ids(self) -> list[str]:
        """The observation ids, in order (no observation made)."""
        return list(map(str, self.values))

    def fingerprints(self) -> ValueFingerprints:
        """The fingerprints of the numbers, each computed when read."""
        return ValueFingerprints(self.values)


class ValueFingerprints(MadeWhenRead[str]):
    """The fingerprints of plain values (:func:`fingerprint` of a value), each computed when read.

    See :class:`RunNumbers`: a list of them held 7.6 MiB at 100,000 run numbers.
    """

    __slots__ = ()

    @staticmethod
    def make(value: Any) -> str:
        return _value_fingerprint(value)


class TakenByWorkers(MadeWhenRead[str]):
    """The fingerprints of new local files, taken by the worker that reads each file.

    A new store's first run has nothing to compare them with: its driver ``stat``-ed
    every file only for the tasks to write the results into the ledger (0.03-0.05 s of a
    run of 10,000 tiny files; with ``content_hash``, every file read and hashed on the
    driver, one after the other). Batches are pickled without them
    (:class:`esap_dask.engine.task.Batch`); each task fingerprints its files as it
    processes them, from the descriptor it hashes the file through
    (:func:`esap_dask.engine.task.open_input`). Read
    elsewhere, an item is the file's :func:`fingerprint` now.
    """

    __slots__ = ()
    values: Sequence[Observation]

    @staticmethod
    def make(value: Any) -> str:
        return fingerprint(value)

    @staticmethod
    def taken(checksum: str | None, stat_fp: str | None) -> str | None:
        """What a task records from the file it opened (None: it could not tell)."""
        return stat_fp


class ContentTakenByWorkers(TakenByWorkers):
    """:class:`TakenByWorkers` of a run with ``content_hash``: ``sha256:<hex>`` of each file."""

    __slots__ = ()

    @staticmethod
    def make(value: Any) -> str:
        return fingerprint(value, content=True)

    @staticmethod
    def taken(checksum: str | None, stat_fp: str | None) -> str | None:
        return None if checksum is None else f"sha256:{checksum}"


class ObservationIndex(NamedTuple):
    """A reader of index files that list observations, registered by a science package.

    Register one in the entry point group ``esap_dask.observation_indexes`` (as
    ``esap_dask.iact.gadf:OBSERVATION_INDEX`` is, in esap-dask's ``pyproject.toml``), or
    name it, as ``"module:attribute"``, in the Dask configuration key
    ``esap.observation-indexes`` (a mapping of names to targets).
    """

    #: The format's name, for messages ("GADF").
    format: str
    #: File names of such an index inside a data directory (suggested for a directory).
    names: tuple[str, ...]
    #: The suffix of the files an index lists (suggested in a glob).
    members: str
    #: Whether ``path`` is an index of this format (by its name; cheap).
    matches: Callable[[Path], bool]
    #: The observations an index lists (paths, URLs or :class:`Observation` objects):
    #: ``read(location, **select)``; for an index at a URL, ``location`` is the URL and
    #: the keyword ``storage_options`` gives its fsspec options. Selection keys the
    #: reader does not know raise :class:`SelectionError`.
    read: Callable[..., Iterable[Any]]


def observation_indexes() -> list[ObservationIndex]:
    """The registered observation-index readers: entry points, then ``esap.observation-indexes``.

    A reader whose module fails to import is left out (its entry point names it in
    ``importlib.metadata``); the engine itself names no format.
    """
    targets = {ep.name: ep.value for ep in entry_points(group="esap_dask.observation_indexes")}
    targets.update(dask.config.get("esap.observation-indexes") or {})
    readers = []
    for target in dict.fromkeys(targets.values()):
        module, _, attribute = target.partition(":")
        try:
            reader = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
        readers.append(reader)
    return readers


def _index_of(path: Path) -> ObservationIndex | None:
    return next((index for index in observation_indexes() if index.matches(path)), None)


def _expand_url(
    spec: str, select: Mapping[str, Any] | None, options: Mapping[str, Any] | None, facility: str
) -> list[Any]:
    """The observations of a URL: itself, the matches of a glob, or the index it names."""
    from esap_dask.engine import remote

    opts = remote.input_options([spec], facility, options)
    name = spec.split("?", 1)[0].rstrip("/").rpartition("/")[2]
    index = _index_of(Path(name)) if name else None
    if index is not None:
        protocol = remote.protocol_of(spec)
        try:
            return list(
                index.read(spec, storage_options=opts.get(protocol, {}), **dict(select or {}))
            )
        except ObservationError:
            raise
        except (OSError, ValueError) as err:  # unreachable, or not an index: exit 2, say why
            raise ObservationError(str(err)) from err
    if select:
        raise _not_an_index(spec)
    if globmod.has_magic(spec.split("://", 1)[1]):
        try:
            matches = remote.expand_url(spec, opts)
        except remote.RemoteInputError as err:
            raise ObservationError(str(err)) from err
        if not matches:
            raise ObservationError(
                f"no object matches {spec!r}; check the pattern, the bucket or server, and "
                "the input storage options"
            )
        return matches
    return [spec]


def _not_an_index(spec: str) -> SelectionError:
    known = ", ".join(f"{i.format} ({'/'.join(i.names)})" for i in observation_indexes())
    return SelectionError(
        f"a selection applies to an observation index, and {spec!r} is none; give an index "
        f"file as the observations (known: {known or 'no index reader is installed'})"
    )


def _expand(
    spec: str,
    select: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    facility: str = "local",
) -> Sequence[Any]:
    if "://" in spec and not spec.startswith("file://"):
        return _expand_url(spec, select, options, facility)
    spec = spec.removeprefix("file://")
    bounds = parse_range(spec)
    if bounds and not select:
        lo, hi = bounds
        if hi < lo:
            raise ObservationError(f"observation range {spec!r}: the end is before the start")
        return range(lo, hi + 1)
    path = Path(spec).expanduser()
    index = _index_of(path) if path.is_file() else None
    if index is not None:
        return list(index.read(path, **dict(select or {})))
    if select:
        raise _not_an_index(spec)
    if path.is_file() and path.suffix in LIST_SUFFIXES:
        return read_list(path)
    if globmod.has_magic(spec):
        matches = sorted_glob(os.path.abspath(path))
        if not matches:
            raise ObservationError(f"no file matches {spec!r}; check the pattern and the directory")
        # absolute and normalized already: build the observations directly (100,000s of them)
        ids = [m.rpartition("/")[2] for m in matches]
        return list(map(tuple.__new__, repeat(Observation), zip(ids, matches, repeat("file"))))
    if path.is_dir():
        raise ObservationError(_directory_hint(spec, path))
    return [str(path)]


def _directory_hint(spec: str, path: Path) -> str:
    """What to give instead of the directory ``spec``: its obs-index, or a glob of its files."""
    base = spec.rstrip("/") or "/"
    for index in observation_indexes():
        for name in index.names:
            if (path / name).is_file():
                return (
                    f"observations {spec!r} is a directory; give its {index.format} index "
                    f"'{base}/{name}' (the observations it lists), or a glob such as "
                    f"'{base}/*{index.members}'"
                )
    suffixes: dict[str, int] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name[0] != "." and entry.is_file():
                suffix = "".join(Path(entry.name).suffixes[-2:]) or "*"
                suffixes[suffix] = suffixes.get(suffix, 0) + 1
    if suffixes:
        common = max(suffixes, key=lambda k: suffixes[k])
        pattern = f"{base}/*{common}" if common != "*" else f"{base}/*"
        found = f"it holds {sum(suffixes.values())} file(s)"
    else:
        pattern, found = f"{base}/*.fits.gz", "it holds no files"
    return (
        f"observations {spec!r} is a directory ({found}); give a glob of the files "
        f"to process, e.g. '{pattern}', or a list file (.txt, one path a line)"
    )


def as_observations(
    spec: Any,
    *,
    select: Mapping[str, Any] | None = None,
    input_storage_options: Mapping[str, Any] | None = None,
    facility: str = "local",
) -> Sequence[Observation]:
    """The observation list for ``spec``: a list, or :class:`RunNumbers` for run numbers.

    ``spec`` may be a glob (``"runs/*.fits.gz"``), a list file (``.txt``/``.lst``/``.list``,
    one path or URL a line, ``#`` comments, relative paths taken from the list's
    directory), an observation index of a registered format (the observations it lists,
    see :func:`observation_indexes`; e.g. a GADF ``obs-index.fits[.gz]``), an inclusive
    integer range ``"1..100"``, a ``range``, or a sequence of paths, URLs, values and
    :class:`Observation` objects. Any of these may be a URL fsspec opens
    (``s3://bucket/runs/*.fits.gz``, ``https://host/obs-index.fits.gz``): globs are
    listed and indexes read through fsspec with ``input_storage_options`` (see
    :mod:`esap_dask.engine.remote`; ``facility`` gives the default options of S3).

    ``select``: keep only the observations of an index that match, e.g.
    ``{"target": "Crab", "zenith": (0, 40)}``; the index reader defines the keys
    (GADF: :func:`esap_dask.iact.gadf.select_observations`).

    Raises
    ------
    ObservationError
        When the list is empty, or when two observations share an id (naming both).
    SelectionError
        When ``select`` is given for something that is not an index, or names a key or
        value the index reader refuses.
    """
    items: Iterable[Any]
    if isinstance(spec, (str, os.PathLike)):
        items = _expand(os.fspath(spec), select, input_storage_options, facility)
    elif select:
        raise _not_an_index(repr(spec)[:80])
    elif isinstance(spec, Observation):
        items = [spec]
    elif isinstance(spec, Iterable):
        items = spec
    else:
        raise ObservationError(
            f"observations must be a glob, a list file, a range or a sequence, not {spec!r}"
        )
    if isinstance(items, range) and len(items):  # run numbers, unique by construction
        return RunNumbers(items)
    if isinstance(items, (list, tuple)) and items and all(type(x) is int for x in items):
        numbers = tuple(items)
        if len(set(numbers)) == len(numbers):  # else the general path names the duplicate
            return RunNumbers(numbers)
    observations = _absolute_paths(items) or list(map(_observation, items))
    if not observations:
        raise ObservationError(f"the observation list {spec!r} is empty")
    check_unique(observations)
    check_text(observations)
    return observations


def _absolute_paths(items: Iterable[Any]) -> list[Observation] | None:
    """The observations of a list of absolute, normal local paths (``str``); else None.

    What :meth:`Observation.of` makes of each, checked on the joined text instead of path
    by path: none is a URL (``://``) or holds ``/.`` (those go through ``abspath``), and
    each starts with ``/``. A glob's or a list file's paths, a notebook's list of files:
    13.1 against 27.0 ms for 10,000 (``python -m bench.planning``, load 2.8).
    """
    if not isinstance(items, list) or not items or type(items[0]) is not str:
        return None
    if not all(type(x) is str for x in items):
        return None
    joined = "\0".join(items)
    if (
        "://" in joined
        or "/." in joined
        or joined[0] != "/"
        or joined.count("\0/") != len(items) - 1  # each starts with "/" (and none holds NUL)
    ):
        return None
    make = tuple.__new__
    return [make(Observation, (p.rpartition("/")[2], p, "file")) for p in items]


def _value(ident: str, value: Any) -> Observation:
    return tuple.__new__(Observation, (ident, value, "value"))


def _observation(item: Any) -> Observation:
    """:meth:`Observation.of`, run numbers and observations first (the usual lists)."""
    kind = type(item)
    if kind is int:
        return _value(str(item), item)
    return item if kind is Observation else Observation.of(item)


def check_text(observations: Sequence[Observation]) -> None:
    """Raise ObservationError naming the first observation whose name or path is not text.

    The store keeps ids and locations as UTF-8. A file name that is not valid UTF-8 (bytes
    of another encoding) reaches Python with surrogates in it, and the run stopped with a
    ``UnicodeEncodeError`` traceback from zarr while it created the store. Checked on the
    joined texts first: one encode for the whole list.
    """
    ids = "\0".join(o.id for o in observations)
    sources = "\0".join(str(o.value) for o in observations)
    try:
        ids.encode()
        sources.encode()
        return
    except UnicodeEncodeError:
        pass
    for obs in observations:
        for text in (str(obs.value), obs.id):  # the path first: it says where
            try:
                text.encode()
            except UnicodeEncodeError:
                shown = os.fsencode(text).decode("utf-8", "backslashreplace")
                raise ObservationError(
                    f"{shown}: this observation's name is not valid UTF-8 (a file name in "
                    "another encoding); the store keeps names and paths as UTF-8 text: rename "
                    "the file (e.g. convmv -f latin1 -t utf8), then run again"
                ) from None


def check_unique(observations: Sequence[Observation]) -> None:
    """Raise ObservationError naming the first two observations that share an id."""
    if len({obs.id for obs in observations}) == len(observations):
        return
    seen: dict[str, Observation] = {}
    for obs in observations:
        first = seen.setdefault(obs.id, obs)
        if first is not obs:
            raise ObservationError(
                f"duplicate observation id {obs.id!r}: {first.value!r} and {obs.value!r}; "
                "observation ids (file names) must be unique within a store"
            )


#: Files up to this size are hashed from one read into fresh bytes; larger ones through
#: a buffer each thread keeps (:func:`_read_buffer`). Dask's nanny starts workers with
#: ``MALLOC_MMAP_THRESHOLD_=16777216`` and ``MALLOC_TRIM_THRESHOLD_=65536``: the fresh
#: bytes of a large file come from the top of the heap, their release hands that top back
#: to the system, and the next file's bytes fault their pages in again. Under that
#: environment (``python -m bench.checksums --size 600000 --files 200``, load 0.6-0.8,
#: 2026-11-28) a 600 kB file took 834 µs to check, read and hash with fresh bytes against
#: 515 µs through the kept buffer; 200 kB 263 against 196 µs (``--size 200000``); the two
#: were level at 130 kB and below. Above 1 MiB ``hashlib.file_digest`` (the way before)
#: allocates 256 KiB a call: 2.78 against 2.54 ms at 3 MB (``--size 3000000 --files 60``).
SMALL_FILE = 128 * 1024
#: Bytes of each thread's read buffer for files above :data:`SMALL_FILE`.
READ_BUFFER = 1 << 20

_BUFFERS = threading.local()


def _read_buffer() -> memoryview:
    """This thread's buffer of :data:`READ_BUFFER` bytes (made on its first large file)."""
    buffer: memoryview | None = getattr(_BUFFERS, "buffer", None)
    if buffer is None:
        buffer = _BUFFERS.buffer = memoryview(bytearray(READ_BUFFER))
    return buffer


def sha256_file(path: str) -> str:
    """SHA-256 of a file's content, hex (see :func:`sha256_fd`)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sha256_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def sha256_fd(fd: int, size: int) -> str:
    """SHA-256 of the content of the open file ``fd`` (``size`` bytes by its ``fstat``), hex.

    A file of up to :data:`SMALL_FILE` bytes is hashed from one ``os.read`` on the
    descriptor (then read on to its end, if it grew since its ``fstat``), a larger one
    through this thread's buffer (:func:`_read_buffer`; see :data:`SMALL_FILE` for why).
    ``hashlib.file_digest`` allocates 256 KiB a call, and a Python file object costs its
    own: measured on this project's 2-core machine (Python 3.11), ``file_digest`` took 35
    µs per 2 kB file against 18 µs for a read loop (load 6-8), one ``open(...).read()`` 20
    µs; with the check of the input, a ``stat`` then ``open(...).read()`` took 13.2 µs per
    100-byte file, one descriptor 7.1 µs (``python -m bench.checksums``, load 0.3-1.4;
    15.4 against 8.6 µs at 2 kB), which a run of 10,000 tiny files pays on every checksum.
    """
    if size > SMALL_FILE:
        buffer, digest = _read_buffer(), hashlib.sha256()
        while n := os.readv(fd, [buffer]):  # to the end, whatever its fstat said
            digest.update(buffer[:n])
        return digest.hexdigest()
    data = os.read(fd, size + 1)
    digest = hashlib.sha256(data)
    if len(data) == size:  # all of it, as its fstat said: no second read to see the end
        return digest.hexdigest()
    while chunk := os.read(fd, READ_CHUNK):  # it grew, or shrank, since its fstat
        digest.update(chunk)
    return digest.hexdigest()


def fingerprints(
    observations: Sequence[Observation],
    *,
    content: bool = False,
    input_options: Mapping[str, Mapping[str, Any]] | None = None,
    new_store: bool = False,
) -> Sequence[str]:
    """The :func:`fingerprint` of each observation, in order (computed when read for
    :class:`RunNumbers`; for a ``new_store`` of local files, :class:`TakenByWorkers`).

    Local files are stat'ed in one tight loop (a rerun over 100,000 unchanged files
    is mostly these calls); URLs are asked for their ETag, size and last-modified
    time through fsspec, with ``input_options`` (by protocol, see
    :func:`esap_dask.engine.remote.input_options`); the others go through
    :func:`fingerprint`.
    """
    if isinstance(observations, RunNumbers):  # values: the same hash with content=True
        return observations.fingerprints()
    if new_store and all(o.kind == "file" for o in observations):
        taken = ContentTakenByWorkers if content else TakenByWorkers
        return taken(observations)
    urls = [o.value for o in observations if o.kind == "url"]
    if urls:
        from esap_dask.engine.remote import url_fingerprints

        remote = iter(url_fingerprints(urls, input_options))
        local = iter(fingerprints([o for o in observations if o.kind != "url"], content=content))
        return [next(remote) if o.kind == "url" else next(local) for o in observations]
    if content:
        return [fingerprint(o, content=True) for o in observations]
    result: list[str] = []
    append, stat_of = result.append, os.stat
    for obs in observations:
        if obs.kind == "value":  # run numbers: fingerprint()'s other kinds not tried first
            append(_value_fingerprint(obs.value))
            continue
        if obs.kind != "file":
            append(fingerprint(obs))
            continue
        try:
            st = stat_of(obs.value)
        except OSError:
            append(fingerprint(obs))  # missing or unreadable: say which
            continue
        append(stat_fingerprint(st))
    return result


def fingerprint(obs: Observation, *, content: bool = False) -> str:
    """A short string that changes when the observation changes.

    Files: ``"<size>-<mtime_ns>"`` (``"sha256:<hex>"`` with ``content=True``), or
    ``"missing"``/``"directory"``. URLs: ETag, size and last-modified time (see
    :func:`esap_dask.engine.remote.url_fingerprints`). Values: a hash of their ``repr``.
    """
    if obs.kind == "file":
        try:
            st = os.stat(obs.value)
        except FileNotFoundError:
            return "missing"
        except OSError as err:
            return f"unreadable:{err.errno}"
        if content and not stat.S_ISDIR(st.st_mode):
            return "sha256:" + sha256_file(obs.value)
        return stat_fingerprint(st)
    if obs.kind == "url":
        from esap_dask.engine.remote import url_fingerprints

        return url_fingerprints([str(obs.value)], None)[0]
    return _value_fingerprint(obs.value)


def _value_fingerprint(value: Any) -> str:
    return "value:" + hashlib.sha256(repr(value).encode()).hexdigest()[:16]
