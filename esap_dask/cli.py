"""The ``esap-dask`` command line.

Exit codes: 0 every observation done (and for ``run --dry-run``: the plan was printed);
1 some observations failed; 2 bad usage or bad input (parameters, observation list,
facility, pipeline, store); 3 the store is locked by another run; 4 none failed in this
run, but some were given up (they failed ``--max-attempts`` times and were not tried
again); 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from click.shell_completion import CompletionItem

from esap_dask.errors import for_cli
from esap_dask.extras import extra_of, install_hint

EXIT_FAILED, EXIT_INPUT, EXIT_LOCKED, EXIT_INTERRUPTED = 1, 2, 3, 130
#: ``run``: nothing failed in this run, but observations were given up (``--max-attempts``)
EXIT_GIVEN_UP = 4


class _Console:
    """rich's ``Console``, made on its first use.

    rich's import (0.05 s) is not paid by an unchanged ``run`` answered from its receipt
    (:mod:`esap_dask.engine.receipt`), which prints plain lines. ``quiet`` is kept here
    and handed to the console.
    """

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Any = None
        self.quiet = False

    def _get(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, soft_wrap=True)
        self._console.quiet = self.quiet
        return self._console

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._get().print(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


def escape(text: str) -> str:
    """``text`` with rich's markup escaped (rich imported on first use)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def Table(*args: Any, **kwargs: Any) -> Any:
    """rich's ``Table`` (rich imported on first use)."""
    from rich.table import Table as RichTable

    return RichTable(*args, **kwargs)


out = _Console()
err = _Console(stderr=True)


def _fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(code)


def _input_errors() -> tuple[type[Exception], ...]:
    from esap_dask.catalogs.facilities import FacilityError
    from esap_dask.catalogs.workflows import PipelineNotFound
    from esap_dask.engine.observations import ObservationError
    from esap_dask.pipeline import ParameterError, SchemaError
    from esap_dask.store import StoreError

    return (
        FacilityError,
        ObservationError,
        ParameterError,
        SchemaError,
        StoreError,
        PipelineNotFound,
    )


def _with_extra(message: str, err: BaseException) -> str:
    """``message``, plus the install command when a missing optional extra caused ``err``."""
    found = extra_of(err)
    if found is None or install_hint(found[0]) in message:
        return message
    return f"{message}; {install_hint(found[0])}"


def _lock_held() -> type[Exception]:
    from esap_dask.store.lock import LockHeld  # imports zarr: only once an error is raised

    return LockHeld


def _guarded(action: Callable[[], Any]) -> Any:
    """Run ``action``, turning known errors into a one-line message and an exit code.

    The error classes are imported when an error is raised (an ``except`` clause's
    expression is evaluated then): ``esap-dask pipelines`` does not pay zarr's import.
    """
    try:
        return action()
    except _lock_held() as e:
        _fail(str(e), EXIT_LOCKED)
    except _input_errors() as e:
        _fail(_with_extra(for_cli(e), e))
    except ImportError as e:
        found = extra_of(e)
        if found is None:
            raise
        extra, module = found
        _fail(
            f"this needs the optional extra '{extra}' ({module} is not installed): "
            f"{install_hint(extra)}"
        )
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to finish the work", EXIT_INTERRUPTED)


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--param {pair!r}: expected NAME=VALUE, e.g. --param message=hi")
        params[key.strip()] = value
    return params


def print_summary(summary: Any) -> None:
    """The human summary of a run: counts, reasons, notes, failures, where things are."""
    table = Table(show_header=False, box=None, pad_edge=False)
    for key in ("total", "processed", "skipped", "succeeded", "failed"):
        style = "red" if key == "failed" and summary.failed else ""
        table.add_row(
            key, f"[{style}]{getattr(summary, key)}" if style else str(getattr(summary, key))
        )
    table.add_row("seconds", f"{summary.seconds:.2f}")
    if summary.reasons:
        table.add_row("why", ", ".join(f"{n} {r}" for r, n in sorted(summary.reasons.items())))
    out.print(table)
    for note in summary.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    for f in summary.failures[:20]:
        (err if out.quiet else out).print(
            "[red]failed[/] " + escape(f"{f['observation']}: {f['error_type']}: {f['message']}"),
            highlight=False,
        )
    if len(summary.failures) > 20:
        out.print(f"… and {len(summary.failures) - 20} more: esap-dask status {summary.store}")
    for g in getattr(summary, "given_up", [])[:20]:
        out.print(
            "[red]given up[/] "
            + escape(
                f"{g['observation']} after {g['attempts']} attempt(s): {g['error_type']}: "
                f"{g['message']}"
            ),
            highlight=False,
        )
    out.print(f"store: {summary.store}", highlight=False)
    if summary.provenance:
        out.print(f"provenance: {summary.provenance}", highlight=False)


def _complete_facility(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion: the facility names of the catalog that start with ``incomplete``."""
    from esap_dask.catalogs.facilities import list_facilities

    return [
        CompletionItem(f.name, help=f.description.split(". ")[0][:80])
        for f in list_facilities()
        if f.name.startswith(incomplete)
    ]


def _complete_pipeline(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion: the catalog's pipeline names, or a .py file when a path is typed."""
    if "/" in incomplete or incomplete.startswith("."):
        return [CompletionItem(incomplete, type="file")]
    from esap_dask.catalogs.workflows import list_pipelines

    return [
        CompletionItem(p.name, help=p.description)
        for p in list_pipelines()
        if p.name.startswith(incomplete)
    ]


_storage_options_option = click.option(
    "--storage-options",
    metavar="JSON",
    help='fsspec options of a URL --store, e.g. \'{"client_kwargs": {"endpoint_url": '
    "\"http://127.0.0.1:8721\"}}' (default: the facility's, then the environment).",
)


#: ``--facility/-f`` of the commands that start workers (completes facility names).
_facility_option = click.option(
    "--facility",
    "-f",
    default="local",
    show_default=True,
    help="Where workers run (see `esap-dask facilities`).",
    shell_complete=_complete_facility,
)


def _parse_storage_options(
    text: str | None, option: str = "--storage-options"
) -> dict[str, Any] | None:
    """The ``--storage-options`` JSON object, or None when not given (exits 2 when bad)."""
    if not text:
        return None
    try:
        options = json.loads(text)
    except ValueError as e:
        _fail(f"{option}: not JSON ({e}); e.g. '{{\"anon\": true}}'")
    if not isinstance(options, dict):
        _fail(f"{option}: give a JSON object, e.g. '{{\"anon\": true}}'")
    return options


def _parse_select(pairs: tuple[str, ...]) -> dict[str, str] | None:
    """The ``--select KEY=VALUE`` pairs as a mapping (exits 2 naming a malformed one)."""
    select: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            _fail(f"--select {pair!r}: expected KEY=VALUE, e.g. --select target=Crab")
        if key.strip() in select:
            _fail(f"--select {key.strip()!r} is given twice; give each key once")
        select[key.strip()] = value.strip()
    return select or None


def _set_verbosity(verbose: int, quiet: bool) -> None:
    """Levels of the log lines: distributed's silent unless ``-v``; ``-q`` prints only errors.

    Without ``-v`` distributed's lines (its errors included: a failed observation or a
    worker that does not come is reported by esap-dask itself, with the reason) are not
    shown; ``-v`` shows its info lines, ``-vv`` its debug lines.
    """
    logging.getLogger("esap_dask").setLevel(
        "ERROR" if quiet else "DEBUG" if verbose > 1 else "INFO" if verbose else "WARNING"
    )
    if quiet:
        out.quiet = True  # no progress bar, no summary; errors and failures go to stderr
        warnings.simplefilter("ignore")


#: The ``esap.log-level`` of ``-v``/``-q``, until :func:`_apply_log_level` sets it.
_log_level: str | None = None


def _apply_log_level() -> None:
    """Put the level of ``-v``/``-q`` in the Dask configuration as ``esap.log-level``.

    It reaches this process's distributed loggers when a facility's cluster is opened
    (see :func:`esap_dask.config.apply_log_level`; distributed is imported only then)
    and the workers of local clusters (their ``silence_logs``). ``run`` calls it only
    when its receipt does not answer (:mod:`esap_dask.engine.receipt`): an unchanged
    rerun imports neither Dask (0.1 s) nor distributed (0.3 s).
    """
    if _log_level is None:
        return
    import dask.config

    import esap_dask.config

    dask.config.set({"esap.log-level": _log_level})
    if "distributed" in sys.modules:
        esap_dask.config.apply_log_level()


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from esap_dask import __version__

    click.echo(f"esap-dask, version {__version__}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.option(
    "--verbose",
    "-v",
    count=True,
    help="Show distributed's log lines (-v info, -vv debug); by default none.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only errors (and failed observations).")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Map one analysis over thousands of observation files into one Zarr store."""
    global _log_level
    if verbose and quiet:
        _fail("-v and -q exclude each other; give one")
    _log_level = "debug" if verbose > 1 else "info" if verbose == 1 else "critical"
    _set_verbosity(verbose, quiet)
    if ctx.invoked_subcommand != "run":  # run applies it when its receipt does not answer
        _apply_log_level()


@main.command()
@click.argument("pipeline", shell_complete=_complete_pipeline)
@click.option(
    "--observations",
    "-o",
    required=True,
    help="A glob ('runs/*.fits.gz'), a list file (.txt/.lst), an obs-index, or a range "
    "'1..100'; paths or URLs (s3://, https://, ...).",
)
@click.option("--store", "-s", required=True, help="The Zarr store to create or extend.")
@_facility_option
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A pipeline parameter (see `esap-dask pipelines`); repeatable.",
)
@click.option("--force", is_flag=True, help="Reprocess every observation.")
@click.option(
    "--content-hash",
    is_flag=True,
    help="Detect changed files by content (SHA-256), not size and mtime.",
)
@click.option("--chunk", type=click.IntRange(min=1), help="Observations per chunk (new store).")
@click.option("--shard", type=click.IntRange(min=1), help="Observations per shard (new store).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Minimum observations per task.")
@_storage_options_option
@click.option(
    "--input-storage-options",
    metavar="JSON",
    help="fsspec options of URL observations (s3://, https://...): one JSON object for "
    'every URL, or one per protocol, e.g. \'{"s3": {"anon": true}}\' (default for S3: the '
    "facility's storage_options, then the environment).",
)
@click.option(
    "--select",
    "select",
    multiple=True,
    metavar="KEY=VALUE",
    help="Keep only the observations of an obs-index (--observations obs-index.fits.gz) "
    "that match; repeatable, all must match. Keys: target=NAME (OBJECT contains it), "
    "cone=RA,DEC,RADIUS (pointing within, deg), zenith=MIN..MAX (deg), "
    "obs_id=ID,ID,... or FIRST..LAST, time=START..STOP (ISO dates or MJD; whole "
    "observations inside). See docs/observations.md.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would run and why (new, changed, failed, ...); start no cluster, "
    "write nothing.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    metavar="N",
    help="Give up an observation that failed N times: it is not tried again (until its "
    "file, the parameters or the version change, or --force) and is reported as given up "
    "(exit 4 when nothing else failed).",
)
def run(
    pipeline: str,
    observations: str,
    store: str,
    facility: str,
    params: tuple[str, ...],
    force: bool,
    content_hash: bool,
    chunk: int | None,
    shard: int | None,
    batch_size: int | None,
    storage_options: str | None,
    input_storage_options: str | None,
    select: tuple[str, ...],
    as_json: bool,
    dry_run: bool,
    max_attempts: int | None,
) -> None:
    """Run PIPELINE (a name or a .py file) over the observations into the store.

    Only new, changed, failed or unfinished observations are processed; running
    the same command again (from cron, say) does exactly the missing work.
    Observations may be URLs (s3://bucket/runs/*.fits.gz, https://host/obs-index.fits.gz):
    workers read them through fsspec, and reruns compare their ETag, size and time.
    """
    started = time.perf_counter()
    req = None
    if not (dry_run or force or content_hash or select or storage_options or input_storage_options):
        req = _receipt_request(
            pipeline,
            observations,
            store,
            facility,
            _parse_params(params),
            {
                "chunk": chunk,
                "shard": shard,
                "batch_size": batch_size,
                "max_attempts": max_attempts,
            },
        )
        found = _unchanged(req, facility, started)
        if found is not None:
            if as_json:
                click.echo(json.dumps(found))
            elif not out.quiet:
                _print_unchanged(found)
            sys.exit(0)
    _apply_log_level()
    from esap_dask.engine.mapper import map_observations

    # what a dry run and a run share: the observations, the store, the plan's inputs
    common: dict[str, Any] = {
        "facility": facility,
        "params": _parse_params(params),
        "force": force,
        "content_hash": content_hash,
        "storage_options": _parse_storage_options(storage_options),
        "input_storage_options": _parse_storage_options(
            input_storage_options, "--input-storage-options"
        ),
        "select": _parse_select(select),
        "max_attempts": max_attempts,
    }
    if dry_run:
        plan = _guarded(
            lambda: map_observations(pipeline, observations, store, dry_run=True, **common)
        )
        if as_json:
            click.echo(json.dumps(plan.to_dict()))
        else:
            _print_plan(plan, store)
        return
    summary = _guarded(
        lambda: map_observations(
            pipeline,
            observations,
            store,
            chunk=chunk,
            shard=shard,
            batch_size=batch_size,
            progress=False if as_json or out.quiet else None,
            receipt_for=req,
            **common,
        )
    )
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        print_summary(summary)
    sys.exit(0 if summary.ok else EXIT_FAILED if summary.failed else EXIT_GIVEN_UP)


def _receipt_request(
    pipeline: str,
    observations: str,
    store: str,
    facility: str,
    params: dict[str, str],
    options: dict[str, Any],
) -> Any:
    """The receipt's request of this ``run`` (None: it does not qualify, or cannot be read)."""
    from esap_dask.engine import receipt

    try:
        return receipt.request(
            pipeline, observations, store, facility=facility, params=params, options=options
        )
    except (OSError, ValueError):  # the run itself says what is wrong with its arguments
        return None


def _unchanged(req: Any, facility: str, started: float) -> dict[str, Any] | None:
    """The summary of an unchanged rerun when the store's receipt answers ``req``."""
    if req is None:
        return None
    from esap_dask.engine import receipt

    try:
        return receipt.answer(req, facility, started)
    except (OSError, ValueError):
        return None


def _print_unchanged(summary: dict[str, Any]) -> None:
    """:func:`print_summary` of an unchanged rerun, in plain lines (rich is not imported)."""
    rows = [(k, str(summary[k])) for k in ("total", "processed", "skipped", "succeeded", "failed")]
    rows.append(("seconds", f"{summary['seconds']:.2f}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"store: {summary['store']}")
    sys.stdout.write("\n".join(lines) + "\n")


def _print_plan(plan: Any, store: str) -> None:
    """``run --dry-run``: each observation that would run with its reason, the given up."""
    n, given_up = len(plan.todo), len(plan.given_up)
    gave = f", {given_up} given up" if given_up else ""
    out.print(
        f"dry run: {n} observation(s) would run, {plan.skipped - given_up} skipped (done and "
        f"unchanged){gave}; no cluster started, nothing written to {store}",
        highlight=False,
    )
    for e in plan.todo:
        line = f"{e.reason:<11} {e.observation.id}"
        if e.row in plan.last_errors:
            kind, message = plan.last_errors[e.row]
            line += f" (attempt {e.attempts + 1}; last error {kind}: {message})"
        out.print(escape(line), highlight=False)
    for g in plan.given_up:
        out.print(
            escape(
                f"{'given up':<11} {g.observation.id} (failed {g.attempts} time(s); last error "
                f"{g.error_type}: {g.error})"
            ),
            highlight=False,
        )
    for note in plan.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@click.option(
    "--failures", "max_failures", default=20, show_default=True, help="How many failures to list."
)
@click.option(
    "--failed",
    "show_failed",
    is_flag=True,
    help="Print each failure with its error and the tail of its traceback.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    metavar="PNG",
    help="Also render a summary picture (progress over time, durations, failures).",
)
@click.option(
    "--facility",
    "-f",
    default="local",
    show_default=True,
    help="Whose storage options open a URL store (see `esap-dask facilities`).",
    shell_complete=_complete_facility,
)
@_storage_options_option
def status(
    store: str,
    as_json: bool,
    max_failures: int,
    plot: str | None,
    facility: str,
    storage_options: str | None,
    show_failed: bool,
) -> None:
    """What STORE's ledger says: counts per status, runs, and failures with their messages."""
    from esap_dask.engine.status import store_status
    from esap_dask.store.options import storage_options_for

    opts = storage_options_for(store, facility, _parse_storage_options(storage_options))
    report = _guarded(
        lambda: store_status(
            store, max_failures=max_failures, storage_options=opts, tracebacks=show_failed
        )
    )
    if plot:
        from esap_dask.engine.report import plot_status

        picture = _guarded(lambda: plot_status(store, plot, storage_options=opts))
        err.print(f"summary picture: {picture}")
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    out.print(
        f"[bold]{store}[/]: pipeline {report['pipeline']} {report['version']}, "
        f"{report['total']} observations, {len(report['runs'])} run(s)",
        highlight=False,
    )
    counts = "  ".join(f"{k}: {v}" for k, v in report["counts"].items())
    if report.get("max_attempts"):
        counts += f" (given up: {report['given_up']}, after {report['max_attempts']} attempts)"
    out.print(counts, highlight=False)
    if report["runs"]:
        last = report["runs"][-1]
        out.print(
            f"last run {last['run']} ({last['ended']}): processed {last['processed']}, "
            f"failed {last['failed']}",
            highlight=False,
        )
    for f in report["failures"]:
        label = "given up" if f.get("given_up") else "failed"
        out.print(
            f"[red]{label}[/] " + escape(f"{f['observation']}: {f['error_type']}: {f['message']}"),
            highlight=False,
        )
        if show_failed:
            out.print(f"  attempts: {f['attempts']}", highlight=False)
            for line in str(f.get("traceback") or "(no traceback)").rstrip().splitlines():
                out.print("  " + escape(line), highlight=False)


@main.command()
@click.argument("store")
@click.option("--store", "-s", "new_store", required=True, help="The new store to create.")
@click.option("--run", "run_id", help="Reproduce only this run (see `esap-dask status`).")
@_facility_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
@click.option(
    "--allow-code",
    is_flag=True,
    help="Load the pipeline the store names even when it is a .py file, not a catalog "
    "pipeline (its code runs here: only for stores you trust).",
)
def reproduce(
    store: str, new_store: str, run_id: str | None, facility: str, as_json: bool, allow_code: bool
) -> None:
    """Re-run STORE's recorded run into a new store and compare the products.

    Same pipeline and version, same parameters, inputs verified by checksum; exits 0 when
    every product is identical, 1 when some differ, 2 when the run cannot be reproduced.
    """
    from esap_dask.engine.reproduce import ReproductionError
    from esap_dask.engine.reproduce import reproduce as do_reproduce

    try:
        outcome = _guarded(
            lambda: do_reproduce(
                store, new_store, run=run_id, facility=facility, allow_code=allow_code
            )
        )
    except ReproductionError as e:
        _fail(for_cli(e))
    if as_json:
        click.echo(json.dumps(outcome.to_dict()))
    elif outcome.identical:
        out.print(
            f"[green]identical:[/] {outcome.observations} observation(s) reproduced "
            f"into {new_store}, every product bit-identical",
            highlight=False,
        )
    else:
        for name, ids in outcome.differences.items():
            out.print(
                f"[red]differs[/] {name}: {len(ids)} observation(s), e.g. {', '.join(ids[:5])}",
                highlight=False,
            )
    sys.exit(0 if outcome.identical else EXIT_FAILED)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON.")
def pipelines(as_json: bool) -> None:
    """The workflow catalog: pipelines, their versions and parameters."""
    from esap_dask.catalogs.workflows import broken_pipelines, list_pipelines

    found = _guarded(list_pipelines)
    for where, why in broken_pipelines().items():
        err.print(
            f"[yellow]warning:[/] {escape(f'{where} failed to load: {why}')}", highlight=False
        )
    if as_json:
        click.echo(json.dumps([p.describe() for p in found], default=str))
        return
    for p in found:
        out.print(f"[bold]{p.name}[/] {p.version}: {p.description}", highlight=False)
        for param in p.parameters:
            out.print(
                f"    {param.name} ({param.type.__name__}, default {param.default!r}): "
                f"{param.description}",
                highlight=False,
            )


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON.")
@click.pass_context
def facilities(ctx: click.Context, as_json: bool) -> None:
    """The facility catalog: where workers can run (options merged with dask.config).

    An invalid facility file is named in a warning and left out; the others are listed.
    """
    if ctx.invoked_subcommand is not None:
        return
    from esap_dask.catalogs.facilities import (
        broken_facilities,
        list_facilities,
        load_facility,
        unfilled_placeholders,
    )

    found = _guarded(lambda: [load_facility(f.name) for f in list_facilities()])
    for err_ in broken_facilities().values():
        err.print(f"[yellow]warning:[/] {escape(str(err_))}", highlight=False)
    if as_json:
        click.echo(
            json.dumps([{**f.as_record(), "options": dict(f.options)} for f in found], default=str)
        )
        return
    table = Table("name", "type", "runtime", "description")
    for f in found:
        name = f"{f.name} (template)" if unfilled_placeholders(f) else f.name
        table.add_row(name, f.facilitytype, f.runtimeengine, f.description)
    out.print(table)


@facilities.command("check")
@click.argument("name", shell_complete=_complete_facility)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300,
    show_default=True,
    help="Seconds to wait for the worker, then for its task.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def check(name: str, timeout: float, as_json: bool) -> None:
    """Start one worker on facility NAME, run one task on it, report, and stop it.

    Reports the time the worker took to connect, the worker's host, Python and
    esap-dask version, and its batch or grid job id. Exits 1 with the reason when
    the worker does not come (or the task fails), 2 when NAME is unknown or invalid.
    """
    from esap_dask.engine.check import FacilityCheckError, check_facility

    try:
        report = _guarded(lambda: check_facility(name, timeout=timeout))
    except FacilityCheckError as e:
        _fail(str(e), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("facility", report.facility)
    table.add_row("worker after", f"{report.seconds_to_worker:.1f} s")
    table.add_row("host", report.host)
    table.add_row("python", report.python)
    table.add_row("esap-dask", report.esap_dask)
    table.add_row("job id", report.job_id or "none (not a batch or grid job)")
    table.add_row("scheduler", report.scheduler)
    out.print(table)
    out.print(f"[green]ok:[/] facility {name} gave a worker that ran a task", highlight=False)


@main.command()
@click.option(
    "--directory",
    "-d",
    default="esap-demo",
    show_default=True,
    type=click.Path(),
    help="Where the synthetic observations and the store go.",
)
@click.option(
    "--count",
    "-n",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of synthetic observations.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic data.")
@_facility_option
def demo(directory: str, count: int, seed: int, facility: str) -> None:
    """Generate synthetic DL3 observations and run dl3-products on them."""
    from esap_dask.engine.mapper import map_observations
    from esap_dask.iact.synthetic import write_observations

    root = Path(directory)
    inputs = root / "observations"
    files = sorted(inputs.glob("*.fits*"))[:count] if inputs.is_dir() else []
    if len(files) == count:  # a second demo reuses them: nothing to redo, as the rerun shows
        out.print(f"reusing {count} synthetic observations in {inputs}")
    else:
        try:
            files = write_observations(inputs, count, seed=seed)
        except OSError as e:
            _fail(
                f"--directory {directory}: cannot write the demo's observations there "
                f"({e.strerror or e}); give a writable directory with -d"
            )
        out.print(f"{len(files)} synthetic observations in {inputs}")
    store = str(root / "dl3-products.zarr")
    summary = _guarded(
        lambda: map_observations("dl3-products", [str(f) for f in files], store, facility=facility)
    )
    print_summary(summary)
    out.print(f"open it with: xarray.open_zarr({store!r})", highlight=False)
    sys.exit(0 if summary.ok else EXIT_FAILED)


def _register_service() -> None:
    """``esap-dask serve``: the UWS job service.

    esap_dask.service.cli imports only click: FastAPI, uvicorn and SQLAlchemy (the
    optional extra 'service') load when ``serve`` runs, which exits 2 naming the extra
    when they are missing.
    """
    from esap_dask.service.cli import serve

    main.add_command(serve)


_register_service()
