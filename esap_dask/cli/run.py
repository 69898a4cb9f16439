"""``esap-dask run``: a pipeline over observations into a store, answered from the
store's receipt when nothing changed (:mod:`esap_dask.engine.receipt`).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from esap_dask.cli.common import (
    EXIT_FAILED,
    EXIT_GIVEN_UP,
    apply_log_level,
    complete_pipeline,
    escape,
    facility_option,
    guarded,
    out,
    parse_params,
    parse_select,
    parse_storage_options,
    print_summary,
    storage_options_option,
)


@click.command()
@click.argument("pipeline", shell_complete=complete_pipeline)
@click.option(
    "--observations",
    "-o",
    required=True,
    help="A glob ('runs/*.fits.gz'), a list file (.txt/.lst), an obs-index, or a range "
    "'1..100'; paths or URLs (s3://, https://, ...).",
)
@click.option("--store", "-s", required=True, help="The Zarr store to create or extend.")
@facility_option
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
@storage_options_option
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
    given = parse_params(params)
    req = None
    if not (dry_run or force or content_hash or select or storage_options or input_storage_options):
        from esap_dask.engine import receipt

        what = {
            "chunk": chunk,
            "shard": shard,
            "batch_size": batch_size,
            "max_attempts": max_attempts,
        }
        req = receipt.request(
            pipeline, observations, store, facility=facility, params=given, options=what
        )
        found = receipt.answer(req, facility, started)
        if found is not None:
            if as_json:
                click.echo(json.dumps(found))
            elif not out.quiet:
                _print_unchanged(found)
            sys.exit(0)
    apply_log_level()
    from esap_dask.engine.mapper import map_observations

    # what a dry run and a run share: the observations, the store, the plan's inputs
    common: dict[str, Any] = {
        "facility": facility,
        "params": given,
        "force": force,
        "content_hash": content_hash,
        "storage_options": parse_storage_options(storage_options),
        "input_storage_options": parse_storage_options(
            input_storage_options, "--input-storage-options"
        ),
        "select": parse_select(select),
        "max_attempts": max_attempts,
    }
    if dry_run:
        plan = guarded(
            lambda: map_observations(pipeline, observations, store, dry_run=True, **common)
        )
        if as_json:
            click.echo(json.dumps(plan.to_dict()))
        else:
            _print_plan(plan, store)
        return
    summary = guarded(
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
