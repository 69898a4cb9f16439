"""``esap-dask pipelines`` and ``facilities``: the catalogs, and a facility checked end to end."""

from __future__ import annotations

import json

import click

from esap_dask.cli.common import (
    EXIT_FAILED,
    Table,
    complete_facility,
    err,
    escape,
    fail,
    guarded,
    out,
)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON.")
def pipelines(as_json: bool) -> None:
    """The workflow catalog: pipelines, their versions and parameters."""
    from esap_dask.catalogs.workflows import broken_pipelines, list_pipelines

    found = guarded(list_pipelines)
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


@click.group(invoke_without_command=True)
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

    found = guarded(lambda: [load_facility(f.name) for f in list_facilities()])
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
@click.argument("name", shell_complete=complete_facility)
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
        report = guarded(lambda: check_facility(name, timeout=timeout))
    except FacilityCheckError as e:
        fail(str(e), EXIT_FAILED)
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
