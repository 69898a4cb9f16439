"""The observation mapper: one pipeline over many observations into one Zarr store.

Data flow of one run::

    observation list -> fingerprints -> ledger diff (what must run)
      -> batches aligned to the store's write units -> tasks on Dask workers
      -> each task writes its rows (products, then ledger)
      -> the driver collects small reports -> summary, provenance

The driver holds the store lock for the whole run, never gathers product
arrays, and starts no cluster when the ledger says there is nothing to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, overload

import dask.config
import zarr

import esap_dask.config  # noqa: F401 - Dask's configuration paths, for the receipt
from esap_dask.catalogs.workflows import get_pipeline, pipeline_dirs
from esap_dask.deploy.protocol import worker_jobs
from esap_dask.engine import provenance, receipt
from esap_dask.engine.execute import execute, gc_paused, nthreads
from esap_dask.engine.handle import RunHandle
from esap_dask.engine.ledger import (
    ARRAYS,
    COLUMNS,
    Ledger,
    Plan,
    fill_given_up,
    fill_last_errors,
    plan,
    read_ledger,
    reopen,
)
from esap_dask.engine.migrate import migrate
from esap_dask.engine.observations import (
    Observation,
    RunNumbers,
    as_observations,
    fingerprints,
)
from esap_dask.engine.remote import input_options
from esap_dask.engine.summary import RunSummary, summarise
from esap_dask.engine.task import BatchReport, RunContext, call_on
from esap_dask.pipeline import Pipeline, Schema, SchemaError, infer_schema, parameter_hash
from esap_dask.store import (
    ANOTHER_STORE,
    StoreError,
    StoreLayout,
    append_observations,
    check_schema,
    disk_errors,
    repair,
)
from esap_dask.store.run import RunStore

__all__ = ["RunSummary", "choose_layout", "map_observations"]

#: Target uncompressed size of one chunk (of all products and the ledger of its rows), in
#: bytes. A run pays zarr's cost per chunk of every array (about 0.5-1 ms each): at 100,000
#: tiny observations, 32 MiB chunks (8 write units) against 8 MiB (13) took 0.905 s against
#: 0.968, and 2,000 realistic files 22.1 s against 23.7 (interleaved A/B, medians of 10 and
#: 3 runs, load 2.0-2.5). A task buffers at most one unit, or ``FLUSH_BYTES``, of products.
CHUNK_BYTES = 32 * 2**20
#: Write units of a new store's first run, per thread (at most; see :func:`choose_layout`).
#: Two a thread ran 10,000 tiny observations 20% faster and 105 H.E.S.S. files 5% (fewer
#: chunks, no probes), but doubled what a cancel waits for and a lost worker loses on a
#: long run of few threads: not taken (docs/benchmarks/profiles.md, session 8).
UNITS_PER_THREAD = 4


def choose_layout(
    schema: Schema,
    n_obs: int,
    nthreads: int,
    *,
    chunk: int | None = None,
    shard: int | None = None,
) -> StoreLayout:
    """The chunk (and shard) size along ``obs`` for a new store.

    By default a chunk holds about :data:`CHUNK_BYTES` of products, but no more
    than a fair share of the first run (``n_obs / (4 * nthreads)``, :data:`UNITS_PER_THREAD`)
    so that every thread gets work, and the first tasks can be timed before the rest are
    sized (:func:`esap_dask.engine.execute.execute`). With ``shard`` and no ``chunk``,
    chunks are about a tenth of a shard, so one observation can be read without reading
    the whole shard.
    """
    per_obs = schema.bytes_per_observation() + 64 * len(COLUMNS)  # the ledger, as ever
    by_bytes = max(1, CHUNK_BYTES // per_obs)
    if shard:
        if chunk is None:
            cap = max(1, min(by_bytes, shard // 10))
            chunk = max(d for d in range(1, cap + 1) if shard % d == 0)
        return StoreLayout(chunk=chunk, shard=shard)
    if chunk is None:
        share = math.ceil(n_obs / (UNITS_PER_THREAD * max(1, nthreads)))
        chunk = min(by_bytes, max(1, share))
    return StoreLayout(chunk=chunk)


def _function_identity(function: Callable[..., Any]) -> tuple[str, str]:
    """Name and version of a plain function: the version is a hash of its source."""
    name = getattr(function, "__name__", "function")
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        source = name
    return name, hashlib.sha256(source.encode()).hexdigest()[:12]


#: Observations a plain function is tried on to infer its output schema.
INFER_FROM = 3


def _as_pipeline(
    pipeline: Any,
    client: Any,
    obs_list: Sequence[Any],
    in_opts: Mapping[str, Mapping[str, Any]] | None = None,
) -> Pipeline:
    if isinstance(pipeline, Pipeline):
        return pipeline
    if isinstance(pipeline, (str, os.PathLike)):
        return get_pipeline(pipeline)
    if callable(pipeline):
        name, version = _function_identity(pipeline)
        return Pipeline(
            name=name,
            version=version,
            function=pipeline,
            schema=_infer(name, pipeline, client, obs_list, in_opts),
        )
    raise TypeError(f"pipeline must be a Pipeline, a name, a .py path or a function: {pipeline!r}")


def _infer(
    name: str,
    function: Any,
    client: Any,
    obs_list: Sequence[Any],
    in_opts: Mapping[str, Mapping[str, Any]] | None = None,
) -> Schema:
    """The output schema of a plain function, from its results on a few observations.

    The first, middle and last observations run on the cluster: the schema comes
    from the first that succeeds, and results of different shapes or types are an
    error naming both observations (a schema must hold for every observation).
    """
    picks = sorted({0, len(obs_list) // 2, len(obs_list) - 1})[:INFER_FROM]
    futures = [client.submit(call_on, function, obs_list[i], in_opts, pure=False) for i in picks]
    schemas: list[tuple[str, Schema]] = []
    errors: list[str] = []
    for i, fut in zip(picks, futures, strict=True):
        oid = obs_list[i].id
        try:
            schemas.append((oid, infer_schema(name, fut.result())))
        except SchemaError:
            raise
        except Exception as err:
            errors.append(f"{oid}: {type(err).__name__}: {err}")
    if not schemas:
        raise SchemaError(
            f"function {name!r} failed on each observation its output schema was inferred "
            f"from ({'; '.join(errors)}); fix the function or the observations, or declare "
            "its schema with an esap_dask.Pipeline"
        )
    first_id, first = schemas[0]
    for oid, other in schemas[1:]:
        if other.describe() != first.describe():
            raise SchemaError(
                f"function {name!r} returns results of different shapes or types for "
                f"{first_id} and {oid}; return the same shapes for every observation (pad "
                "them), or declare its schema with an esap_dask.Pipeline"
            )
    return first


@contextlib.contextmanager
def _client_for(client: Any, facility: str, notes: list[str]) -> Iterator[Any]:
    """The given client, else the default client, else a cluster of ``facility``.

    Whichever it is becomes the current client of this thread for the run, and a
    cluster that asked for no workers adapts to the load (see
    :func:`esap_dask.engine.connect.ensure_workers`); ``notes`` receives what to say about it.
    """
    from distributed import default_client

    from esap_dask.engine.connect import ensure_workers, facility_client

    if client is None:
        try:
            client = default_client()
        except ValueError:  # no default client: start a cluster of the facility below
            client = None
    if client is not None:  # yielded outside any try: the caller's errors pass through
        note = ensure_workers(getattr(client, "cluster", None))
        if note:
            notes.append(note)
        with client.as_current():
            yield client
        return
    with facility_client(facility, notes=notes) as own, own.as_current():
        yield own


def _cluster_notes(client: Any) -> list[str]:
    """What the client's cluster manager reports (e.g. grid jobs that failed), if it can."""
    jobs = worker_jobs(getattr(client, "cluster", None))
    if jobs is None:
        return []
    try:
        return [str(n) for n in jobs.run_notes()]
    except Exception:
        return []


@overload
def map_observations(
    pipeline: Pipeline | str | Callable[..., Mapping[str, Any]],
    observations: Any,
    store: str | os.PathLike[str],
    *,
    wait: Literal[True] = ...,
    dry_run: Literal[False] = ...,
    **options: Any,
) -> RunSummary: ...


@overload
def map_observations(
    pipeline: Pipeline | str | Callable[..., Mapping[str, Any]],
    observations: Any,
    store: str | os.PathLike[str],
    *,
    wait: Literal[False],
    dry_run: Literal[False] = ...,
    **options: Any,
) -> RunHandle: ...


@overload
def map_observations(
    pipeline: Pipeline | str | Callable[..., Mapping[str, Any]],
    observations: Any,
    store: str | os.PathLike[str],
    *,
    dry_run: Literal[True],
    **options: Any,
) -> Plan: ...


def map_observations(  # type: ignore[misc]  # the overloads name the options as **options
    pipeline: Pipeline | str | Callable[..., Mapping[str, Any]],
    observations: Any,
    store: str | os.PathLike[str],
    *,
    client: Any = None,
    params: Mapping[str, Any] | None = None,
    facility: str = "local",
    force: bool = False,
    content_hash: bool = False,
    chunk: int | None = None,
    shard: int | None = None,
    batch_size: int | None = None,
    progress: bool | Callable[[str], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    input_storage_options: Mapping[str, Any] | None = None,
    select: Mapping[str, Any] | None = None,
    user: str | None = None,
    max_attempts: int | None = None,
    dry_run: bool = False,
    wait: bool = True,
    receipt_for: receipt.Request | None = None,
) -> RunSummary | RunHandle | Plan:
    """Run ``pipeline`` on every observation that needs it and write the results into ``store``.

    Parameters
    ----------
    pipeline
        A :class:`Pipeline`, a catalog name (``"helloworld"``), a path to a ``.py``
        file defining ``pipeline``, or a plain function returning a dict (its schema
        is inferred from its result on the first observation).
    observations
        A glob, a list file, an ``"A..B"`` range, or a sequence of paths, URLs or
        values (see :func:`esap_dask.engine.observations.as_observations`).
    store
        The Zarr store (a path or URL); created on the first run, extended after.
    client
        A ``distributed.Client``; default: the current default client, else a
        cluster of ``facility`` started for this run and closed after it.
    params
        Pipeline parameters by name; the others take their defaults.
    force
        Reprocess every observation, not only new, changed or failed ones.
    content_hash
        Fingerprint files by SHA-256 of their content instead of size and mtime.
    chunk, shard
        Observations per chunk and per shard, for a new store (default: automatic).
    batch_size
        Minimum observations per task (default: automatic: one share a thread, each
        task timing its first write unit; tiny work runs its share in that one task,
        other work in about four tasks a thread, shrinking towards one write unit at
        the end).
    progress
        Show a progress bar (default: when attached to a terminal or a notebook); a
        function instead receives a progress line now and then (a log).
    storage_options
        fsspec options of a URL store (``s3://bucket/run.zarr``); default: the
        facility's ``storage_options`` option, for S3 completed from the
        environment (see :func:`esap_dask.store.options.storage_options_for`).
    input_storage_options
        fsspec options of URL observations (``s3://``, ``https://``, ...): one mapping
        for every URL, or one per protocol (``{"s3": {...}}``); default for S3: the
        facility's ``storage_options``, completed from the environment (see
        :mod:`esap_dask.engine.remote`). Workers copy each URL to a local file for the
        pipeline and remove it after.
    select
        Only the observations of an observation index (``obs-index.fits.gz``) that
        match, e.g. ``{"target": "Crab", "zenith": (0, 40), "obs_id": "23523..23600"}``
        (keys: see :func:`esap_dask.iact.gadf.select_observations`, and docs/observations.md).
    user
        Who runs it, for the provenance record (default: the login name).
    max_attempts
        Give up an observation that failed this many times: it is not tried again
        (unless its input, the parameters or the version change, or ``force``) and
        the summary lists it under ``given_up`` with its last error. Default: retry
        failed observations on every run.
    dry_run
        Plan only: return the :class:`~esap_dask.engine.ledger.Plan` (what would
        run and why, what is given up) without starting a cluster or writing
        anything.
    wait
        Return when the run has ended (the default); with ``False``, return a
        :class:`~esap_dask.engine.handle.RunHandle` at once while the run goes on in a
        thread of this process (``.progress``, ``.result()``, ``.cancel()``).
    receipt_for
        The command line's request (:func:`esap_dask.engine.receipt.request`): a run
        that ends with every observation done records its receipt, so that the same
        command answers an unchanged rerun before importing anything. Every run
        deletes the store's receipt when it takes the lock.

    Returns
    -------
    RunSummary, RunHandle or Plan
        Counts, failures with their messages, the provenance document's path; with
        ``wait=False``, the handle whose ``.result()`` is that summary; with
        ``dry_run=True``, the :class:`~esap_dask.engine.ledger.Plan`.

    Examples
    --------
    >>> summary = map_observations("helloworld", "runs/*.fits", "hello.zarr")  # doctest: +SKIP
    >>> xr.open_zarr("hello.zarr")                                             # doctest: +SKIP
    """
    if not wait and not dry_run:  # a dry run is quick: it returns its plan at once
        arguments = {k: v for k, v in locals().items() if k != "wait"}  # the parameters
        return RunHandle(map_observations, arguments, store=os.fspath(store))
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
    run_store = RunStore.resolve(store, facility=facility, storage_options=storage_options)
    if dry_run:
        obs_list, in_opts = _observations(observations, select, input_storage_options, facility)
        with gc_paused():
            fps = fingerprints(obs_list, content=content_hash, input_options=in_opts)
        return _dry_run(pipeline, obs_list, fps, run_store, params, force, max_attempts)
    store, opts = run_store.url, run_store.storage_options
    run_store.check_writable()
    obs_list, in_opts = _observations(observations, select, input_storage_options, facility)
    run_id = started.strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    migrated: list[str] = []
    with run_store.lock(run_id) as lock:
        _discard_receipt(store)  # whatever this run writes, the last receipt is stale
        group = run_store.open_existing()
        named = isinstance(pipeline, (Pipeline, str, os.PathLike))
        pipe = _as_pipeline(pipeline, None, []) if named else None
        if pipe is not None:
            name, version = pipe.name, pipe.version
        elif callable(pipeline):
            name, version = _function_identity(pipeline)
        else:
            raise TypeError(
                f"pipeline must be a Pipeline, a name, a .py path or a function: {pipeline!r}"
            )
        if group is not None:
            repair(group)
            if migrate(group):  # a store of the earlier layout: its ledger into the subgroup
                note = "moved the store's ledger into its 'ledger' subgroup (the new layout)"
                migrated = [note]
            ledger = read_ledger(group)
            meta = run_store.attrs
            if meta.get("pipeline") != name:
                raise SchemaError(
                    f"{store}: holds products of pipeline {meta.get('pipeline')!r}, not {name!r}",
                    ANOTHER_STORE,
                )
        else:
            ledger = Ledger.empty()
        resolved = pipe.resolve(params) if pipe else dict(params or {})
        deps = _receipt_dependencies(pipe) if receipt_for is not None and pipe else None
        with gc_paused():  # a new store's files are fingerprinted by the tasks that read them
            fps = fingerprints(
                obs_list, content=content_hash, input_options=in_opts, new_store=group is None
            )
            todo = plan(
                obs_list,
                fps,
                ledger,
                param_hash=pipe.parameter_hash(resolved) if pipe else parameter_hash(resolved),
                version=version,
                force=force,
                max_attempts=max_attempts,
            )
        todo.notes[:0] = migrated
        if group is not None:
            fill_given_up(group, todo)
        if lock.took_over is not None:
            held = lock.took_over
            todo.notes.insert(
                0,
                f"took over the lock of a run that is gone (host "
                f"{held.get('host')}, pid {held.get('pid')}, run {held.get('run')})",
            )
        if group is not None and not todo.todo:  # nothing to do: no cluster started
            if migrated:
                run_store.consolidate()
            summary = summarise(store, run_id, name, version, facility, obs_list, todo, [], t0)
            _record_receipt(receipt_for, deps, summary)
            return summary
        client_notes: list[str] = []
        # the tasks render their inputs' provenance there; removed once the run is recorded
        with provenance.task_parts(store, run_id, opts) as parts:
            with _client_for(client, facility, client_notes) as cl:
                if pipe is None:
                    pipe = _as_pipeline(pipeline, cl, obs_list, in_opts)
                    resolved = pipe.resolve(params)
                schema = pipe.output_schema(resolved)
                new = todo.new
                threads = nthreads(cl)
                create: Callable[[], Any] | None = None
                if group is None:  # created by execute while the first tasks run
                    layout = choose_layout(schema, len(obs_list), threads, chunk=chunk, shard=shard)
                    create = functools.partial(
                        _create, run_store, schema, layout, pipe, started, new
                    )
                else:
                    check_schema(group, schema)
                    layout = run_store.layout
                    if len(new):
                        append_observations(group, _ids(new))
                    reopen(group, todo, ledger)  # rows to redo: pending until rewritten
                ctx = RunContext(
                    store=store,
                    pipeline=pipe,
                    params=resolved,
                    param_hash=pipe.parameter_hash(resolved),
                    schema=schema,
                    run_id=run_id,
                    storage_options=opts,
                    unit=layout.unit,
                    input_options=in_opts,
                    provenance_parts=parts,
                )
                known = set(_cluster_notes(cl))
                dashboard = getattr(cl, "dashboard_link", None)
                reports = execute(
                    cl,
                    ctx,
                    group,
                    todo,
                    layout,
                    batch_size,
                    progress,
                    threads=threads,
                    dashboard=dashboard,
                    create=create,
                )
                _raise_store_failure(reports)  # a full disk stops the run (exit 2), not exit 1
                cluster_notes = [n for n in _cluster_notes(cl) if n not in known]
            summary = summarise(
                store, run_id, pipe.name, pipe.version, facility, obs_list, todo, reports, t0
            )
            summary.notes += client_notes + cluster_notes
            summary.dashboard = dashboard
            with gc_paused(), disk_errors(store):
                summary.provenance = provenance.record_run(
                    run_store,
                    summary,
                    ctx,
                    todo.todo,
                    started=started,
                    user=user,
                    max_attempts=max_attempts,
                    reports=reports,
                )  # with the store's consolidated metadata (RunStore.add_run)
        _record_receipt(receipt_for, deps, summary)
        summary.seconds = round(time.perf_counter() - t0, 3)
        return summary


def _ids(new: Sequence[Observation]) -> list[str]:
    """The ids of new observations (run numbers' ids are made here, not kept for the run)."""
    return new.ids() if isinstance(new, RunNumbers) else [o.id for o in new]


def _create(
    run_store: RunStore,
    schema: Schema,
    layout: StoreLayout,
    pipe: Pipeline,
    started: datetime,
    new: Sequence[Observation],
) -> zarr.Group:
    """Create the run's new store, with a row for each of ``new``."""
    return run_store.create(schema, layout, ARRAYS, pipeline=pipe, created=started, ids=_ids(new))


def _discard_receipt(store: str) -> None:
    """Delete the receipt of the store's last complete CLI run (see :mod:`.receipt`)."""
    try:
        receipt.discard(store)
    except OSError as err:
        raise StoreError(
            f"{err.filename}: cannot delete the receipt of the store's last complete run "
            f"({err.strerror}); delete it, then run again (nothing was written)"
        ) from err


def _receipt_dependencies(pipe: Pipeline) -> list[list[Any]]:
    """The files the plan of ``pipe`` depends on, as they are now (before the run)."""
    module = sys.modules.get(getattr(pipe.function, "__module__", ""), None)
    own = getattr(module, "__file__", None)
    return receipt.dependencies([own] if own else [], pipeline_dirs(), dask.config.paths)


def _record_receipt(
    req: receipt.Request | None, deps: list[list[Any]] | None, summary: RunSummary
) -> None:
    """Write the receipt of ``req`` when every observation of the run ended done."""
    complete = summary.ok and summary.succeeded + summary.skipped == summary.total
    if req is None or deps is None or not complete:
        return
    unchanged = dataclasses.replace(
        summary,
        processed=0,
        skipped=summary.total,
        succeeded=0,
        failed=0,
        reasons={},
        notes=[],
        failures=[],
        provenance=None,
        dashboard=None,
        given_up=[],
    )
    receipt.write(req, deps, unchanged.to_dict())


def _observations(
    observations: Any,
    select: Mapping[str, Any] | None,
    input_storage_options: Mapping[str, Any] | None,
    facility: str,
) -> tuple[Sequence[Observation], dict[str, Any]]:
    """The run's observations, and the fsspec options of its URLs."""
    with gc_paused():
        obs_list = as_observations(
            observations,
            select=select,
            input_storage_options=input_storage_options,
            facility=facility,
        )
        numbers = isinstance(obs_list, RunNumbers)
        urls = [] if numbers else [o.value for o in obs_list if o.kind == "url"]
        in_opts = input_options(urls, facility, input_storage_options) if urls else {}
    return obs_list, in_opts


def _dry_run(
    pipeline: Any,
    obs_list: Sequence[Observation],
    fps: Sequence[str],
    run_store: RunStore,
    params: Mapping[str, Any] | None,
    force: bool,
    max_attempts: int | None,
) -> Plan:
    """What a run would do, read from the store without its lock: no cluster, no writes.

    The store is read as it is (a store of the earlier layout is not moved, a store
    cut short is not repaired: the planned rows are those of its committed length).
    """
    if isinstance(pipeline, (Pipeline, str, os.PathLike)):
        pipe = _as_pipeline(pipeline, None, [])
        name, version = pipe.name, pipe.version
        resolved = pipe.resolve(params)
        param_hash = pipe.parameter_hash(resolved)
    elif callable(pipeline):
        name, version = _function_identity(pipeline)
        param_hash = parameter_hash(dict(params or {}))
    else:
        raise TypeError(
            f"pipeline must be a Pipeline, a name, a .py path or a function: {pipeline!r}"
        )
    try:
        group = run_store.open(mode="r")
        meta = run_store.attrs
    except StoreError:
        group, meta = None, {}
    if group is not None and meta.get("incomplete"):
        group = None  # a creation cut short: the run creates the store afresh
    if group is not None and meta.get("pipeline") != name:
        raise SchemaError(
            f"{run_store.url}: holds products of pipeline {meta.get('pipeline')!r}, not {name!r}",
            ANOTHER_STORE,
        )
    ledger = read_ledger(group) if group is not None else Ledger.empty()
    with gc_paused():
        todo = plan(
            obs_list,
            fps,
            ledger,
            param_hash=param_hash,
            version=version,
            force=force,
            max_attempts=max_attempts,
        )
    if group is not None:
        fill_given_up(group, todo)
        fill_last_errors(group, todo)
    return todo


def _raise_store_failure(reports: Sequence[BatchReport]) -> None:
    """Raise the StoreError of a batch that could not write the store (a full disk)."""
    for report in reports:
        for _, kind, message in report.failures:
            if kind == "StoreError":
                said = message.split("StoreError: ", 1)[-1]
                if "has no array 'ledger_" in said:  # a worker writes the earlier layout
                    from importlib.metadata import version

                    said += (
                        "; the workers run an older esap-dask than this driver (they write "
                        "the ledger as ledger_* columns, the store keeps it in its 'ledger' "
                        f"group): install esap-dask {version('esap-dask')} where the workers "
                        "run (the facility's Python or container)"
                    )
                raise StoreError(said)
