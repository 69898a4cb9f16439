"""``esap-dask status`` and ``reproduce``: what a store holds, and a run again from its record."""

from __future__ import annotations

import json
import sys

import click

from esap_dask.cli.common import (
    EXIT_FAILED,
    complete_facility,
    err,
    escape,
    facility_option,
    fail,
    guarded,
    out,
    parse_storage_options,
    storage_options_option,
)
from esap_dask.errors import for_cli


@click.command()
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
    shell_complete=complete_facility,
)
@storage_options_option
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

    opts = storage_options_for(store, facility, parse_storage_options(storage_options))
    report = guarded(
        lambda: store_status(
            store, max_failures=max_failures, storage_options=opts, tracebacks=show_failed
        )
    )
    if plot:
        from esap_dask.engine.report import plot_status

        picture = guarded(lambda: plot_status(store, plot, storage_options=opts))
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


@click.command()
@click.argument("store")
@click.option("--store", "-s", "new_store", required=True, help="The new store to create.")
@click.option("--run", "run_id", help="Reproduce only this run (see `esap-dask status`).")
@facility_option
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
        outcome = guarded(
            lambda: do_reproduce(
                store, new_store, run=run_id, facility=facility, allow_code=allow_code
            )
        )
    except ReproductionError as e:
        fail(for_cli(e))
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
