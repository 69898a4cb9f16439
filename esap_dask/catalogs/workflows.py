"""The workflow catalog: built-in and user pipelines, found by name or by file.

Pipelines are Python modules that define a module-level ``pipeline``
(:class:`esap_dask.Pipeline`). They are found, in this order (a later one of
the same name wins):

1. the built-in ``pipelines/`` directory of esap-dask;
2. each directory of the Dask config key ``esap.pipelines-path``;
3. packages that declare an ``esap_dask.pipelines`` entry point
   (``name = "package.module:pipeline"``).

A path to a ``.py`` file is accepted wherever a pipeline name is, so a user can
run a pipeline of their own without installing it.

Modules loaded from a file are registered with cloudpickle to be pickled by
value: workers on a grid site need esap-dask installed, not the user's file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import cloudpickle
import dask.config

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask.pipeline import Pipeline

__all__ = [
    "PipelineNotFound",
    "broken_pipelines",
    "get_pipeline",
    "list_pipelines",
    "pipeline_dirs",
]


class PipelineNotFound(LookupError):
    """No pipeline of that name or path."""


def pipeline_dirs() -> list[Path]:
    """The directories searched for pipeline modules, in order."""
    here = Path(__file__).resolve().parent.parent
    dirs = [here.parent / "pipelines", Path(sys.prefix) / "share" / "esap-dask" / "pipelines"]
    extra = dask.config.get("esap.pipelines-path") or []
    if isinstance(extra, str):
        extra = extra.split(os.pathsep)
    dirs += [Path(p).expanduser() for p in extra]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in unique:
            unique.append(d.resolve())
    return unique


_loaded: dict[Path, ModuleType] = {}


def _load_file(path: Path) -> Pipeline:
    path = path.resolve()
    module = _loaded.get(path)
    if module is None:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        name = f"esap_dask_pipelines.{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PipelineNotFound(f"{path}: not a loadable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        cloudpickle.register_pickle_by_value(module)
        _loaded[path] = module
    pipeline = getattr(module, "pipeline", None)
    if not isinstance(pipeline, Pipeline):
        raise PipelineNotFound(
            f"{path}: defines no module-level 'pipeline = esap_dask.Pipeline(...)'"
        )
    return pipeline


def _catalog() -> tuple[dict[str, Pipeline], dict[str, str]]:
    """Pipelines by name, and the modules that failed to load with their errors."""
    found: dict[str, Pipeline] = {}
    broken: dict[str, str] = {}
    for d in pipeline_dirs():
        for path in sorted(d.glob("*.py")):
            if path.name.startswith("_"):
                continue
            try:
                p = _load_file(path)
            except Exception as err:  # one broken module must not hide the others
                broken[str(path)] = f"{type(err).__name__}: {err}"
                continue
            found[p.name] = p
    for ep in entry_points(group="esap_dask.pipelines"):
        try:
            p = ep.load()
        except Exception as err:
            broken[f"entry point {ep.name}"] = f"{type(err).__name__}: {err}"
            continue
        if isinstance(p, Pipeline):
            found[p.name] = p
    return found, broken


def list_pipelines() -> list[Pipeline]:
    """All pipelines of the catalog that load, sorted by name (see :func:`broken_pipelines`)."""
    return sorted(_catalog()[0].values(), key=lambda p: p.name)


def broken_pipelines() -> dict[str, str]:
    """Pipeline modules of the catalog that fail to load, with their errors."""
    return _catalog()[1]


def get_pipeline(name: str | os.PathLike[str] | Pipeline) -> Pipeline:
    """The pipeline called ``name``, or defined in the ``.py`` file ``name``."""
    if isinstance(name, Pipeline):
        return name
    text = os.fspath(name)
    if text.endswith(".py"):
        path = Path(text)
        if not path.is_file():
            raise PipelineNotFound(f"pipeline file {text} does not exist")
        return _load_file(path)
    for d in pipeline_dirs():  # by convention dl3-products lives in dl3_products.py:
        conventional = d / f"{text.replace('-', '_')}.py"  # load it alone when it is there
        if conventional.is_file():
            with contextlib.suppress(Exception):
                found = _load_file(conventional)
                if found.name == text:
                    return found
    catalog, broken = _catalog()
    if text not in catalog:
        known = ", ".join(sorted(catalog)) or "none"
        hint = "".join(f"\n  {where} failed to load: {why}" for where, why in broken.items())
        raise PipelineNotFound(
            f"unknown pipeline {text!r} (known: {known}); give a name from "
            f"`esap-dask pipelines` or a path to a .py file defining `pipeline`{hint}"
        )
    return catalog[text]
