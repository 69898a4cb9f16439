"""Where a job's Zarr store lives, and reading it back for its owner.

By default a job's store is ``<data>/jobs/<id>/store.zarr`` on the service's disk.
With a **store root** (``esap-dask serve --store-root s3://bucket/prefix
--store-options JSON``) every job's store is ``<store-root>/<id>/store.zarr`` on
that object store (its provenance beside it), whatever the facility: one place
for a platform's outputs. The job's run log, ledger and summary stay in its
directory on the service's disk.

A facility whose workers share no filesystem with the service (``dirac``: grid
jobs) can only write to a store root given as a URL; without one, its jobs are
refused at submission. Which facilities those are is the facility option
``shared_filesystem`` (``false`` for them); it defaults to ``false`` for the
``dirac`` facility type and to ``true`` for every other type.

:func:`job_store` is the one function that places a job's store: the runner
writes there, the results (the store over HTTP, its zip archive, the ledger,
the provenance) are read from there, and destroying a job removes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class ServiceConfig(Protocol):
    """What the stores read of :class:`esap_dask.service.config.ServiceConfig`.

    (A protocol, so that the configuration may offer ``job_store`` without a cycle.)
    """

    @property
    def store_root(self) -> str | None: ...
    @property
    def store_options(self) -> Mapping[str, Any]: ...
    def job_dir(self, job_id: str) -> Path: ...


__all__ = [
    "BLOCK",
    "STORE_NAME",
    "BadKey",
    "JobStore",
    "StoreRootError",
    "job_store",
    "open_job_store",
    "parse_range",
    "read_blocks",
    "remove_job_files",
    "require_store_root",
    "shared_filesystem",
]

#: Name of a job's Zarr store inside its directory (on disk or under the store root).
STORE_NAME = "store.zarr"
#: Bytes read and sent at a time when a store key is streamed (bounds the memory per response).
BLOCK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_FALSE = {"false", "no", "0", "off"}


class StoreRootError(ValueError):
    """A job's facility needs a store root the service does not have; the message says which."""


class BadKey(ValueError):
    """A store key that is not a plain relative key inside the store (``..``, absolute, ...)."""


def shared_filesystem(facility: str) -> bool:
    """Whether ``facility``'s workers see the service's disk.

    The facility option ``shared_filesystem`` (``true``/``false``; from the facility's
    YAML file or ``DASK_ESAP__FACILITIES__<NAME>__SHARED_FILESYSTEM``) decides; without it,
    ``dirac`` facilities share nothing and all other types share the service's disk.
    An unknown facility counts as sharing (the job's own checks reject it).
    """
    from esap_dask.catalogs.facilities import FacilityError, load_facility

    try:
        fac = load_facility(facility)
    except FacilityError:
        return True
    value = fac.options.get("shared_filesystem")
    if value is None:
        return fac.facilitytype != "dirac"
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


def _is_url(store: str) -> bool:
    return "://" in store and not store.startswith("file://")


@dataclass(frozen=True)
class JobStore:
    """One job's Zarr store: its URL (or path) and the fsspec options that reach it.

    Parameters
    ----------
    url
        A local path, or a URL (``s3://bucket/prefix/<id>/store.zarr``).
    storage_options
        fsspec options of a URL store (credentials, endpoint); empty for a path.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """True when the store is a directory on the service's disk."""
        return not _is_url(self.url)

    @property
    def local_path(self) -> Path:
        """The store's directory (for a local store)."""
        return Path(self.url.removeprefix("file://"))

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem of the store and the store's path on it."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url, **dict(self.storage_options))
        return fs, str(path).rstrip("/")

    def exists(self) -> bool:
        """True when the store has its root ``zarr.json`` (the mapper created it)."""
        if self.is_local:
            return (self.local_path / "zarr.json").is_file()
        fs, path = self.filesystem()
        return bool(fs.isfile(f"{path}/zarr.json"))

    def key(self, key: str) -> tuple[Any, str, int] | None:
        """``(filesystem, path, size)`` of one key of the store, or None when it has none.

        Only regular files inside the store are keys: a symbolic link anywhere on the
        way, a directory or a special file is reported missing.

        Raises
        ------
        BadKey
            When ``key`` is empty, absolute, or has an empty, ``.`` or ``..`` segment.
        """
        parts = key.split("/")
        if not key or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
            raise BadKey(
                f"{key!r} is not a key of a Zarr store: give a relative key such as "
                "'zarr.json' or 'greeting/c.0', without '.', '..' or empty segments"
            )
        if self.is_local:
            return _local_key(self.local_path, parts)
        fs, root = self.filesystem()
        path = f"{root}/{key}"
        try:
            info = fs.info(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if info.get("type") != "file":
            return None
        return fs, path, int(info.get("size") or 0)

    def provenance(self) -> tuple[Any, str, int] | None:
        """The latest provenance document beside the store: ``(filesystem, path, size)``."""
        fs, root = self.filesystem()
        folder = f"{root}.provenance"
        try:
            found = [
                info
                for info in fs.ls(folder, detail=True, refresh=True)
                if info.get("type") == "file" and str(info["name"]).endswith(".json")
            ]
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not found:
            return None
        latest = max(found, key=lambda info: str(info["name"]).rsplit("/", 1)[-1])
        return fs, str(latest["name"]), int(latest.get("size") or 0)

    def write_zip(self, target: Path) -> None:
        """Write the store into a zip archive (``store.zarr/<key>`` members, stored)."""
        fs, root = self.filesystem()
        name = root.rsplit("/", 1)[-1]
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
            if self.is_local:
                for path in sorted(self.local_path.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        zf.write(path, f"{name}/{path.relative_to(self.local_path)}")
                return
            for path in sorted(fs.find(root)):
                with (
                    fs.open(path, "rb") as src,
                    zf.open(f"{name}/{path[len(root) + 1 :]}", "w") as dst,
                ):
                    while block := src.read(BLOCK):
                        dst.write(block)

    def remove(self) -> None:
        """Delete the directory holding the store, its provenance and its lock.

        That is ``<store-root>/<id>/`` under a store root, the job's directory otherwise.
        """
        if self.is_local:
            import shutil

            shutil.rmtree(self.local_path.parent, ignore_errors=True)
            return
        fs, root = self.filesystem()
        with contextlib.suppress(FileNotFoundError):
            fs.rm(root.rsplit("/", 1)[0], recursive=True)


def _local_key(store: Path, parts: list[str]) -> tuple[Any, str, int] | None:
    from fsspec.implementations.local import LocalFileSystem

    path = store
    try:
        for i, part in enumerate(parts):
            path = path / part
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                return None
            last = i == len(parts) - 1
            if (last and not stat.S_ISREG(mode)) or (not last and not stat.S_ISDIR(mode)):
                return None
        size = os.lstat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        return None
    return LocalFileSystem(), str(path), size


def read_blocks(fs: Any, path: str, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``path`` from ``start``, in blocks of at most :data:`BLOCK` bytes."""
    with fs.open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            block = f.read(min(BLOCK, length))
            if not block:
                return
            length -= len(block)
            yield block


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``(start, stop)`` of a single ``Range: bytes=...`` header, None for the whole file.

    Forms: ``bytes=A-B`` (inclusive), ``bytes=A-``, ``bytes=-N`` (the last N bytes).
    A header of another unit or with several ranges is ignored (the whole file is
    sent, as RFC 9110 allows).

    Raises
    ------
    ValueError
        When the range is not satisfiable for a file of ``size`` bytes (HTTP 416).
    """
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        start, stop = max(size - int(last), 0), size
        if int(last) == 0:
            raise ValueError(f"Range {header!r}: an empty suffix")
    else:
        start = int(first)
        stop = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None  # syntactically invalid: ignored
    if start >= size:
        raise ValueError(f"Range {header!r} starts beyond the {size} bytes of the key")
    return start, stop


def job_store(config: ServiceConfig, job_id: str, facility: str | None = None) -> JobStore:
    """Where job ``job_id``'s store is, with its storage options.

    Parameters
    ----------
    config
        The service settings (``data_dir``, ``store_root``, ``store_options``).
    job_id
        The job.
    facility
        The job's facility; given, a facility that shares no filesystem with the
        service is checked to have a URL store root.

    Raises
    ------
    StoreRootError
        When ``facility`` shares no filesystem with the service and the service has
        no URL store root.
    """
    from esap_dask.store.options import storage_options_for

    if facility is not None:
        require_store_root(config, facility)
    root = config.store_root
    if not root:
        return JobStore(str(config.job_dir(job_id) / STORE_NAME))
    url = f"{root.rstrip('/')}/{job_id}/{STORE_NAME}"
    return JobStore(url, storage_options_for(url, "local", dict(config.store_options)))


def require_store_root(config: ServiceConfig, facility: str) -> None:
    """Check that jobs on ``facility`` can have a store here.

    Raises
    ------
    StoreRootError
        When ``facility`` shares no filesystem with the service (see
        :func:`shared_filesystem`) and the service has no URL store root.
    """
    root = config.store_root
    if shared_filesystem(facility) or (root and _is_url(root)):
        return
    given = f"its store root {root!r} is not a URL" if root else "it has no store root"
    raise StoreRootError(
        f"facility {facility!r} shares no filesystem with this service and {given}: "
        "start the service with --store-root s3://BUCKET/PREFIX (and --store-options "
        '\'{"client_kwargs": {"endpoint_url": ...}}\' when needed), or choose a '
        "facility whose workers see the service's disk"
    )


def open_job_store(config: ServiceConfig, job_id: str) -> JobStore:
    """The store of an existing job (no facility check): :func:`job_store` without one."""
    return job_store(config, job_id)


def remove_job_files(config: ServiceConfig, job_id: str) -> None:
    """Destroy a job's files: its store under the store root, then its directory."""
    import shutil

    with contextlib.suppress(Exception):
        open_job_store(config, job_id).remove()
    shutil.rmtree(config.job_dir(job_id), ignore_errors=True)
