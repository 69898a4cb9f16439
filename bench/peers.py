"""esap-dask against fair peers: the same work, end to end, on one shared LocalCluster.

``python -m bench.peers [--quick] [--repeats 5] [--case tiny,tiny-files,hess,...]``
(cases: tiny, tiny-files, hess, tiny-100k, realistic, rss; default all)

Every contender goes from the observation list to a consolidated Zarr v3 store that
``xr.open_zarr`` opens, with the same products (values and ``obs`` order) as esap-dask's;
the stores of the warm-up and of the first timed round are checked against esap-dask's.

Contenders (each a driver process of its own, started once per case and kept, so that
the driver's peak RSS is its own; ``VmHWM`` is reset through ``/proc/self/clear_refs``
before every run and read after it):

- ``esap-dask``: ``map_observations`` with the client;
- ``batched client.map``: the observations in 4 tasks per worker, each returning stacked
  numpy arrays; the driver writes one store with xarray;
- ``dask.bag 2`` / ``8`` / ``32``: ``from_sequence`` with that many partitions,
  ``map_partitions`` returning stacked arrays, then the same write; the best of them is
  "dask.bag";
- ``Parsl HTEX``: Parsl's HighThroughputExecutor (2 workers x 1 core on this machine, its
  own processes, started before the timing and warmed up), 4 batched apps per worker;
- ``serial``: a loop in the driver, then the same write;
- ``one task per obs (reference)``: ``client.map`` of one task per observation, gather,
  an N-way ``xr.concat``, ``to_zarr``; run once per case, after the rounds, and kept out
  of the "best peer" (it is the slowest way to write it);
- ``esap-dask rerun``: esap-dask again on its complete store (nothing changed; the peers
  must redo all their work).

The ``rss`` case runs esap-dask alone at 100 to 100,000 tiny observations, a fresh driver
process per size, for its driver's peak RSS (it should stay flat).

After one warm-up run of each (imports on the workers, page cache), ``--repeats`` rounds
run every contender once, in an order rotated every round so that the machine's load
(shared, noisy) hits every contender alike. Times are medians with min and max; the
ratio is peer time / esap-dask time (above 1: esap-dask is faster), against the best
distributed peer (batched ``client.map``, the best ``dask.bag``, Parsl) and against serial.

The figures are merged into ``bench/results.json`` (cases ``peers/<case>``; the suite's
``peers`` case runs this module) and ``docs/benchmarks/peers.md`` is written from them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks" / "peers.md"
HESS = ROOT.parent / "shared" / "data" / "hess-dl3-dr1" / "data"
WORKERS = 2
TASKS_PER_WORKER = 4
BAG_PARTITIONS = (2, 8, 32)
ESAP, RERUN, BATCHED, PARSL, SERIAL = (
    "esap-dask",
    "esap-dask rerun",
    "batched client.map",
    "Parsl HTEX",
    "serial",
)
REFERENCE = "one task per obs (reference)"
BAGS = [f"dask.bag {p}" for p in BAG_PARTITIONS]
DISTRIBUTED_PEERS = [BATCHED, *BAGS, PARSL]
CASES = ("tiny", "tiny-files", "hess", "tiny-100k", "realistic", "rss")
#: Sizes of the driver-RSS case (tiny observations, esap-dask only).
RSS_SIZES = (100, 1_000, 10_000, 100_000)


# ---------------------------------------------------------------- the work itself


@cache
def _pipeline(name: str) -> tuple[Callable[..., Any], dict[str, Any], Any]:
    """The function, resolved default parameters and schema of a catalog pipeline."""
    import esap_dask

    pipe = esap_dask.get_pipeline(name)
    params = pipe.resolve({})
    return pipe.function, params, pipe.output_schema(params)


def _stack(results: Sequence[dict[str, Any]], schema: Any) -> dict[str, np.ndarray]:
    """Per-observation result dicts as one array per variable, ``obs`` first."""
    out = {}
    for v in schema.variables:
        values = [r[v.name] for r in results]
        out[v.name] = (
            np.asarray(values, dtype=object)
            if v.dtype == "str"
            else np.asarray(values, dtype=v.dtype)
        )
    return out


def run_batch(pipeline: str, items: Sequence[Any]) -> dict[str, np.ndarray]:
    """One task of the batched peers: run ``pipeline`` on ``items``; stacked arrays."""
    fn, params, schema = _pipeline(pipeline)
    return _stack([fn(x, **params) for x in items], schema)


def parsl_batch(pipeline: str, items: Sequence[Any]) -> dict[str, np.ndarray]:
    """:func:`run_batch` as a Parsl app (Parsl ships the function's code, not its module)."""
    from bench.peers import run_batch

    return run_batch(pipeline, items)


def run_partition(items: Sequence[Any], pipeline: str) -> list[dict[str, np.ndarray]]:
    """``dask.bag.map_partitions``'s function: one stacked dict per partition."""
    return [run_batch(pipeline, list(items))]


def _concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def write_store(
    store: str, pipeline: str, ids: Sequence[str], arrays: dict[str, np.ndarray]
) -> None:
    """One consolidated Zarr v3 store with xarray, as a peer's driver writes it."""
    import xarray as xr

    _, _, schema = _pipeline(pipeline)
    ds = xr.Dataset(
        {v.name: (("obs", *v.dims), arrays[v.name]) for v in schema.variables},
        coords={
            "obs": np.asarray(ids, dtype=object),
            **{c.name: np.asarray(c.values) for c in schema.coords},
        },
    )
    ds.to_zarr(store, mode="w", zarr_format=3, consolidated=True)


def batches(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``items`` in ``n`` contiguous batches of nearly equal size (order kept)."""
    n = max(1, min(n, len(items)))
    k, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (i < r)
        out.append(list(items[start:end]))
        start = end
    return out


def obs_id(item: Any) -> str:
    """The observation id esap-dask gives ``item`` (file name, or the value's text)."""
    from esap_dask.engine.observations import Observation

    return Observation.of(item).id


# ---------------------------------------------------------------- drivers (subprocesses)


class Driver:
    """The side of one contender: connected once; runs the work into a store on request."""

    def __init__(
        self, contender: str, address: str, pipeline: str, items: list[Any], work: Path
    ) -> None:
        self.contender, self.pipeline, self.items = contender, pipeline, items
        # the ids the peers write (esap-dask makes its own: its driver's RSS holds none of these)
        self.ids = [] if contender in (ESAP, RERUN) else [obs_id(x) for x in items]
        self.client: Any = None
        self.parsl: Any = None
        if contender == PARSL:
            self._start_parsl(work)
        elif contender != SERIAL:
            from distributed import Client

            self.client = Client(address)

    def _start_parsl(self, work: Path) -> None:
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        htex = HighThroughputExecutor(
            label="htex",
            max_workers_per_node=WORKERS,
            cores_per_worker=1,
            address="127.0.0.1",
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        )
        parsl.load(
            Config(
                executors=[htex],
                run_dir=str(work / "parsl-runinfo"),
                usage_tracking=0,
                initialize_logging=False,
            )
        )
        self.parsl = parsl.python_app(parsl_batch, executors=["htex"])

    def run(self, store: str, count: int | None) -> None:
        items = self.items[:count] if count else self.items
        ids, name = self.ids[: len(items)], self.pipeline
        c = self.contender
        if c in (ESAP, RERUN):
            import esap_dask

            s = esap_dask.map_observations(name, items, store, client=self.client, progress=False)
            expected = 0 if c == RERUN else len(items)
            if s.processed != expected or not s.ok:
                raise RuntimeError(f"{c}: {s.processed} processed, failures {s.failures[:3]}")
            return
        if c == SERIAL:
            arrays = run_batch(name, items)
        elif c == BATCHED:
            futures = self.client.map(
                run_batch,
                [name] * WORKERS * TASKS_PER_WORKER,
                batches(items, WORKERS * TASKS_PER_WORKER),
                pure=False,
            )
            arrays = _concat(self.client.gather(futures))
        elif c in BAGS:
            import dask.bag as db

            bag = db.from_sequence(items, npartitions=int(c.split()[-1]))
            arrays = _concat(bag.map_partitions(run_partition, name).compute())
        elif c == PARSL:
            futures = [self.parsl(name, b) for b in batches(items, WORKERS * TASKS_PER_WORKER)]
            arrays = _concat([f.result() for f in futures])
        elif c == REFERENCE:
            self._one_task_per_obs(store, items, ids)
            return
        else:
            raise ValueError(f"unknown contender {c!r}")
        write_store(store, name, ids, arrays)

    def _one_task_per_obs(self, store: str, items: list[Any], ids: list[str]) -> None:
        import xarray as xr

        fn, params, schema = _pipeline(self.pipeline)
        results = self.client.gather(self.client.map(fn, items, pure=False, **params))
        parts = [
            xr.Dataset(
                {v.name: (v.dims, np.asarray(r[v.name])) for v in schema.variables}
            ).expand_dims(obs=[i])
            for i, r in zip(ids, results, strict=True)
        ]
        ds = xr.concat(parts, dim="obs")
        ds = ds.assign_coords({c.name: np.asarray(c.values) for c in schema.coords})
        ds.to_zarr(store, mode="w", zarr_format=3, consolidated=True)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.parsl is not None:
            import parsl

            parsl.dfk().cleanup()


def driver_main(contender: str, address: str, spec: Path) -> None:
    """Serve run requests for one contender (:func:`bench.common.serve`)."""
    from bench.common import serve

    data = json.loads(spec.read_text())
    driver = Driver(contender, address, data["pipeline"], data["items"], spec.parent)

    def run(req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        driver.run(req["store"], req.get("count"))
        return {"seconds": time.perf_counter() - t0}

    try:
        serve(run, "PEERS")
    finally:
        driver.close()


class Contender:
    """The bench's handle on one driver process (:class:`bench.common.DriverProcess`)."""

    def __init__(self, name: str, address: str, spec: Path, log: Path) -> None:
        from bench.common import DriverProcess

        self.name = name
        argv = [sys.executable, "-m", "bench.peers", "--driver", name, "--address", address]
        self.process = DriverProcess(name, [*argv, "--spec", str(spec)], log, "PEERS")

    def run(self, store: Path, count: int | None = None) -> tuple[float, float]:
        """Seconds and the driver's peak RSS (MiB) of one run into ``store``."""
        answer = self.process.request({"store": str(store), "count": count})
        return answer["seconds"], answer["rss_mib"]

    def close(self) -> None:
        self.process.close()


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """One workload: a pipeline over an observation list, and who runs it."""

    name: str
    title: str
    pipeline: str
    items: list[Any]
    contenders: list[str]
    warm_count: int | None = None  # warm the peers on this many observations (None: all)
    reference: bool = True
    notes: list[str] = field(default_factory=list)


ALL = [ESAP, RERUN, BATCHED, *BAGS, PARSL, SERIAL]


def case_tiny(work: Path, quick: bool) -> Case:
    """10,000 tiny observations: helloworld on the values 1..10000."""
    return Case(
        "tiny", "10,000 tiny (helloworld on values)", "helloworld", list(range(1, 10_001)), ALL
    )


def case_tiny_files(work: Path, quick: bool) -> Case:
    """10,000 tiny files (100-150 bytes each, written under the bench's tmp dir)."""
    d = work / "tiny-files"
    d.mkdir()
    files = []
    for i in range(10_000):
        f = d / f"obs{i:05d}.dat"
        f.write_bytes(b"x" * (100 + i % 50))
        files.append(str(f))
    return Case("tiny-files", "10,000 tiny files (helloworld)", "helloworld", files, ALL)


def case_hess(work: Path, quick: bool) -> Case:
    """The 105 H.E.S.S. DL3 DR1 files through dl3-products (read in place, never copied)."""
    files = sorted(str(p) for p in HESS.glob("*.fits.gz"))
    if not files:
        raise SystemExit(f"no H.E.S.S. DR1 files in {HESS}; it must hold the release's *.fits.gz")
    return Case(
        "hess", f"{len(files)} H.E.S.S. DR1 files, dl3-products", "dl3-products", files, ALL
    )


def case_realistic(work: Path, quick: bool) -> Case:
    """2,000 (``--quick``: 200) synthetic GADF files of 20,000 events, as bench.scaling."""
    from esap_dask.iact.synthetic import write_observations

    n = 200 if quick else 2000
    files = [str(f) for f in write_observations(work / "gadf", n, seed=7, n_events=20_000)]
    return Case(
        "realistic",
        f"{n:,} realistic synthetic GADF files, dl3-products",
        "dl3-products",
        files,
        ALL,
        warm_count=100,
    )


def case_tiny_100k(work: Path, quick: bool) -> Case:
    """100,000 (``--quick``: 20,000) tiny observations; esap-dask, batched client.map, serial."""
    n = 20_000 if quick else 100_000
    return Case(
        "tiny-100k",
        f"{n:,} tiny (helloworld on values)",
        "helloworld",
        list(range(1, n + 1)),
        [ESAP, RERUN, BATCHED, "dask.bag 8", "dask.bag 32", PARSL, SERIAL],
        reference=False,
        notes=[
            f"at {n:,} observations dask.bag runs with 8 and 32 partitions only (2 was the "
            "slowest at 10,000), and one task per observation is not run (206 s at 100,000 "
            "in bench.mapper_overhead)"
        ],
    )


CASE_FUNCTIONS = {
    "tiny": case_tiny,
    "tiny-files": case_tiny_files,
    "hess": case_hess,
    "realistic": case_realistic,
    "tiny-100k": case_tiny_100k,
}


# ---------------------------------------------------------------- measuring


def check_equal(store: Path, reference: Path, pipeline: str, who: str) -> None:
    """Raise unless ``store`` holds the products of ``reference`` (values and obs order)."""
    import xarray as xr

    _, _, schema = _pipeline(pipeline)
    with xr.open_zarr(store) as got, xr.open_zarr(reference) as want:
        if [str(x) for x in got.obs.values] != [str(x) for x in want.obs.values]:
            raise AssertionError(f"{who}: obs differ from esap-dask's ({store})")
        for v in schema.variables:
            a, b = got[v.name].values, want[v.name].values
            if v.dtype == "str":
                same = a.shape == b.shape and all(
                    str(x) == str(y) for x, y in zip(a.ravel(), b.ravel(), strict=True)
                )
            elif np.issubdtype(b.dtype, np.floating):
                same = a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
            else:
                same = np.array_equal(a, b)
            if not same:
                raise AssertionError(f"{who}: {v.name} differs from esap-dask's ({store})")


def _rm(store: Path) -> None:
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(f"{store}.provenance", ignore_errors=True)
    for p in store.parent.glob(f"{store.name}*"):  # provenance and lock files, if any
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def tree_cpu() -> float:
    """CPU seconds (user + system) used so far by this process and every process under it.

    That is the whole bench: the shared cluster's scheduler (in this process) and workers,
    the contenders' drivers, Parsl's interchange and worker pools. Taken before and after a
    run, while every other contender sits idle, the difference is what the run cost the
    machine. On 2 cores no contender can take less wall time than half of it: a run that
    needs more CPU than a peer cannot be faster, however well it overlaps its parts.
    """
    import psutil

    me = psutil.Process()
    procs = me.children(recursive=True)
    seen = {p.pid for p in procs}
    for proc in psutil.process_iter(["cmdline"]):  # Parsl's pools leave the tree (daemonized)
        cmd = " ".join(proc.info["cmdline"] or ())
        if proc.pid not in seen and "process_worker_pool" in cmd:
            with contextlib.suppress(psutil.Error):
                procs += [proc, *proc.children(recursive=True)]
    total = 0.0
    for proc in [*procs, me]:  # this process last: the walk above is not the next run's
        try:
            t = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += t.user + t.system
    return total


def measure(case: Case, address: str, work: Path, repeats: int) -> dict[str, Any]:
    """Warm up, run ``repeats`` interleaved rounds, check the products; the raw figures."""
    cdir = work / case.name
    cdir.mkdir(exist_ok=True)
    spec = cdir / "spec.json"
    spec.write_text(json.dumps({"pipeline": case.pipeline, "items": case.items}))
    names = list(case.contenders) + ([REFERENCE] if case.reference else [])
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    drivers = {n: Contender(n, address, spec, cdir / f"{n.replace(' ', '_')}.log") for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    try:
        complete = cdir / "esap-complete.zarr"
        print(f"[{case.name}] warm-up", flush=True)
        drivers[ESAP].run(complete)  # also the store of the reruns, and the products' reference
        for n in names:
            if n in (ESAP, REFERENCE):
                continue
            store = cdir / f"warm-{n.replace(' ', '_')}.zarr"
            drivers[n].run(
                complete if n == RERUN else store, None if n == RERUN else case.warm_count
            )
            if n != RERUN and case.warm_count is None:
                check_equal(store, complete, case.pipeline, n)
            if n != RERUN:
                _rm(store)
        timed = [n for n in names if n != REFERENCE]
        for r in range(repeats):
            order = timed[r % len(timed) :] + timed[: r % len(timed)]
            for n in order:
                store = complete if n == RERUN else cdir / f"r{r}-{n.replace(' ', '_')}.zarr"
                c = tree_cpu()
                s, m = drivers[n].run(store)
                cpu[n].append(tree_cpu() - c)
                times[n].append(s)
                rss[n].append(m)
                if n != RERUN:
                    if r == 0 and n != ESAP:
                        check_equal(store, complete, case.pipeline, n)
                    _rm(store)
            print(
                f"[{case.name}] round {r + 1}/{repeats}: "
                + ", ".join(f"{n} {times[n][-1]:.2f}" for n in timed),
                flush=True,
            )
        if case.reference:
            store = cdir / "reference.zarr"
            s, m = drivers[REFERENCE].run(store)
            check_equal(store, complete, case.pipeline, REFERENCE)
            times[REFERENCE].append(s)
            rss[REFERENCE].append(m)
            _rm(store)
    finally:
        for d in drivers.values():
            d.close()
    return {
        "case": case,
        "times": times,
        "rss": rss,
        "cpu": cpu,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "started": started,
    }


def measure_rss(address: str, work: Path, repeats: int) -> dict[str, Any]:
    """esap-dask's driver peak RSS and time at each of :data:`RSS_SIZES` tiny observations.

    A fresh driver process per size (its RSS then holds only its imports and that size's
    runs), one warm-up run, then ``repeats`` runs into fresh stores.
    """
    cdir = work / "rss"
    cdir.mkdir(exist_ok=True)
    load_before, started = os.getloadavg(), datetime.now(UTC)
    out: dict[int, dict[str, list[float]]] = {}
    for n in RSS_SIZES:
        spec = cdir / f"spec-{n}.json"
        spec.write_text(json.dumps({"pipeline": "helloworld", "items": list(range(1, n + 1))}))
        driver = Contender(ESAP, address, spec, cdir / f"esap-{n}.log")
        try:
            driver.run(cdir / f"warm-{n}.zarr")
            _rm(cdir / f"warm-{n}.zarr")
            out[n] = {"seconds": [], "rss": []}
            for r in range(repeats):
                s, m = driver.run(cdir / f"r{r}-{n}.zarr")
                out[n]["seconds"].append(s)
                out[n]["rss"].append(m)
                _rm(cdir / f"r{r}-{n}.zarr")
        finally:
            driver.close()
        print(
            f"[rss] {n:,}: {statistics.median(out[n]['rss']):.0f} MiB, "
            f"{statistics.median(out[n]['seconds']):.2f} s",
            flush=True,
        )
    return {
        "sizes": out,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "started": started,
    }


def rss_records(result: dict[str, Any]) -> list[Any]:
    """The RSS case's figures: per size, and the largest over the smallest."""
    from bench.common import summarize

    sizes = result["sizes"]
    small, large = min(sizes), max(sizes)
    out = []
    for n, figures in sizes.items():
        out.append(summarize(f"peers/rss/{n}", "esap-dask RSS", "MiB", figures["rss"]))
        out.append(summarize(f"peers/rss/{n}", "esap-dask time", "s", figures["seconds"]))
    out.append(
        summarize(
            "peers/rss",
            f"RSS at {large:,} / at {small:,}",
            "ratio",
            [statistics.median(sizes[large]["rss"]) / statistics.median(sizes[small]["rss"])],
        )
    )
    return out


def rss_markdown(result: dict[str, Any]) -> list[str]:
    """The RSS case's lines of docs/benchmarks/peers.md."""
    sizes = result["sizes"]
    small = statistics.median(sizes[min(sizes)]["rss"])
    lb, la = result["load_before"], result["load_after"]
    lines = [
        "",
        "esap-dask's driver peak RSS by run size (helloworld on values; a fresh driver",
        "process per size, one warm-up run, then medians of the timed runs; load "
        f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} before, {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} after):",
        "",
        "| observations | driver peak RSS MiB | / at the smallest | run s |",
        "|---:|---:|---:|---:|",
    ]
    for n, figures in sizes.items():
        m = statistics.median(figures["rss"])
        lines.append(
            f"| {n:,} | {m:.0f} | {m / small:.2f}× | {statistics.median(figures['seconds']):.2f} |"
        )
    return lines


# ---------------------------------------------------------------- reporting


def _best_peer(times: dict[str, list[float]]) -> str | None:
    peers = [n for n in DISTRIBUTED_PEERS if times.get(n)]
    return min(peers, key=lambda n: statistics.median(times[n])) if peers else None


def records(result: dict[str, Any]) -> list[Any]:
    """The figures of one case as suite records (case ``peers/<case>``)."""
    from bench.common import summarize

    case: Case = result["case"]
    times, rss = result["times"], result["rss"]
    key = f"peers/{case.name}"
    esap = times[ESAP]
    out = []
    best = _best_peer(times)
    if best:
        out.append(summarize(key, f"best peer / esap ({best})", "s", esap, baseline=times[best]))
    out.append(summarize(key, "serial / esap", "s", esap, baseline=times[SERIAL]))
    out.append(summarize(key, "esap-dask rerun / esap", "s", esap, baseline=times[RERUN]))
    for n, values in times.items():
        if values:
            out.append(summarize(key, f"{n} time", "s", values))
            out.append(summarize(key, f"{n} RSS", "MiB", rss[n]))
            if result.get("cpu", {}).get(n):
                out.append(summarize(key, f"{n} CPU", "s, all processes", result["cpu"][n]))
    when = result["started"].strftime("%Y-%m-%d %H:%M UTC")
    for label in ("before", "after"):
        load = result[f"load_{label}"]
        out.append(summarize(key, f"load average {label}", f"1/5/15 min, {when}", [load[0]]))
        out[-1].min, out[-1].max = min(load), max(load)
    return out


def print_table(result: dict[str, Any]) -> None:
    """The case's medians, min-max, ratios and driver peak RSS."""
    case: Case = result["case"]
    times, rss = result["times"], result["rss"]
    e = statistics.median(times[ESAP])
    best = _best_peer(times)
    lb, la = result["load_before"], result["load_after"]
    print(
        f"\n{case.title}: {len(times[ESAP])} rounds; load {lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} "
        f"before, {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} after"
    )
    cpu = result.get("cpu", {})
    print(
        f"{'contender':32} {'median s':>9} {'min-max s':>15} {'/ esap':>7} {'RSS MiB':>8} "
        f"{'CPU s':>6}"
    )
    for n, values in times.items():
        if not values:
            continue
        m = statistics.median(values)
        tag = "  <- best distributed peer" if n == best else ""
        print(
            f"{n:32} {m:9.3f} {min(values):7.3f}-{max(values):<7.3f} {m / e:7.2f} "
            f"{statistics.median(rss[n]):8.0f} "
            + (f"{statistics.median(cpu[n]):6.2f}" if cpu.get(n) else f"{'—':>6}")
            + tag
        )
    for note in case.notes:
        print(f"note: {note}")


def _fmt(values: list[float] | None, e: float) -> str:
    if not values:
        return "—"
    m = statistics.median(values)
    return f"{m:.2f} s ({m / e:.2f}×)"


#: What the benchmarks themselves write: a change there does not make the measured code dirty
#: (every case after the first found the figures of the one before and said "-dirty").
BENCH_OUTPUTS = ("bench/results.json", "bench/peers-raw.json", "docs/benchmarks")


def revision() -> str:
    """Which esap-dask was measured: ``$ESAP_BENCH_REVISION``, else the commit of ROOT.

    ``-dirty`` when a tracked file other than :data:`BENCH_OUTPUTS` differs from it.
    """
    if os.environ.get("ESAP_BENCH_REVISION"):
        return os.environ["ESAP_BENCH_REVISION"]

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "unknown revision"
    changed = git(
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        *(f":(exclude){p}" for p in BENCH_OUTPUTS),
    )
    return f"commit {head.stdout.strip()}" + ("-dirty" if changed.stdout.strip() else "")


def _best_bag(times: dict[str, list[float]]) -> str | None:
    """The fastest ``dask.bag`` partition count of a case (None: no bag ran)."""
    bags = [n for n in BAGS if times.get(n)]
    return min(bags, key=lambda n: statistics.median(times[n])) if bags else None


def _figure_rows(
    results: list[dict[str, Any]], figure: str, digits: int, names: tuple[str, ...]
) -> list[str]:
    """One table row a case: the median of ``figure`` ("rss", "cpu") for each of ``names``
    (``"bag"`` standing for the case's fastest ``dask.bag``); cases without it left out."""
    rows = []
    for res in results:
        values = res.get(figure)
        if not values:
            continue
        bag = _best_bag(res["times"])
        cells = [
            f"{statistics.median(values[c]):.{digits}f}" if c and values.get(c) else "—"
            for c in (bag if n == "bag" else n for n in names)
        ]
        rows.append(f"| {res['case'].title} | " + " | ".join(cells) + " |")
    return rows


def markdown(
    results: list[dict[str, Any]],
    command: str,
    rss: dict[str, Any] | None = None,
    measured: str | None = None,
) -> str:
    """docs/benchmarks/peers.md: the table, the command, the load averages and the date."""
    lines = [
        "# esap-dask against fair peers",
        "",
        "Written by `python -m bench.peers` (the suite's `peers` case). One shared LocalCluster",
        f"of {WORKERS} workers × 1 thread (Parsl: its HighThroughputExecutor with {WORKERS} "
        "workers × 1 core), end to end from the observation list to a consolidated Zarr v3",
        "store that `xr.open_zarr` opens; every contender's products are checked equal to",
        "esap-dask's (values and `obs` order). One warm-up run each, then interleaved rounds",
        "in rotating order; medians (min–max in `bench/results.json`, cases `peers/*`).",
        "Ratios are peer time / esap-dask time: **above 1, esap-dask is faster**. The best",
        "distributed peer is the fastest of batched `client.map` (4 tasks per worker), `dask.bag`",
        f"(best of {'/'.join(map(str, BAG_PARTITIONS))} partitions) and Parsl HTEX (4 batched "
        "apps per worker); one task per observation is a labelled reference only, run once.",
        "",
        f"Command: `{command}`; esap-dask measured: {measured or revision()}.",
        "",
        "| case | esap-dask | batched `client.map` | `dask.bag` (best) | Parsl HTEX | serial loop |"
        " best peer / esap | serial / esap | one task per obs (ref., once) | esap rerun |",
        "|---|---|---|---|---|---|---:|---:|---|---|",
    ]
    for res in results:
        t = res["times"]
        e = statistics.median(t[ESAP])
        bag = _best_bag(t)
        best = _best_peer(t)
        bag_cell = f"{_fmt(t[bag], e)} [{bag.split()[-1]}]" if bag else "—"
        ratio_best = f"{statistics.median(t[best]) / e:.2f}× ({best})" if best else "—"
        lines.append(
            f"| {res['case'].title} | {e:.2f} s | {_fmt(t.get(BATCHED), e)} | {bag_cell} | "
            f"{_fmt(t.get(PARSL), e)} | {_fmt(t.get(SERIAL), e)} | {ratio_best} | "
            f"{statistics.median(t[SERIAL]) / e:.2f}× | {_fmt(t.get(REFERENCE), e)} | "
            f"{statistics.median(t[RERUN]):.2f} s |"
        )
    lines += [
        "",
        "Driver peak RSS (VmHWM of each contender's driver process, MiB, median):",
        "",
        "| case | "
        + " | ".join([ESAP, BATCHED, "dask.bag (best)", PARSL, SERIAL, "one task per obs"])
        + " |",
        "|---|" + "---:|" * 6,
    ]
    lines += _figure_rows(results, "rss", 0, (ESAP, BATCHED, "bag", PARSL, SERIAL, REFERENCE))
    cpu = _figure_rows(results, "cpu", 2, (ESAP, BATCHED, "bag", PARSL, SERIAL))
    if cpu:
        lines += [
            "",
            "CPU seconds a run costs the machine (user + system of every process of the bench:",
            "scheduler, workers, driver, Parsl's pools; `bench.peers.tree_cpu`, median). On 2",
            "cores a run's wall time is at least half its CPU seconds:",
            "",
            "| case | " + " | ".join([ESAP, BATCHED, "dask.bag (best)", PARSL, SERIAL]) + " |",
            "|---|" + "---:|" * 5,
            *cpu,
        ]
    if rss is not None:
        lines += rss_markdown(rss)
    lines += [
        "",
        "Load average (1/5/15 min) and time of each case, on 2 cores shared with other",
        "users (the noise hits every contender alike: rounds are interleaved):",
        "",
    ]
    for res in results:
        lb, la = res["load_before"], res["load_after"]
        lines.append(
            f"- {res['case'].title}: {res['started']:%Y-%m-%d %H:%M} UTC, load "
            f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} before, "
            f"{la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} after, {len(res['times'][ESAP])} rounds, "
            f"esap-dask {min(res['times'][ESAP]):.2f}–{max(res['times'][ESAP]):.2f} s"
        )
    for res in results:
        lines += [f"- {note}" for note in res["case"].notes]
    lines += [
        "- Each contender's driver is its own process, started once per case; its peak RSS is",
        "  reset (`/proc/self/clear_refs`) before every run, so it includes what that driver",
        "  imported and kept from earlier runs, as a long-lived notebook kernel would.",
        "- The realistic case warms the peers up on its first 100 files (esap-dask: all of",
        "  them, as the store its reruns use); the page cache is warm from writing the files.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 realistic files, 20,000 in the largest tiny case, 3 rounds",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--case", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="print only; bench/results.json and docs are left alone",
    )
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver_main(args.driver, args.address, args.spec)
        return
    names = args.case.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--case: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    repeats = args.repeats or (3 if args.quick else 5)
    command = "python -m bench.peers " + " ".join(sys.argv[1:])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*filter(None, [os.environ.get("PYTHONPATH")]), str(ROOT)]
    )  # workers import bench
    # Parsl starts its interchange and worker pools as commands of this environment
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])

    from distributed import LocalCluster

    from bench.common import report

    raw = _load_raw()
    with (
        tempfile.TemporaryDirectory(prefix="esap-peers-") as tmp,
        LocalCluster(n_workers=WORKERS, threads_per_worker=1, dashboard_address=":0") as cluster,
    ):
        work = Path(tmp)
        for name in names:
            if name == "rss":
                rss = measure_rss(cluster.scheduler_address, work, repeats)
                figures = rss_records(rss)
                raw["rss"] = {**_stamp(rss, command), "sizes": rss["sizes"]}
            else:
                case = CASE_FUNCTIONS[name](work, args.quick)
                result = measure(case, cluster.scheduler_address, work, repeats)
                print_table(result)
                figures = records(result)
                raw[name] = {
                    **_stamp(result, command),
                    "title": case.title,
                    "notes": case.notes,
                    "times": result["times"],
                    "rss": result["rss"],
                    "cpu": result["cpu"],
                }
            if not args.no_record:  # after every case: a long run stopped early keeps its figures
                report(figures)
                RAW.write_text(json.dumps(raw, indent=1) + "\n")
                DOCS.parent.mkdir(parents=True, exist_ok=True)
                DOCS.write_text(markdown_of(raw))
                print(f"wrote {DOCS} and merged the figures into bench/results.json")


#: Every case's last figures (times and RSS of every round), from which peers.md is written:
#: cases measured by separate commands land in one table.
RAW = ROOT / "bench" / "peers-raw.json"


def _load_raw() -> dict[str, Any]:
    return json.loads(RAW.read_text()) if RAW.exists() else {}


def _stamp(result: dict[str, Any], command: str) -> dict[str, Any]:
    return {
        "load_before": list(result["load_before"]),
        "load_after": list(result["load_after"]),
        "started": result["started"].isoformat(),
        "command": command,
        "revision": revision(),
    }


def markdown_of(raw: dict[str, Any]) -> str:
    """docs/benchmarks/peers.md from every case in ``raw`` (in :data:`CASES` order)."""
    results = []
    for name in CASES:
        entry = raw.get(name)
        if entry is None or name == "rss":
            continue
        results.append(
            {
                "case": SimpleNamespace(name=name, title=entry["title"], notes=entry["notes"]),
                "times": entry["times"],
                "rss": entry["rss"],
                "cpu": entry.get("cpu"),
                "load_before": entry["load_before"],
                "load_after": entry["load_after"],
                "started": datetime.fromisoformat(entry["started"]),
            }
        )
    rss = None
    if "rss" in raw:
        entry = raw["rss"]
        rss = {
            "sizes": {int(n): v for n, v in entry["sizes"].items()},
            "load_before": entry["load_before"],
            "load_after": entry["load_after"],
        }
    commands = sorted({e["command"] for e in raw.values()})
    revisions = sorted({e["revision"] for e in raw.values()})
    return markdown(results, "`, `".join(commands), rss, ", ".join(revisions))


if __name__ == "__main__":
    main()
