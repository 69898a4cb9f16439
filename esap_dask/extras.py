"""The optional extras of esap-dask, and the error a user sees when one is missing.

esap-dask installs without its optional extras (``pip install esap-dask``); each
extra brings the libraries of one feature, imported only when that feature runs:

=========  ====================================================  ======================
extra      what needs it                                          libraries
=========  ====================================================  ======================
service    ``esap-dask serve`` (the UWS job service)              fastapi, uvicorn, ...
ssh        facilities of type ``ssh``                             asyncssh
s3         stores and observations at ``s3://`` URLs              s3fs
gammapy    the ``gammapy-spectrum`` pipeline, ``esap_dask.iact``  gammapy, regions
=========  ====================================================  ======================

Examples
--------
>>> install_hint("ssh")
"pip install 'esap-dask[ssh]'"
"""

from __future__ import annotations

import importlib.util

__all__ = [
    "EXTRAS",
    "FACILITY_EXTRAS",
    "MissingExtra",
    "extra_of",
    "install_hint",
    "missing_module",
    "require",
]

#: extra -> the top-level modules of it that esap-dask imports.
EXTRAS: dict[str, tuple[str, ...]] = {
    "service": (
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "vo_models",
        "multipart",
        "jwt",
        "jinja2",
    ),
    "ssh": ("asyncssh",),
    "s3": ("s3fs", "aiobotocore", "botocore"),
    "gammapy": ("gammapy", "regions"),
}

#: facility type -> the extra its cluster manager needs.
FACILITY_EXTRAS = {"ssh": "ssh"}


class MissingExtra(ModuleNotFoundError):
    """A feature needs an optional extra that is not installed; the message says how to add it."""

    def __init__(self, extra: str, module: str, feature: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(
            f"{feature} needs the optional extra '{extra}' ({module} is not installed): "
            f"{install_hint(extra)}",
            name=module,
        )


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` into the current environment."""
    return f"pip install 'esap-dask[{extra}]'"


def extra_of(err: BaseException) -> tuple[str, str] | None:
    """``(extra, module)`` when ``err`` (or what caused it) is a missing module of an extra.

    Follows ``__cause__``/``__context__``, so a library's own ImportError that wraps
    the ModuleNotFoundError (fsspec's "Install s3fs to access S3") is recognised too.
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MissingExtra):
            return e.extra, e.module
        name = getattr(e, "name", None) if isinstance(e, ImportError) else None
        if name:
            top = name.split(".")[0]
            for extra, modules in EXTRAS.items():
                if top in modules:
                    return extra, top
        e = e.__cause__ or e.__context__
    return None


def missing_module(extra: str) -> str | None:
    """The first module of ``extra`` that cannot be imported here, or None when all can.

    Only looks the modules up (``importlib.util.find_spec``); nothing is imported.
    """
    for module in EXTRAS[extra]:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def require(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtra` when ``extra`` is not installed; ``feature`` needs it.

    Examples
    --------
    >>> require("ssh", "facility 'cluster' (type ssh)")  # doctest: +SKIP
    MissingExtra: facility 'cluster' (type ssh) needs the optional extra 'ssh' (asyncssh is
    not installed): pip install 'esap-dask[ssh]'
    """
    module = missing_module(extra)
    if module is not None:
        raise MissingExtra(extra, module, feature)
