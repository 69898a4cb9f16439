"""What the commands of ``esap-dask`` share: consoles, exit codes, errors, options, the summary."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Callable
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


def fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
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


def guarded(action: Callable[[], Any]) -> Any:
    """Run ``action``, turning known errors into a one-line message and an exit code.

    The error classes are imported when an error is raised (an ``except`` clause's
    expression is evaluated then): ``esap-dask pipelines`` does not pay zarr's import.
    """
    try:
        return action()
    except _lock_held() as e:
        fail(str(e), EXIT_LOCKED)
    except _input_errors() as e:
        fail(_with_extra(for_cli(e), e))
    except ImportError as e:
        found = extra_of(e)
        if found is None:
            raise
        extra, module = found
        fail(
            f"this needs the optional extra '{extra}' ({module} is not installed): "
            f"{install_hint(extra)}"
        )
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to finish the work", EXIT_INTERRUPTED)


def parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--param {pair!r}: expected NAME=VALUE, e.g. --param message=hi")
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


def complete_facility(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion: the facility names of the catalog that start with ``incomplete``."""
    from esap_dask.catalogs.facilities import list_facilities

    return [
        CompletionItem(f.name, help=f.description.split(". ")[0][:80])
        for f in list_facilities()
        if f.name.startswith(incomplete)
    ]


def complete_pipeline(
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


storage_options_option = click.option(
    "--storage-options",
    metavar="JSON",
    help='fsspec options of a URL --store, e.g. \'{"client_kwargs": {"endpoint_url": '
    "\"http://127.0.0.1:8721\"}}' (default: the facility's, then the environment).",
)


#: ``--facility/-f`` of the commands that start workers (completes facility names).
facility_option = click.option(
    "--facility",
    "-f",
    default="local",
    show_default=True,
    help="Where workers run (see `esap-dask facilities`).",
    shell_complete=complete_facility,
)


def parse_storage_options(
    text: str | None, option: str = "--storage-options"
) -> dict[str, Any] | None:
    """The ``--storage-options`` JSON object, or None when not given (exits 2 when bad)."""
    if not text:
        return None
    try:
        options = json.loads(text)
    except ValueError as e:
        fail(f"{option}: not JSON ({e}); e.g. '{{\"anon\": true}}'")
    if not isinstance(options, dict):
        fail(f"{option}: give a JSON object, e.g. '{{\"anon\": true}}'")
    return options


def parse_select(pairs: tuple[str, ...]) -> dict[str, str] | None:
    """The ``--select KEY=VALUE`` pairs as a mapping (exits 2 naming a malformed one)."""
    select: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            fail(f"--select {pair!r}: expected KEY=VALUE, e.g. --select target=Crab")
        if key.strip() in select:
            fail(f"--select {key.strip()!r} is given twice; give each key once")
        select[key.strip()] = value.strip()
    return select or None


def set_verbosity(verbose: int, quiet: bool) -> None:
    """Levels of the log lines: distributed's silent unless ``-v``; ``-q`` prints only errors.

    Without ``-v`` distributed's lines (its errors included: a failed observation or a
    worker that does not come is reported by esap-dask itself, with the reason) are not
    shown; ``-v`` shows its info lines, ``-vv`` its debug lines. The level reaches Dask's
    configuration by :func:`apply_log_level`.
    """
    global _log_level
    _log_level = "debug" if verbose > 1 else "info" if verbose == 1 else "critical"
    logging.getLogger("esap_dask").setLevel(
        "ERROR" if quiet else "DEBUG" if verbose > 1 else "INFO" if verbose else "WARNING"
    )
    if quiet:
        out.quiet = True  # no progress bar, no summary; errors and failures go to stderr
        warnings.simplefilter("ignore")


#: The ``esap.log-level`` of ``-v``/``-q``, until :func:`apply_log_level` sets it.
_log_level: str | None = None


def apply_log_level() -> None:
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
