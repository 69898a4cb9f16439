"""The receipt of a complete run: an unchanged ``esap-dask run`` answered before any import.

Run from cron over 10,000 files that did not change, ``esap-dask run`` took 0.64 s, of
which 0.5 s was starting Python and importing Dask, numpy and zarr to read the ledger
and find nothing to do (``python -m bench.cli_rerun``: 19% of a first run of 3.35 s,
where the goal was 5%). This module answers that case with the standard library only.

A run of the command line that ends with every observation done (none failed, none
given up) writes a *receipt* beside the store, ``<store>.receipt.json``, under the
store's lock:

- a digest of the request, taken before the run: the command's arguments, the working
  directory, the environment's ``DASK_*`` and ``ESAP_*`` variables, and the inputs as
  found then (the path, type, size and modification time of every file the glob
  matches or the list file names, and the list file's own state; or the range's bounds);
- the files the plan depends on, with their state (inode, size, mtime) taken when the
  run started: esap-dask's own modules, the pipeline directories and every module in
  them, the pipeline's own module, Dask's configuration files and directories, and the
  directories of ``sys.path`` (where entry points are installed);
- the state of the store's metadata (``zarr.json`` of the store and of its ledger)
  after the run, and the summary an unchanged rerun prints.

The next ``esap-dask run`` computes the same request digest and, when the receipt holds
it, the store is not locked, and every recorded state is still the same, prints that
summary and exits 0. Anything else runs the command as before, which plans from the
ledger: a new, removed or touched file, other parameters, an edited pipeline or
configuration, another esap-dask, a lock held, a store written since. Every run that
takes the store's lock (a notebook's ``map_observations``, a job of the service, the
CLI) deletes the receipt first, so a receipt never outlives a change esap-dask makes to
the store; a receipt is never written by a run that had failures.

Only requests the standard library can plan qualify: a local store, and observations
given as a glob of local files, a list file of local paths (``.txt``, ``.lst``, ``.list``)
or an integer range, without ``--force``, ``--content-hash``, ``--select`` or storage
options. Observation indexes (``obs-index.fits.gz``) are read by their readers (astropy),
and URLs are asked for their ETags: those requests run as before.
"""

from __future__ import annotations

import contextlib
import glob as globmod
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from esap_dask.engine.globbing import LIST_SUFFIXES, parse_range, read_list, sorted_glob

__all__ = ["FORMAT", "SUFFIX", "Request", "answer", "dependencies", "discard", "request", "write"]

#: Changes whenever what a receipt records changes: an older receipt never matches.
FORMAT = 2
#: The receipt's file, beside the store (as its ``.lock`` and ``.provenance``).
SUFFIX = ".receipt.json"
#: Environment variables that may change a plan (Dask's configuration, esap-dask's own).
ENV_PREFIXES = ("DASK_", "ESAP_")


class Request(NamedTuple):
    """What a command asks, as a digest, and the local store it asks it of."""

    digest: str
    store: str


def local_store(store: str) -> str | None:
    """The absolute path of a local store (as :class:`~esap_dask.store.run.RunStore` makes
    it), None for a URL store."""
    if "://" in store and not store.startswith("file://"):
        return None
    return os.path.abspath(os.path.expanduser(store.removeprefix("file://")))


def _state(path: str) -> list[int] | None:
    """What changes when ``path`` is written, replaced, created or removed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _inputs(spec: str) -> str | None:
    """A digest of the observations ``spec`` names, or None when only a run can plan them."""
    bounds = parse_range(spec)
    if bounds is not None:
        return f"range:{bounds[0]}..{bounds[1]}" if bounds[0] <= bounds[1] else None
    path = os.path.expanduser(spec)
    if "://" in spec:
        return None
    if os.path.isfile(path):  # a list file; an index, or one file, is read by the run
        if Path(path).suffix not in LIST_SUFFIXES:
            return None
        entries = read_list(Path(path))
        if not entries or any("://" in e for e in entries):
            return None  # empty (the run says so), or URLs: asked for their ETags by the run
        listed = [os.path.abspath(e) for e in entries]
        return f"list:{os.path.abspath(path)}:{_state(path)}:{_files(listed)}"
    if not globmod.has_magic(spec):
        return None
    matches = sorted_glob(os.path.abspath(path))
    if not matches:
        return None  # the run says which pattern matched nothing
    return f"glob:{_files(matches)}"


def _files(names: Sequence[str]) -> str:
    """A digest of the path, type, size and modification time of each file of ``names``."""
    digest = hashlib.sha256()
    stat_of = os.stat
    for name in names:
        try:
            st = stat_of(name)
            line = f"{name}\0{st.st_mode >> 12}\0{st.st_size}\0{st.st_mtime_ns}\n"
        except OSError as err:
            line = f"{name}\0error {err.errno}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return f"{len(names)}:{digest.hexdigest()}"


def request(
    pipeline: str,
    observations: str,
    store: str,
    *,
    facility: str,
    params: Mapping[str, str],
    options: Mapping[str, Any],
) -> Request | None:
    """The command's :class:`Request`, or None when it does not qualify for a receipt.

    ``options`` are the command's other options that may change what it does
    (``chunk``, ``shard``, ``batch_size``, ``max_attempts``).
    """
    path = local_store(store)
    if path is None:
        return None
    try:
        inputs = _inputs(observations.removeprefix("file://"))
        cwd = os.getcwd()
    except (OSError, ValueError):  # an unreadable list, a cwd gone: the run says what is wrong
        return None
    if inputs is None:
        return None
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIXES))
    what = {
        "format": FORMAT,
        "pipeline": pipeline,
        "pipeline-file": os.path.abspath(pipeline) if pipeline.endswith(".py") else None,
        "observations": observations,
        "cwd": cwd,
        "store": path,
        "facility": facility,
        "params": sorted(params.items()),
        "options": sorted(options.items()),
        "env": env,
        "python": sys.executable,
        "inputs": inputs,
    }
    canonical = json.dumps(what, sort_keys=True, default=str).encode("utf-8", "surrogateescape")
    return Request(hashlib.sha256(canonical).hexdigest(), path)


def _receipt_path(store: str) -> str | None:
    path = local_store(store)
    return None if path is None else path + SUFFIX


def _store_state(path: str) -> list[list[int] | None]:
    return [_state(f"{path}/zarr.json"), _state(f"{path}/ledger/zarr.json")]


#: What a directory of :data:`sys.path` holds that can change entry points (pipelines).
INSTALLED = (".dist-info", ".egg-info", ".egg-link", ".pth")
#: Dask's configuration files (``dask.config.collect`` reads these).
CONFIG_FILES = (".yaml", ".yml", ".json")


def _names(directory: str, suffixes: Sequence[str]) -> str | None:
    """A digest of the names in ``directory`` that end with one of ``suffixes``.

    Names, not the directory's mtime: a run creates and removes its lock beside the
    store, and Python its ``__pycache__``, in directories that may be on these lists.
    """
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(tuple(suffixes)))
    except OSError:
        return None
    return hashlib.sha256("\0".join(names).encode("utf-8", "surrogateescape")).hexdigest()


def _current(path: str, suffixes: Sequence[str] | None) -> Any:
    """The state of a file (``suffixes`` None) or of a directory's names."""
    return _state(path) if suffixes is None else _names(path, suffixes)


def dependencies(
    pipeline_files: Iterable[str | os.PathLike[str]],
    pipeline_dirs: Iterable[str | os.PathLike[str]],
    config_dirs: Sequence[str],
) -> list[list[Any]]:
    """The files and directories a plan depends on, with their states now.

    Each is ``[path, suffixes, state]``: a file's state (``suffixes`` None), or the
    digest of the names in a directory that end with ``suffixes`` (files added or
    removed). See the module's docstring for what is listed.
    """
    package = Path(__file__).resolve().parents[1]
    files: list[str] = [str(p) for p in sorted(package.rglob("*.py"))]
    files += [str(p) for p in sorted(package.glob("*.yaml"))]
    listings: list[tuple[str, Sequence[str]]] = []
    for directory in pipeline_dirs:
        listings.append((os.fspath(directory), [".py"]))
        files += [str(p) for p in sorted(Path(directory).glob("*.py"))]
    files += [os.fspath(p) for p in pipeline_files]
    for directory in config_dirs:
        listings.append((directory, list(CONFIG_FILES)))
        if os.path.isdir(directory):
            files += [str(p) for p in sorted(Path(directory).iterdir()) if p.is_file()]
    listings += [(p, list(INSTALLED)) for p in dict.fromkeys(sys.path) if p and os.path.isdir(p)]
    entries: list[list[Any]] = [[p, None, _state(p)] for p in dict.fromkeys(files)]
    entries += [[d, list(suffixes), _names(d, suffixes)] for d, suffixes in listings]
    return entries


def discard(store: str) -> None:
    """Delete the store's receipt: called by every run that holds the store's lock."""
    path = _receipt_path(store)
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def write(req: Request, deps: list[list[Any]], summary: Mapping[str, Any]) -> bool:
    """Record a complete run's receipt (under the store's lock, after its last write).

    False when it could not be written (a full disk, say): the run's results are kept,
    and the next run is planned from the ledger as if there had never been a receipt.
    """
    path = req.store + SUFFIX
    data = {
        "format": FORMAT,
        "request": req.digest,
        "dependencies": deps,
        "store": _store_state(req.store),
        "summary": dict(summary),
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True


def _unchanged_summary(req: Request) -> dict[str, Any] | None:
    """The summary the store's receipt holds for ``req``, if every state it records holds."""
    with open(req.store + SUFFIX) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if data.get("request") != req.digest or os.path.lexists(req.store + ".lock"):
        return None
    if data.get("store") != _store_state(req.store):
        return None
    deps = data.get("dependencies")
    if not isinstance(deps, list) or not deps:
        return None
    for path, suffixes, state in deps:  # a malformed entry raises ValueError or TypeError
        if _current(path, suffixes) != state:
            return None
    summary = data.get("summary")
    return dict(summary) if isinstance(summary, dict) and summary else None


def answer(req: Request | None, facility: str, started: float) -> dict[str, Any] | None:
    """The summary of an unchanged rerun of ``req``, or None: run the command.

    ``started`` is the command's start (``time.perf_counter()``), for the summary's
    ``seconds``; ``facility`` is the command's.
    """
    if req is None:
        return None
    try:  # a receipt that is unreadable, or not one, answers nothing: the command runs
        summary = _unchanged_summary(req)
    except (OSError, ValueError, TypeError):
        return None
    if summary is None:
        return None
    now = time.gmtime()
    summary.update(
        run_id=time.strftime("%Y%m%dT%H%M%SZ-", now) + os.urandom(4).hex(),
        facility=facility,
        seconds=round(time.perf_counter() - started, 3),
    )
    return summary
