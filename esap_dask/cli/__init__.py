"""The ``esap-dask`` command line.

Exit codes: 0 every observation done (and for ``run --dry-run``: the plan was printed);
1 some observations failed; 2 bad usage or bad input (parameters, observation list,
facility, pipeline, store); 3 the store is locked by another run; 4 none failed in this
run, but some were given up (they failed ``--max-attempts`` times and were not tried
again); 130 interrupted.

One module per command group: :mod:`.run`, :mod:`.store` (``status``, ``reproduce``),
:mod:`.catalog` (``pipelines``, ``facilities``), :mod:`.demo`; what they share is in
:mod:`.common`. Each imports only click at module level, so that ``--version`` and an
unchanged ``run`` start at once.
"""

from __future__ import annotations

import click

from esap_dask.cli.catalog import facilities, pipelines
from esap_dask.cli.common import (
    EXIT_FAILED,
    EXIT_GIVEN_UP,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    apply_log_level,
    fail,
    print_summary,
    set_verbosity,
)
from esap_dask.cli.demo import demo
from esap_dask.cli.run import run
from esap_dask.cli.store import reproduce, status

__all__ = [
    "EXIT_FAILED",
    "EXIT_GIVEN_UP",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "main",
    "print_summary",
]


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
    if verbose and quiet:
        fail("-v and -q exclude each other; give one")
    set_verbosity(verbose, quiet)
    if ctx.invoked_subcommand != "run":  # run applies it when its receipt does not answer
        apply_log_level()


for _command in (run, status, reproduce, pipelines, facilities, demo):
    main.add_command(_command)


def _register_service() -> None:
    """``esap-dask serve``: the UWS job service.

    esap_dask.service.cli imports only click: FastAPI, uvicorn and SQLAlchemy (the
    optional extra 'service') load when ``serve`` runs, which exits 2 naming the extra
    when they are missing.
    """
    from esap_dask.service.cli import serve

    main.add_command(serve)


_register_service()
