"""``esap-dask serve``: run the job service with uvicorn.

Register it in the main CLI with ``main.add_command(serve)``; it also runs on its
own as ``python -m esap_dask.service.cli``. Importing this module is cheap: the
service's libraries (the optional extra ``service``: FastAPI, uvicorn, SQLAlchemy)
load when the command runs, and when they are missing it exits 2 naming the extra.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["serve"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--tokens",
    "tokens",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Token file: one 'TOKEN USERNAME' pair per line (the embedded default).",
)
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("esap-dask-service"),
    show_default=True,
    help="Data directory (job stores, logs, the SQLite database).",
)
@click.option(
    "--database",
    help="SQLAlchemy URL [default: sqlite:///DATA/jobs.sqlite], "
    "e.g. postgresql+psycopg://user:pw@127.0.0.1/esap.",
)
@click.option("--oidc-issuer", help="Accept JWTs signed by this OIDC issuer.")
@click.option("--oidc-audience", help="Required 'aud' of those JWTs (required with --oidc-issuer).")
@click.option("--jwks", help="The issuer's keys: a JWKS URL or file [default: discovered].")
@click.option(
    "--jwks-min-interval",
    default=60.0,
    show_default=True,
    type=float,
    help="Fewest seconds between two fetches of the issuer's keys (unknown 'kid's).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Serve HTTPS with this certificate (PEM chain).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The private key of --tls-cert (PEM) [default: in --tls-cert].",
)
@click.option(
    "--client-ca",
    type=click.Path(exists=True, path_type=Path),
    help="Accept X.509 client certificates (and RFC 3820 proxies of them) issued by the CA "
    "certificates in this PEM file or directory (e.g. /etc/grid-security/certificates); "
    "needs --tls-cert.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    help="Address of a reverse proxy whose X-SSL-Client-DN header (with X-SSL-Client-Verify: "
    "SUCCESS) names a verified X.509 user, and whose X-Forwarded-* headers count. Repeatable.",
)
@click.option(
    "--concurrency", default=4, show_default=True, type=int, help="Jobs executing at the same time."
)
@click.option(
    "--data-root",
    "data_roots",
    multiple=True,
    metavar="DIR|URL",
    help="A directory whose files jobs may read (observations, cards), or a URL prefix "
    "(s3://bucket/runs/, https://host/dr1/) whose objects jobs may name as observations; "
    "repeatable. Without one, jobs read no file: observations are run numbers or ranges.",
)
@click.option(
    "--max-observations",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most observations one job may map.",
)
@click.option(
    "--max-jobs-per-user",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Unfinished jobs one user may have (more: 429).",
)
@click.option(
    "--max-queued-per-user",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Jobs one user may have queued or executing (more: 429).",
)
@click.option(
    "--max-destruction-days",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Latest DESTRUCTION a client may ask for, in days ahead (later ones are moved).",
)
@click.option(
    "--max-execution-duration",
    default=7 * 86400,
    show_default=True,
    type=click.IntRange(min=1),
    help="Longest EXECUTIONDURATION, in seconds (longer ones, and 0, get this).",
)
@click.option(
    "--max-parameter",
    "max_parameters",
    multiple=True,
    metavar="[PIPELINE.]NAME=MAX",
    help="Bound a numeric pipeline parameter, e.g. helloworld.sleep=10; repeatable.",
)
@click.option(
    "--max-wait",
    default=60.0,
    show_default=True,
    type=float,
    help="Longest blocking WAIT, in seconds.",
)
@click.option(
    "--store-root",
    help="Put every job's Zarr store at STORE_ROOT/<job id>/store.zarr: an object store "
    "URL (s3://bucket/prefix), required by facilities whose workers share no filesystem "
    "with the service (dirac), or a directory [default: the job's directory under --data].",
)
@click.option(
    "--store-options",
    help="fsspec storage options of --store-root as a JSON object, e.g. "
    '\'{"client_kwargs": {"endpoint_url": "https://s3.example.org"}}\'; for s3:// completed '
    "from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL.",
)
def serve(
    host: str,
    port: int,
    tokens: Path | None,
    data: Path,
    database: str | None,
    oidc_issuer: str | None,
    oidc_audience: str | None,
    jwks: str | None,
    jwks_min_interval: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    trusted_proxies: tuple[str, ...],
    concurrency: int,
    max_wait: float,
    data_roots: tuple[str, ...],
    max_observations: int,
    max_jobs_per_user: int,
    max_queued_per_user: int,
    max_destruction_days: float,
    max_execution_duration: int,
    max_parameters: tuple[str, ...],
    store_root: str | None = None,
    store_options: str | None = None,
) -> None:
    """Start the UWS 1.1 job service (jobs at /uws/jobs, web page at /, API at /docs).

    Needs the optional extra 'service': pip install 'esap-dask[service]'.
    """
    from esap_dask.extras import extra_of, install_hint

    try:
        import uvicorn

        from esap_dask.service.app import create_app
        from esap_dask.service.config import ServiceConfig
    except ImportError as err:
        found = extra_of(err)
        if found is None:
            raise
        extra, module = found
        click.echo(
            f"error: esap-dask serve needs the optional extra '{extra}' ({module} is not "
            f"installed): {install_hint(extra)}",
            err=True,
        )
        sys.exit(2)

    os.umask(0o077)  # the job stores, logs and database are each user's own
    if tokens is not None and not tokens.is_file():
        raise click.BadParameter(f"{tokens} does not exist", param_hint="--tokens")
    config = ServiceConfig(
        data_dir=data,
        database_url=database,
        tokens_file=tokens,
        oidc_issuer=oidc_issuer,
        oidc_audience=oidc_audience,
        jwks=jwks,
        jwks_min_interval=jwks_min_interval,
        client_certificates=client_ca is not None,
        trusted_proxies=tuple(trusted_proxies),
        concurrency=concurrency,
        max_wait=max_wait,
        data_roots=[r if "://" in r else Path(r) for r in data_roots],
        max_observations=max_observations,
        max_jobs_per_user=max_jobs_per_user,
        max_queued_per_user=max_queued_per_user,
        max_destruction_days=max_destruction_days,
        max_execution_duration=max_execution_duration,
        default_execution_duration=min(3600, max_execution_duration),
        parameter_maxima=_maxima(max_parameters),
        store_root=store_root,
        store_options=_json_object(store_options, "--store-options"),
    )
    try:
        app = create_app(config)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    runner = app.state.service.runner

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Stop the jobs' Dask work at the signal, before uvicorn drains connections:
            # they go back to QUEUED and resume at the next start.
            runner.begin_shutdown()
            super().handle_exit(sig, frame)

    config_ = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=10,
        **_tls_options(tls_cert, tls_key, client_ca, trusted_proxies),
    )
    Server(config_).run()


def _tls_options(
    cert: Path | None, key: Path | None, client_ca: Path | None, proxies: tuple[str, ...]
) -> dict[str, Any]:
    """uvicorn.Config options: HTTPS with client certificates, trusted proxy headers."""
    from esap_dask.service.tls import http_protocol, server_context

    if (key or client_ca) and cert is None:
        raise click.UsageError("--tls-key and --client-ca need --tls-cert (HTTPS)")
    options: dict[str, Any] = {
        "http": http_protocol(),
        # X-Forwarded-* count only from the trusted proxies (uvicorn trusts 127.0.0.1 else).
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": list(proxies),
    }
    if cert is not None:
        try:
            ctx = server_context(cert, key, client_ca)
        except ValueError as err:
            raise click.UsageError(str(err)) from None
        options["ssl_certfile"] = str(cert)
        options["ssl_context_factory"] = lambda *_: ctx
    return options


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    """A JSON object given on the command line, or a usage error naming ``option``."""
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"not JSON ({err}): {text!r}", param_hint=option) from None
    if not isinstance(value, dict):
        raise click.BadParameter(f"give a JSON object ({{...}}), not {text!r}", param_hint=option)
    return value


def _maxima(items: tuple[str, ...]) -> dict[str, float]:
    """``--max-parameter [PIPELINE.]NAME=MAX`` options as a dict, or a usage error."""
    maxima: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            maxima[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"give [PIPELINE.]NAME=MAX, e.g. helloworld.sleep=10, not {item!r}",
                param_hint="--max-parameter",
            ) from None
    return maxima


if __name__ == "__main__":
    serve()
