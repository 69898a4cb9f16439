"""Re-run a store's recorded run and tell whether its products come out identical.

``esap-dask reproduce STORE --store NEW [--run RUN]`` reads what the store recorded — per
observation its input (path or value), the input's SHA-256, the run that made it; per run
the pipeline version and parameters — and then:

1. refuses, naming what differs, when the installed pipeline has another version, or when
   an input file is missing or its content changed (SHA-256 against the ledger);
2. maps the same pipeline with the same parameters over the same inputs into ``NEW``;
3. compares every product of every observation, bit for bit (NaN equal to NaN).

Without ``--run`` every done observation is reproduced, provided they were all made with
one version and one set of parameters; otherwise the message lists the runs to choose from.

A store is data, possibly from someone else: the pipeline it names must be one of the
catalog (``esap-dask pipelines``). A ``.py`` file named in its attrs is imported — its code
run — only with ``allow_code=True`` (``esap-dask reproduce --allow-code``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esap_dask.catalogs.workflows import get_pipeline, list_pipelines
from esap_dask.engine.ledger import DONE, read_columns
from esap_dask.engine.observations import Observation, sha256_file
from esap_dask.errors import Remedy, Worded
from esap_dask.store import StoreError, esap_attrs, open_store, read

__all__ = ["Reproduction", "ReproductionError", "reproduce"]


class ReproductionError(Worded, RuntimeError):
    """The recorded run cannot be reproduced as it was (inputs or software changed)."""


@dataclass
class Reproduction:
    """The outcome: how many observations, whether all products are identical, and where not."""

    store: str
    new_store: str
    run: str | None
    observations: int
    identical: bool
    differences: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return self.__dict__.copy()


def _recorded_runs(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["run"]: r for r in meta.get("runs", [])}


def _select(group: Any, meta: Mapping[str, Any], run: str | None) -> tuple[np.ndarray, dict]:
    """Rows to reproduce and the run record (version, params) they share."""
    runs = _recorded_runs(meta)
    cols = read_columns(group, ["run", "status"])
    made_by = cols["run"].astype(object)
    done = cols["status"] == DONE
    if run is not None:
        if run not in runs:
            raise ReproductionError(
                f"run {run!r} is not recorded in the store (runs: {', '.join(runs) or 'none'})"
            )
        rows = np.flatnonzero(done & (made_by == run))
        return rows, runs[run]
    rows = np.flatnonzero(done)
    keys = {
        (runs[r]["version"], repr(sorted(runs[r]["params"].items())))
        for r in set(made_by[rows])
        if r in runs
    }
    if len(keys) > 1:
        raise ReproductionError(
            "the store's observations were made with different versions or parameters",
            Remedy(
                f"choose one run with run= (runs: {', '.join(runs)})",
                f"choose one run with --run (runs: {', '.join(runs)})",
            ),
        )
    if not len(rows):
        raise ReproductionError("the store has no done observation to reproduce")
    return rows, runs[str(made_by[rows[0]])]


def _check_inputs(sources: np.ndarray, checksums: np.ndarray) -> None:
    problems = []
    for source, checksum in zip(sources, checksums, strict=True):
        if not checksum:
            continue  # a plain value, not a file
        if not os.path.isfile(source):
            problems.append(f"{source}: missing")
        elif sha256_file(source) != checksum:
            problems.append(f"{source}: content changed since it was processed")
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise ReproductionError(f"{len(problems)} input(s) differ from the record: {shown}")


def _values_of(sources: np.ndarray, checksums: np.ndarray, ids: np.ndarray) -> list[Any]:
    """The observations as the first run saw them: files by path, values by their id."""
    out: list[Any] = []
    for source, checksum, oid in zip(sources, checksums, ids, strict=True):
        if checksum or "://" in source:
            out.append(str(source))
        else:  # a plain value: run numbers come back as ints
            text = str(source)
            value: Any = int(text) if text.lstrip("-").isdigit() else text
            out.append(Observation(id=str(oid), value=value, kind="value"))
    return out


def _trusted_pipeline(name: str, allow_code: bool) -> str:
    """``name`` when it is a catalog pipeline (or code is allowed); ReproductionError otherwise."""
    if allow_code or name in {p.name for p in list_pipelines()}:
        return name
    raise ReproductionError(
        f"the store names the pipeline {name!r}, which is not in the catalog (esap-dask "
        "pipelines); loading it would run code the store points at",
        Remedy(
            "pass allow_code=True if you trust this store and that file",
            "Pass --allow-code if you trust this store and that file",
        ),
    )


def compare(old: Any, new: Any, variables: list[str], ids: np.ndarray) -> dict[str, list[str]]:
    """Observations whose products differ, per variable (empty when identical)."""
    new_rows = {str(i): k for k, i in enumerate(read(new, "obs"))}
    old_rows = {str(i): k for k, i in enumerate(read(old, "obs"))}
    order_old = np.array([old_rows[str(i)] for i in ids])
    order_new = np.array([new_rows[str(i)] for i in ids])
    differences: dict[str, list[str]] = {}
    for name in variables:
        a, b = read(old, name)[order_old], read(new, name)[order_new]
        nan_equal = (np.isnan(a) & np.isnan(b)) if a.dtype.kind in "fc" else False
        same = ((a == b) | nan_equal).reshape(len(ids), -1).all(axis=1)
        if not same.all():
            differences[name] = [str(i) for i in ids[~same]]
    return differences


def reproduce(
    store: str,
    new_store: str,
    *,
    run: str | None = None,
    client: Any = None,
    facility: str = "local",
    allow_code: bool = False,
) -> Reproduction:
    """Re-run ``store``'s recorded run into ``new_store`` and compare (see the module doc).

    ``allow_code``: load the pipeline the store names even when it is not in the catalog
    (a ``.py`` file: its code runs here). Without it such a store is refused.
    """
    from esap_dask.engine.mapper import map_observations

    if os.path.exists(new_store):
        raise StoreError(
            f"{new_store}: already exists",
            Remedy("give a new store to reproduce into", "give a new --store to reproduce into"),
        )
    old = open_store(store, mode="r")
    meta = esap_attrs(old)
    rows, record = _select(old, meta, run)
    pipeline = get_pipeline(_trusted_pipeline(str(meta.get("pipeline")), allow_code))
    if pipeline.version != record["version"]:
        raise ReproductionError(
            f"the store was made with {pipeline.name} {record['version']}, the installed "
            f"pipeline is version {pipeline.version}; install that version to reproduce it"
        )
    ids = read(old, "obs").astype(object)[rows]
    recorded = read_columns(old, ["source", "checksum"])
    sources = recorded["source"].astype(object)[rows]
    checksums = recorded["checksum"].astype(object)[rows]
    _check_inputs(sources, checksums)
    summary = map_observations(
        pipeline,
        _values_of(sources, checksums, ids),
        new_store,
        client=client,
        params=record["params"],
        facility=facility,
        progress=False,
    )
    new = open_store(new_store, mode="r")
    variables = [v["name"] for v in meta["schema"]["variables"]]
    differences = compare(old, new, variables, ids)
    if summary.failed:
        differences.setdefault("(failed)", []).extend(f["observation"] for f in summary.failures)
    return Reproduction(store, new_store, run, len(rows), not differences, differences)
