"""Provenance of every run: a W3C PROV-JSON document with IVOA Provenance DM terms.

One document per run, written next to the store as
``<store>.provenance/<run id>.json`` and listed in the store's attrs
(``attrs["esap"]["runs"]``). In it:

* the run is a ``prov:Activity`` (``voprov:name``, start and end times, facility,
  summary counts), described by a ``voprov:ActivityDescription`` entity for the
  pipeline (name, version, description);
* each processed input is a used ``prov:Entity`` with its location, fingerprint and
  SHA-256 checksum (computed on the worker that read it);
* each parameter is a ``voprov:Parameter`` entity the run was configured by;
* the store is the generated entity;
* the user is a ``prov:Person`` agent, esap-dask (with the versions of the software
  it ran on) a ``prov:SoftwareAgent``, both associated with the run.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import itertools
import json
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from typing import TYPE_CHECKING, Any

import numpy as np

from esap_dask.engine.provenance_inputs import (
    TEXT_ROWS,
    entity_members,
    parts_url,
    used_members,
)
from esap_dask.store import COMMIT_COLUMN, crash_point

if TYPE_CHECKING:
    from esap_dask.engine.ledger import PlannedRow
    from esap_dask.engine.summary import RunSummary
    from esap_dask.engine.task import BatchReport, RunContext
    from esap_dask.store.run import RunStore

__all__ = ["PREFIXES", "build_document", "encode_document", "record_run", "software_versions"]

PREFIXES = {
    "prov": "http://www.w3.org/ns/prov#",
    "voprov": "http://www.ivoa.net/documents/ProvenanceDM/ns/voprov/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "esap": "urn:esap-dask:",
}
_PACKAGES = (
    "esap-dask",
    "dask",
    "distributed",
    "dask-jobqueue",
    "xarray",
    "zarr",
    "numpy",
    "astropy",
)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on."""
    return dict(_software_versions())


@functools.cache
def _software_versions() -> dict[str, str]:
    """Looked up once a process: reading the packages' metadata took 50 ms of every run."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = pkg_version(name)
        except PackageNotFoundError:
            continue
    return found


def build_document(
    *,
    run_id: str,
    pipeline: Mapping[str, Any],
    params: Mapping[str, Any],
    facility: str,
    store: str,
    started: datetime,
    ended: datetime,
    user: str,
    summary: Mapping[str, Any],
) -> dict[str, Any]:
    """The PROV-JSON document of one run, but for its inputs (see :func:`encode_document`)."""
    run = f"esap:run/{run_id}"
    desc = f"esap:pipeline/{pipeline['name']}/{pipeline['version']}"
    out = f"esap:store/{run_id}"
    person = f"esap:user/{user}"
    software = "esap:software/esap-dask"
    doc: dict[str, Any] = {
        "prefix": dict(PREFIXES),
        "activity": {
            run: {
                "prov:type": "voprov:Activity",
                "voprov:name": f"{pipeline['name']} run {run_id}",
                "prov:startTime": _iso(started),
                "prov:endTime": _iso(ended),
                "esap:facility": facility,
                "esap:summary": json.dumps(dict(summary), sort_keys=True),
            }
        },
        "entity": {
            desc: {
                "prov:type": "voprov:ActivityDescription",
                "voprov:name": pipeline["name"],
                "voprov:version": pipeline["version"],
                "voprov:description": pipeline.get("description", ""),
            },
            out: {
                "prov:type": "voprov:Entity",
                "voprov:name": store.rstrip("/").rsplit("/", 1)[-1],
                "prov:location": store,
                "voprov:content_type": "application/vnd+zarr",
                "prov:generatedAtTime": _iso(ended),
            },
        },
        "agent": {
            person: {"prov:type": "prov:Person", "voprov:name": user},
            software: {
                "prov:type": "prov:SoftwareAgent",
                "voprov:name": "esap-dask",
                "esap:versions": json.dumps(software_versions(), sort_keys=True),
            },
        },
        "used": {},
        "wasGeneratedBy": {
            "_:gen": {"prov:entity": out, "prov:activity": run, "prov:time": _iso(ended)}
        },
        "wasAssociatedWith": {
            "_:assoc-user": {
                "prov:activity": run,
                "prov:agent": person,
                "prov:role": "voprov:operator",
            },
            "_:assoc-software": {"prov:activity": run, "prov:agent": software, "prov:plan": desc},
        },
        "wasAttributedTo": {"_:attr": {"prov:entity": out, "prov:agent": person}},
        "wasInfluencedBy": {},
    }
    for name, value in params.items():
        ent = f"esap:parameter/{run_id}/{name}"
        doc["entity"][ent] = {
            "prov:type": "voprov:Parameter",
            "voprov:name": name,
            "prov:value": value,
        }
        doc["wasInfluencedBy"][f"_:config-{name}"] = {
            "prov:influencee": run,
            "prov:influencer": ent,
            "prov:type": "voprov:wasConfiguredBy",
            "voprov:artefactType": "Parameter",
        }
    return doc


#: Inputs read from the ledger at a time (whole chunks of it, about this many rows): the
#: document of a run over 100,000 files is never whole in memory.
_INPUTS_AT_ONCE = 5000


@contextlib.contextmanager
def task_parts(
    store: str, run_id: str, storage_options: Mapping[str, Any] | None
) -> Iterator[str | None]:
    """The directory of the run's parts (:func:`parts_url`), made now, removed at the end.

    None when it cannot be made: the driver then renders every input itself.
    """
    import fsspec

    url: str | None = parts_url(store, run_id)
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        fs.makedirs(path, exist_ok=True)
    except Exception:
        url = None
    try:
        yield url
    finally:
        if url is not None:
            with contextlib.suppress(Exception):
                fs.rm(path, recursive=True)


class Part:
    """The inputs of one batch as its task rendered them (:func:`write_part`)."""

    def __init__(self, fs: Any, path: str, sizes: tuple[int, int], rows: np.ndarray) -> None:
        self.fs, self.path, self.sizes, self.rows = fs, path, sizes, rows

    def complete(self) -> bool:
        """Whether the file is there, of the size its task reported."""
        try:
            return int(self.fs.size(self.path)) == sum(self.sizes)
        except OSError:
            return False

    def read(self, used: bool, raw: bool = False) -> Iterator[Any]:
        """The entities' members, or with ``used`` the usages', a piece at a time (text,
        or with ``raw`` the file's bytes as they are).

        Pieces of :data:`PART_PIECE` bytes: a part holds a whole batch (37,500 inputs of a
        100,000-observation run, 5 MB of text), and read whole it raised the driver's peak
        RSS at 100,000 tiny observations from 95 to 101 MiB. The text is ASCII (every
        string went through json's ASCII escaper), so any cut decodes.
        """
        left = self.sizes[used]
        with self.fs.open(self.path, "rb") as f:
            if used:
                f.seek(self.sizes[0])
            while left:
                data = f.read(min(left, PART_PIECE))
                if not data:
                    raise OSError(f"{self.path}: ends {left} bytes short")
                left -= len(data)
                yield data if raw else data.decode("ascii")


#: Bytes of a part read at a time (:meth:`Part.read`).
PART_PIECE = 1 << 20


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))  # the C encoder


def _members(mapping: Mapping[str, Any]) -> str:
    """The members of a JSON object, without the braces."""
    return _dumps(mapping)[1:-1]


def encode_document(
    doc: Mapping[str, Any],
    run_id: str,
    inputs: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
    parts: Sequence[Part] = (),
) -> Iterator[str]:
    """The PROV-JSON text of ``doc`` with the run's ``inputs`` added, in pieces.

    ``inputs`` holds equal-length columns ``id``, ``source``, ``fingerprint`` and
    ``checksum`` (or is an iterable of such blocks, consumed once: a run's record reads
    its ledger a block at a time); each input becomes a used ``prov:Entity`` with its
    location, fingerprint and checksum. ``parts`` are inputs the run's tasks rendered
    already (:func:`write_part`), placed before ``inputs``. The pieces joined are one
    JSON object.
    """
    return _pieces(doc, run_id, inputs, parts, raw=False)


def document_bytes(
    doc: Mapping[str, Any],
    run_id: str,
    inputs: Iterable[Mapping[str, np.ndarray]],
    parts: Sequence[Part] = (),
) -> Iterator[bytes]:
    """:func:`encode_document` as bytes, the parts' bytes copied as they are (their text
    decoded, then encoded again, was 4 ms of a 10,000-observation run's 22 ms record)."""
    for piece in _pieces(doc, run_id, inputs, parts, raw=True):
        yield piece if isinstance(piece, bytes) else piece.encode()


def _pieces(
    doc: Mapping[str, Any],
    run_id: str,
    inputs: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
    parts: Sequence[Part],
    raw: bool,
) -> Iterator[Any]:
    run = f"esap:run/{run_id}"
    blocks = _blocks(inputs) if isinstance(inputs, Mapping) else inputs
    rest = {k: v for k, v in doc.items() if k not in ("entity", "used")}
    yield "{" + _members(rest)
    fixed = _members(doc["entity"])
    yield f',"entity":{{{fixed}'
    sep = "," if fixed else ""
    for part in parts:
        yield sep
        yield from part.read(used=False, raw=raw)
        sep = ","
    used: list[np.ndarray] = []  # the ids, for the usages after the entities
    for block in blocks:
        n = len(block["id"])
        for lo in range(0, n, TEXT_ROWS):
            yield sep + entity_members({k: v[lo : lo + TEXT_ROWS] for k, v in block.items()})
            sep = ","
        if n:
            used.append(block["id"])
    fixed = _members(doc["used"])
    yield f'}},"used":{{{fixed}'
    sep = "," if fixed else ""
    for part in parts:
        yield sep
        yield from part.read(used=True, raw=raw)
        sep = ","
    for ids in used:
        for lo in range(0, len(ids), TEXT_ROWS):
            yield sep + used_members(run, ids[lo : lo + TEXT_ROWS])
            sep = ","
    yield "}}"


def _blocks(inputs: Mapping[str, np.ndarray]) -> Iterator[Mapping[str, np.ndarray]]:
    n = len(inputs["id"])
    for lo in range(0, n, _INPUTS_AT_ONCE):
        yield {k: v[lo : lo + _INPUTS_AT_ONCE] for k, v in inputs.items()}


def _input_blocks(
    group: Any, todo: Sequence[PlannedRow], recorded: bool
) -> Iterator[Mapping[str, np.ndarray]]:
    """The inputs of the run that planned ``todo``, a block of rows at a time, in row order.

    A planned row is an input when its ledger row is committed (done or failed): the
    driver marked every planned row pending before the first task
    (:func:`esap_dask.engine.ledger.reopen`), so a committed one was committed by this run,
    and a cancelled run's rows that never started are still pending. The ledger is read
    one block of rows at a time: read whole, the columns of a 100,000-observation run held
    25 MiB of the driver's memory while the document was written (tracemalloc). Only
    ``status`` (one byte a row) is read, ``checksum`` when inputs are files or URLs, and the
    fingerprints when ``recorded`` (those the workers computed: of plain values, and of a
    new store's files): reading the run id as well decoded the ledger's ``record`` strings
    (seven fields a row) for every run.
    """
    from esap_dask.engine.ledger import PENDING, NewRows, column_reader
    from esap_dask.engine.observations import RunNumbers

    if isinstance(todo, NewRows):  # in row order already; read by column, no row objects
        rows = np.arange(todo.start, todo.start + len(todo), dtype=np.int64)
        order = np.arange(len(todo))
        observations, fingerprints = todo.observations, todo.fingerprints
    else:
        rows = np.fromiter((entry.row for entry in todo), dtype=np.int64, count=len(todo))
        order = np.argsort(rows, kind="stable")
        observations = [entry.observation for entry in todo]
        fingerprints = [entry.fingerprint for entry in todo]
    if not len(order):
        return
    numbers = observations.values if isinstance(observations, RunNumbers) else None
    files = numbers is None and any(o.kind != "value" for o in observations)
    names = ["status", *(["checksum"] if files else []), *(["fingerprint"] if recorded else [])]
    read = column_reader(group, names)
    block = _block_rows(group)
    keys = rows[order] // block
    cuts = [0, *(np.flatnonzero(np.diff(keys)) + 1).tolist(), len(order)]
    for lo, hi in itertools.pairwise(cuts):
        part = order[lo:hi]
        r = rows[part]
        first = int(r[0])
        cols = read(slice(first, int(r[-1]) + 1))
        local = r - first
        ran = np.flatnonzero(cols["status"][local] != PENDING)  # committed by this run
        done = part[ran].tolist()
        if numbers is not None:  # a run number's id and location are its text
            ids = np.asarray([str(numbers[k]) for k in done], dtype=object)
            sources = ids
        else:
            ids = np.asarray([observations[k].id for k in done], dtype=object)
            sources = np.asarray([str(observations[k].value) for k in done], dtype=object)
        yield {  # what the driver knows; the checksums were computed by the workers
            "id": ids,
            "source": sources,
            "fingerprint": (
                cols["fingerprint"][local[ran]].astype(object)
                if recorded
                else np.asarray([fingerprints[k] for k in done], dtype=object)
            ),
            "checksum": (
                cols["checksum"][local[ran]].astype(object)
                if files
                else np.full(len(done), "", dtype=object)
            ),
        }


def _block_rows(group: Any) -> int:
    """Rows of the ledger one block of inputs reads: whole chunks, about _INPUTS_AT_ONCE.

    A block that ends inside a chunk decodes that chunk twice (at 100,000 tiny
    observations in chunks of 12,500, blocks of 5,000 decoded every chunk 2.5 times).
    """
    try:
        chunk = int(group[COMMIT_COLUMN].chunks[0])
    except KeyError:  # the earlier layout: no ledger group
        return _INPUTS_AT_ONCE
    return chunk * max(1, round(_INPUTS_AT_ONCE / chunk))


def _parts(fs: Any, directory: str | None, reports: Sequence[BatchReport]) -> list[Part]:
    """The complete parts the run's tasks wrote, in row order."""
    if directory is None:
        return []
    found = [
        Part(fs, f"{directory}/{r.index}", r.part, r.rows)
        for r in reports
        if r.part is not None and r.rows is not None and len(r.rows)
    ]
    found.sort(key=lambda p: int(p.rows[0]))
    return [p for p in found if p.complete()]


def _not_in_parts(todo: Sequence[PlannedRow], parts: Sequence[Part]) -> Sequence[PlannedRow]:
    """The planned rows that no part covers (their inputs are read from the ledger)."""
    if not parts:
        return todo
    from esap_dask.engine.ledger import NewRows

    done = np.concatenate([p.rows for p in parts])
    if isinstance(todo, NewRows):  # consecutive rows: a mask, not a search (np.isin took
        # 1.5 ms of a 10,000-observation run's 22 ms record)
        span = todo.rows
        covered = np.zeros(len(span), dtype=bool)
        covered[done[(done >= span.start) & (done < span.stop)] - span.start] = True
    else:
        rows = np.fromiter((entry.row for entry in todo), dtype=np.int64, count=len(todo))
        covered = np.isin(rows, done)
    if covered.all():
        return []
    return [todo[int(k)] for k in np.flatnonzero(~covered)]


def record_run(
    run_store: RunStore,
    summary: RunSummary,
    ctx: RunContext,
    todo: Sequence[PlannedRow],
    *,
    started: datetime,
    user: str | None = None,
    max_attempts: int | None = None,
    reports: Sequence[BatchReport] = (),
) -> str:
    """Write the run's PROV-JSON next to the store and list it in the store's attrs.

    ``todo`` holds the run's planned rows (:attr:`esap_dask.engine.ledger.Plan.todo`); those
    whose ledger row names this run are its inputs. The inputs of the ``reports`` whose
    tasks rendered them (:func:`write_part`) are joined as they are; the others are read
    from the ledger. Returns the document's path (``<store>.provenance/<run id>.json``).
    """
    group, store, storage_options = run_store.group, run_store.url, run_store.storage_options
    ended = datetime.now(UTC)
    user = user or getpass.getuser()
    counts = {k: getattr(summary, k) for k in ("total", "processed", "skipped", "failed")}
    doc = build_document(
        run_id=summary.run_id,
        pipeline={
            "name": ctx.pipeline.name,
            "version": ctx.pipeline.version,
            "description": ctx.pipeline.description,
        },
        params=ctx.params,
        facility=summary.facility,
        store=store,
        started=started,
        ended=ended,
        user=user,
        summary=counts,
    )
    path = f"{store.rstrip('/')}.provenance/{summary.run_id}.json"
    import fsspec  # here: an unchanged rerun writes no provenance, and needs no fsspec

    from esap_dask.engine.observations import TakenByWorkers, ValueFingerprints

    fs, fs_path = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
    directory = ctx.provenance_parts
    parts_path = (
        fsspec.core.url_to_fs(directory, **dict(storage_options or {}))[1] if directory else None
    )
    parts = _parts(fs, parts_path, reports)
    # the rows no part covers. Values' fingerprints are computed when read, and a new
    # store's files' were taken by the tasks: the ledger has them, as the workers computed
    # them (one decode of a chunk instead of a hash or a stat per input)
    recorded = isinstance(getattr(todo, "fingerprints", None), (ValueFingerprints, TakenByWorkers))
    rest = _input_blocks(group, _not_in_parts(todo, parts), recorded)
    with fs.open(fs_path, "wb") as f:
        for piece in document_bytes(doc, summary.run_id, rest, parts):
            f.write(piece)
            crash_point("provenance")  # test hook (ESAP_DASK_CRASH_AT), a no-op when unset
    run_store.add_run(
        {
            "run": summary.run_id,
            "started": _iso(started),
            "ended": _iso(ended),
            "user": user,
            "facility": summary.facility,
            "params": dict(ctx.params),
            "version": ctx.pipeline.version,
            "provenance": path,
            **({"max_attempts": max_attempts} if max_attempts is not None else {}),
            **counts,
        }
    )
    return path
