"""The job service's settings: where its data and database live, how it authenticates.

One plain dataclass, filled by ``esap-dask serve`` (or by a test) and read by
every part of the service; nothing else holds configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from esap_dask.service.sandbox import Sandbox

__all__ = ["ServiceConfig"]


@dataclass
class ServiceConfig:
    """Settings of one job service.

    Parameters
    ----------
    data_dir
        The service's data directory: one sub-directory per job (``jobs/<id>/``)
        holding its Zarr store, provenance, run log and summary.
    database_url
        A SQLAlchemy URL; default ``sqlite:///<data_dir>/jobs.sqlite`` (the embedded
        default). ``postgresql+psycopg://user:pw@host/db`` for shared deployments.
    tokens_file
        A file of ``TOKEN USERNAME`` lines (``#`` comments): the embedded default's users.
    oidc_issuer, oidc_audience, jwks
        Validate bearer tokens as OIDC JWTs signed by ``oidc_issuer``; the keys come from
        ``jwks`` (a URL or a JSON file) or from the issuer's discovery document.
    username_claim
        The JWT claim naming the user within the issuer (``sub``: OIDC Core makes only
        ``iss`` + ``sub`` stable and unique); the owner is ``oidc:<issuer>:<claim>``.
    jwks_min_interval
        Seconds between two fetches of the issuer's keys (a token with an unknown ``kid``
        triggers at most one fetch per interval).
    client_certificates, trusted_proxies
        Accept X.509 client certificates verified by the service's own TLS; accept the
        DN that a reverse proxy at one of these addresses forwards (``X-SSL-Client-DN``).
    max_wait
        Upper bound of a blocking ``WAIT`` in seconds (UWS 1.1 lets a server bound it).
    default_execution_duration, max_execution_duration
        Seconds a job may run (0 means unlimited) when the client says nothing, and
        the most a client may ask for.
    destruction_days
        Days after creation at which a job and its results are destroyed by default.
    concurrency
        Jobs executing at the same time; the others wait in ``QUEUED``.
    reaper_interval
        Seconds between two passes of the loop that enforces execution durations
        and destruction times (see :mod:`esap_dask.service.reaper`).
    cluster_options
        Keyword overrides for the service-wide ``local`` cluster (``open_cluster``).
    data_roots
        Directories whose regular files jobs may read (observations, steering cards),
        and URL prefixes (``s3://bucket/runs/``) whose objects jobs may name as
        observations; none: jobs read no file (see :mod:`esap_dask.service.sandbox`).
    max_observations
        Most observations one job may map (globs, lists and ranges are counted first).
    max_jobs_per_user, max_queued_per_user
        Unfinished jobs a user may have, and how many of them may be queued or executing
        (see :mod:`esap_dask.service.limits`).
    max_destruction_days
        Latest destruction instant a client may ask for, in days from its request.
    parameter_maxima
        ``{"pipeline.param" or "param": maximum}`` for numeric pipeline parameters.
    store_root
        Where every job's Zarr store goes, as ``<store_root>/<job id>/store.zarr``: a
        URL (``s3://bucket/prefix``) or a directory. Default: the job's directory.
        Facilities whose workers share no filesystem with the service (``dirac``) need
        a URL (see :mod:`esap_dask.service.stores`).
    store_options
        fsspec storage options of ``store_root`` (endpoint, credentials); for ``s3://``
        completed from ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
        ``AWS_ENDPOINT_URL`` as :func:`esap_dask.catalogs.facilities.storage_options_for` does.
    """

    data_dir: Path
    database_url: str | None = None
    tokens_file: Path | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    jwks: str | None = None
    username_claim: str = "sub"
    jwks_min_interval: float = 60.0
    client_certificates: bool = False
    trusted_proxies: tuple[str, ...] = ()
    max_wait: float = 60.0
    default_execution_duration: int = 3600
    max_execution_duration: int = 7 * 86400
    destruction_days: float = 7.0
    concurrency: int = 4
    reaper_interval: float = 0.5
    cluster_options: dict[str, object] = field(default_factory=dict)
    data_roots: list[Path | str] = field(default_factory=list)
    max_observations: int = 100_000
    max_jobs_per_user: int = 100
    max_queued_per_user: int = 8
    max_destruction_days: float = 30.0
    parameter_maxima: dict[str, float] = field(default_factory=dict)
    store_root: str | None = None
    store_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.tokens_file is not None:
            self.tokens_file = Path(self.tokens_file).expanduser()
        if self.store_root is not None:
            root = str(self.store_root).strip()
            if not root:
                self.store_root = None
            elif "://" in root and not root.startswith("file://"):
                self.store_root = root.rstrip("/")
            else:
                self.store_root = str(Path(root.removeprefix("file://")).expanduser().resolve())
        if not isinstance(self.store_options, dict):
            raise ValueError(
                f"store_options must be a mapping of fsspec options, not {self.store_options!r}"
            )

    @cached_property
    def sandbox(self) -> Sandbox:
        """Where job inputs may come from, and how many (ValueError for a bad data root)."""
        return Sandbox.create(
            self.data_roots,
            max_observations=self.max_observations,
            parameter_maxima=self.parameter_maxima,
            private={"data directory": self.data_dir, "token file": self.tokens_file},
        )

    @property
    def database(self) -> str:
        """The database URL, with the SQLite default applied."""
        return self.database_url or f"sqlite:///{self.data_dir / 'jobs.sqlite'}"

    @property
    def jobs_dir(self) -> Path:
        """The directory holding one sub-directory per job."""
        return self.data_dir / "jobs"

    def job_dir(self, job_id: str) -> Path:
        """The directory of one job (store, provenance, log, summary)."""
        return self.jobs_dir / job_id

    def job_store(self, job_id: str, facility: str | None = None) -> tuple[str, dict[str, Any]]:
        """``(url, storage_options)`` of job ``job_id``'s Zarr store.

        Given ``facility``, raises :class:`~esap_dask.service.stores.StoreRootError` (a
        ``ValueError``) when its workers share no filesystem with the service and no URL
        store root is configured. See :func:`esap_dask.service.stores.job_store`.
        """
        from esap_dask.service.stores import job_store

        store = job_store(self, job_id, facility)
        return store.url, dict(store.storage_options)

    def prepare(self) -> None:
        """Create the data directories."""
        os.makedirs(self.jobs_dir, mode=0o700, exist_ok=True)
        for directory in (self.data_dir, self.jobs_dir):  # every user's stores and errors
            os.chmod(directory, 0o700)
