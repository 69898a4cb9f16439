"""esap-dask's gammapy-spectrum against gammapy's own parallel reduction, ``DatasetsMaker``.

``python -m bench.gammapy_peer [--quick] [--repeats N] [--case hess,synthetic]``

The same 1D reduction (gammapy's ``SpectrumDatasetMaker``, ``ReflectedRegionsBackgroundMaker``,
``SafeMaskMaker``, geometry and makers from :func:`esap_dask.iact.spectrum.make_makers`,
the On region at each file's ``RA_OBJ``/``DEC_OBJ``) over the same files, by:

- ``esap-dask``: ``map_observations("gammapy-spectrum", files, store, client=client)`` on a
  LocalCluster of 2 workers x 1 thread, started once before the timing (as a notebook has
  it); the workers read the files; the products land in a Zarr store;
- ``gammapy n_jobs=2``: ``DatasetsMaker(makers, stack_datasets=False, n_jobs=2,
  parallel_backend="multiprocessing").run(empty, observations, datasets=per_obs_empty)``
  where the observations come from ``DataStore.from_dir`` (H.E.S.S.) or
  ``Observation.read`` (synthetic files) -- reading included in the timing, as esap-dask
  reads them in its workers -- and one empty ``SpectrumDataset`` per observation carries
  its target's On region (``DatasetsMaker``'s ``datasets=`` argument); its output is the
  in-memory ``Datasets`` (gammapy has no store to write);
- ``gammapy n_jobs=1``: the same, serial;
- ``esap-dask rerun``: esap-dask again on its complete store, nothing changed (gammapy
  cannot skip: it redoes all the work).

Every contender is a driver process of its own (peak RSS of the driver: ``VmHWM`` reset
before every run, as in :mod:`bench.peers`). Runs that fail in esap-dask's warm-up are
tried alone with gammapy's serial ``DatasetsMaker``; those that fail in both are counted
and left out of every timed run (``DatasetsMaker`` stops at the first failure). After one
warm-up each, ``--repeats`` rounds run all contenders in rotating order. The counts and
counts_off of every observation of the first round's gammapy outputs are checked equal to
esap-dask's store (read back with :func:`esap_dask.iact.read_datasets`).

Figures: ``bench/results.json`` (cases ``gammapy/<case>``), ``docs/benchmarks/gammapy.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DriverProcess, serve
from bench.peers import _rm, revision

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks" / "gammapy.md"
HESS_DIR = ROOT.parent / "shared" / "data" / "hess-dl3-dr1"
WORKERS = 2
ESAP, RERUN, GP2, GP1 = "esap-dask", "esap-dask rerun", "gammapy n_jobs=2", "gammapy n_jobs=1"
CONTENDERS = [ESAP, RERUN, GP2, GP1]
CASES = ("hess", "synthetic")
WARM_FILES = 10  # gammapy's drivers warm up (imports, page cache) on this many files


# ---------------------------------------------------------------- gammapy's own reduction


def targets(files: list[str]) -> dict[int, tuple[float, float]]:
    """OBS_ID -> (RA_OBJ, DEC_OBJ) of each file's EVENTS header (the pipeline's On centre).

    The obs-index of H.E.S.S. DR1 holds these as float32, so the headers are read.
    """
    from astropy.io import fits

    out = {}
    for f in files:
        header = fits.getheader(f, "EVENTS")
        out[int(header["OBS_ID"])] = (float(header["RA_OBJ"]), float(header["DEC_OBJ"]))
    return out


def gammapy_reduce(files: list[str], data_store: str | None, n_jobs: int) -> Any:
    """gammapy's ``DatasetsMaker`` over ``files`` (read through ``data_store`` if given)."""
    from gammapy.data import DataStore, Observation, Observations
    from gammapy.makers import DatasetsMaker

    from esap_dask.iact.spectrum import make_makers

    centers = targets(files)
    if data_store:
        observations = DataStore.from_dir(data_store).get_observations(list(centers))
    else:
        observations = Observations([Observation.read(f) for f in files])
    point_like = observations[0].rad_max is not None
    empties, makers = [], None
    for obs in observations:
        empty, *chain = make_makers(point_like=point_like, center=centers[int(obs.obs_id)])
        empties.append(empty)
        makers = makers or chain  # the makers do not depend on the On region
    maker = DatasetsMaker(
        makers,
        stack_datasets=False,
        n_jobs=n_jobs,
        parallel_backend="multiprocessing",
    )
    return maker.run(empties[0], observations, datasets=empties)


def on_off_counts(datasets: Any) -> dict[str, list[list[int]]]:
    """OBS_ID (text) -> [counts, counts_off] of each dataset (DatasetsMaker's output order is
    the completion order; the obs id is each dataset's meta table's)."""
    out = {}
    for d in datasets:
        off = (
            np.zeros(d.counts.data.size, dtype=np.int64)
            if d.counts_off is None
            else np.asarray(d.counts_off.data).reshape(-1)
        )
        out[str(int(d.meta_table["OBS_ID"][0]))] = [
            [int(v) for v in np.asarray(d.counts.data).reshape(-1)],
            [int(v) for v in off],
        ]
    return out


# ---------------------------------------------------------------- drivers (subprocesses)


class Driver:
    """The side of one contender: connected once; runs the reduction on request."""

    def __init__(self, contender: str, address: str, data_store: str | None) -> None:
        self.contender, self.data_store = contender, data_store
        self.client: Any = None
        if contender in (ESAP, RERUN):
            from distributed import Client

            self.client = Client(address)

    def run(self, files: list[str], store: str) -> dict[str, Any]:
        """Reduce ``files``; the answer's ``seconds`` covers the reduction only."""
        c = self.contender
        t0 = time.perf_counter()
        if c in (ESAP, RERUN):
            import esap_dask

            s = esap_dask.map_observations(
                "gammapy-spectrum", files, store, client=self.client, progress=False
            )
            seconds = time.perf_counter() - t0
            if c == RERUN and s.processed != 0:
                raise RuntimeError(f"{c}: {s.processed} processed on a complete store")
            return {
                "seconds": seconds,
                "processed": s.processed,
                "failures": [str(f) for f in s.failures],
            }
        datasets = gammapy_reduce(files, self.data_store, 2 if c == GP2 else 1)
        seconds = time.perf_counter() - t0
        if len(datasets) != len(files):
            raise RuntimeError(f"{c}: {len(datasets)} datasets for {len(files)} files")
        Path(store).write_text(json.dumps(on_off_counts(datasets)))  # for the check, untimed
        return {"seconds": seconds}


def driver_main(contender: str, address: str, data_store: str) -> None:
    """Serve run requests for one contender (:func:`bench.common.serve`)."""
    driver = Driver(contender, address, data_store or None)
    try:
        serve(lambda req: driver.run(req["files"], req["store"]), "GPBENCH")
    finally:
        if driver.client is not None:
            driver.client.close()


class Contender(DriverProcess):
    """The bench's handle on one driver process (:class:`bench.common.DriverProcess`)."""

    def __init__(self, name: str, address: str, data_store: str | None, log: Path) -> None:
        argv = [sys.executable, "-m", "bench.gammapy_peer", "--driver", name, "--address"]
        super().__init__(name, [*argv, address, "--data-store", data_store or ""], log, "GPBENCH")

    def run(self, files: list[str], store: Path, limit: float | None = None) -> dict[str, Any]:
        """The driver's answer: ``seconds``, ``rss_mib`` (peak, MiB), esap-dask's failures.

        After ``limit`` seconds without an answer the driver is killed and the answer is
        ``{"timed_out": limit}`` (the contender must then be started again).
        """
        return self.request({"files": files, "store": str(store)}, limit)


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """One workload: files, and the DataStore gammapy reads them through (None: per file)."""

    name: str
    title: str
    files: list[str]
    data_store: str | None
    limit: float | None = None  # seconds after which a gammapy run is stopped (None: never)
    notes: list[str] = field(default_factory=list)


def case_hess(work: Path, quick: bool) -> Case:
    """The 105 H.E.S.S. DL3 DR1 runs, read in place (gammapy: through its DataStore)."""
    files = sorted(str(p) for p in (HESS_DIR / "data").glob("*.fits.gz"))
    if not files:
        raise SystemExit(f"no H.E.S.S. DR1 files in {HESS_DIR / 'data'}; it must hold *.fits.gz")
    return Case("hess", f"{len(files)} H.E.S.S. DR1 runs", files, str(HESS_DIR))


def case_synthetic(work: Path, quick: bool) -> Case:
    """1,000 (``--quick``: 100) synthetic GADF files with point-like IRFs and RAD_MAX."""
    from esap_dask.iact.synthetic import write_observations

    n = 100 if quick else 1000
    files = [
        str(f)
        for f in write_observations(
            work / "synthetic", n, seed=11, n_events=4000, source_counts=800, point_like_irfs=True
        )
    ]
    return Case(
        "synthetic",
        f"{n:,} synthetic files, point-like IRFs with RAD_MAX",
        files,
        None,
        notes=[
            f"synthetic: {n:,} uncompressed files of 4,000 events (800 from the source) with "
            "point-like IRFs and RAD_MAX (esap_dask.iact.synthetic.write_observations, seed 11), "
            "in a tmp dir; gammapy reads them with Observation.read"
        ],
    )


CASE_FUNCTIONS = {"hess": case_hess, "synthetic": case_synthetic}


# ---------------------------------------------------------------- measuring


def check_equal(esap_store: Path, gammapy_out: Path, who: str) -> int:
    """Raise unless counts and counts_off of every observation agree; the number compared."""
    from esap_dask.iact import read_datasets

    mine = on_off_counts(read_datasets(esap_store))
    theirs = json.loads(gammapy_out.read_text())
    if mine.keys() != theirs.keys():
        diff = sorted(set(mine) ^ set(theirs))[:5]
        raise AssertionError(f"{who}: observations differ from esap-dask's store ({diff} ...)")
    for obs_id, (counts, off) in mine.items():
        if theirs[obs_id] != [counts, off]:
            raise AssertionError(f"{who}: counts or counts_off of obs {obs_id} differ")
    return len(mine)


def fails_alone_in_gammapy(path: str, data_store: str | None) -> bool:
    """Whether gammapy's serial ``DatasetsMaker`` raises on this one file."""
    try:
        gammapy_reduce([path], data_store, 1)
    except Exception:
        return True
    return False


def _out(cdir: Path, n: str, tag: str) -> Path:
    suffix = ".zarr" if n == ESAP else ".json"
    return cdir / f"{tag}-{n.replace(' ', '_').replace('=', '')}{suffix}"


def measure(case: Case, address: str, work: Path, repeats: int) -> dict[str, Any]:
    """Warm up (finding the runs that fail), interleaved rounds, the check; raw figures."""
    cdir = work / f"case-{case.name}"
    cdir.mkdir(exist_ok=True)
    load_before = os.getloadavg()
    started = datetime.now(UTC)

    def start(n: str) -> Contender:
        return Contender(n, address, case.data_store, cdir / f"{n.replace(' ', '_')}.log")

    drivers = {n: start(n) for n in CONTENDERS}
    times: dict[str, list[float]] = {n: [] for n in CONTENDERS}
    rss: dict[str, list[float]] = {n: [] for n in CONTENDERS}
    timed_out: dict[str, int] = {n: 0 for n in CONTENDERS}
    failed: list[str] = []
    compared: dict[str, int] = {}
    try:
        print(f"[{case.name}] warm-up", flush=True)
        complete = cdir / "esap-complete.zarr"  # also the store of the reruns
        answer = drivers[ESAP].run(case.files, complete)
        esap_failed = sorted(
            f for f in case.files if any(Path(f).name in text for text in answer["failures"])
        )
        if len(esap_failed) != len(answer["failures"]):
            raise RuntimeError(f"esap-dask failures not matched to files: {answer['failures']}")
        both = [f for f in esap_failed if fails_alone_in_gammapy(f, case.data_store)]
        if both != esap_failed:
            raise RuntimeError(
                "runs failing in esap-dask but not in gammapy: "
                + ", ".join(Path(f).name for f in sorted(set(esap_failed) - set(both)))
            )
        failed = [Path(f).name for f in both]
        files = [f for f in case.files if f not in esap_failed]
        if failed:
            case.notes.append(
                f"{case.name}: {len(failed)} of {len(case.files)} runs fail in both tools "
                f"({', '.join(failed)}: {answer['failures'][0][:160]} ...); every contender "
                f"reduces the other {len(files)}"
            )
            _rm(complete)
            drivers[ESAP].run(files, complete)
        drivers[RERUN].run(files, complete)
        for n in (GP2, GP1):  # imports, page cache: on the first files only
            drivers[n].run(files[:WARM_FILES], _out(cdir, n, "warm"))
        for r in range(repeats):
            order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
            outputs = {}
            for n in order:
                out = complete if n == RERUN else _out(cdir, n, f"r{r}")
                limit = case.limit if n in (GP2, GP1) else None
                answer = drivers[n].run(files, out, limit)
                if "timed_out" in answer:
                    print(f"[{case.name}] {n} stopped after {limit:.0f} s", flush=True)
                    timed_out[n] += 1
                    times[n].append(float(answer["timed_out"]))
                    drivers[n] = start(n)
                    continue
                if n == ESAP and answer["processed"] != len(files):
                    raise RuntimeError(f"esap-dask processed {answer['processed']} of {len(files)}")
                times[n].append(answer["seconds"])
                rss[n].append(answer["rss_mib"])
                outputs[n] = out
            if r == 0:
                for n in (GP2, GP1):
                    if n in outputs:
                        compared[n] = check_equal(outputs[ESAP], outputs[n], n)
            for n, out in outputs.items():
                if n != RERUN:
                    _rm(out)
            print(
                f"[{case.name}] round {r + 1}/{repeats}: "
                + ", ".join(f"{n} {times[n][-1]:.2f}" for n in CONTENDERS),
                flush=True,
            )
    finally:
        for d in drivers.values():
            d.close()
    return {
        "case": case,
        "files": len(files),
        "times": times,
        "rss": rss,
        "timed_out": timed_out,
        "failed": failed,
        "compared": compared,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "started": started,
    }


# ---------------------------------------------------------------- reporting


def records(result: dict[str, Any]) -> list[Any]:
    """The figures of one case as suite records (case ``gammapy/<case>``)."""
    from bench.common import summarize

    case: Case = result["case"]
    times, rss = result["times"], result["rss"]
    key = f"gammapy/{case.name}"
    esap = times[ESAP]

    def ratio_unit(n: str) -> str:  # a gammapy run stopped at the limit: its ratio is a lower bound
        k = result["timed_out"][n]
        return f"s (ratio a lower bound: {k} run(s) stopped at {case.limit:.0f} s)" if k else "s"

    out = [
        summarize(key, f"{GP2} / esap", ratio_unit(GP2), esap, baseline=times[GP2]),
        summarize(key, f"{GP1} / esap", ratio_unit(GP1), esap, baseline=times[GP1]),
        summarize(key, "esap-dask rerun / esap", "s", esap, baseline=times[RERUN]),
    ]
    for n in CONTENDERS:
        stopped = result["timed_out"][n]
        unit = (
            f"s (a lower bound: {stopped} run(s) stopped at {case.limit:.0f} s)" if stopped else "s"
        )
        out.append(summarize(key, f"{n} time", unit, times[n]))
        if rss[n]:
            out.append(summarize(key, f"{n} RSS", "MiB", rss[n]))
    n_files = len(case.files)
    out.append(summarize(key, "runs failing in both", f"of {n_files}", [len(result["failed"])]))
    when = result["started"].strftime("%Y-%m-%d %H:%M UTC")
    for label in ("before", "after"):
        load = result[f"load_{label}"]
        out.append(summarize(key, f"load average {label}", f"1/5/15 min, {when}", [load[0]]))
        out[-1].min, out[-1].max = min(load), max(load)
    return out


def _row(result: dict[str, Any], name: str) -> tuple[str, ...]:
    values, rss = result["times"][name], result["rss"][name]
    e = statistics.median(result["times"][ESAP])
    m = statistics.median(values)
    stopped = result["timed_out"][name]
    at_least = "≥ " if stopped else ""  # a run stopped at the limit: a lower bound
    ratio = "—" if name in (ESAP, RERUN) else f"{at_least}{m / e:.2f}×"
    span = f"{min(values):.2f}–{max(values):.2f}"
    if stopped:
        span += f" ({stopped} of {len(values)} stopped at {result['case'].limit:.0f} s)"
    return (
        name,
        f"{at_least}{m:.2f}",
        span,
        ratio,
        f"{statistics.median(rss):.0f}" if rss else "—",
    )


def _checked(result: dict[str, Any]) -> str:
    c = result["compared"]
    return "; ".join(f"{n}: {k} observations" for n, k in c.items()) or "none"


def print_table(result: dict[str, Any]) -> None:
    """The case's medians, min-max, ratios (gammapy / esap-dask) and driver peak RSS."""
    case: Case = result["case"]
    times = result["times"]
    lb, la = result["load_before"], result["load_after"]
    print(
        f"\n{case.title}: {len(times[ESAP])} rounds; load {lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} "
        f"before, {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} after; {len(result['failed'])} runs "
        f"failing in both left out; counts and counts_off equal ({_checked(result)})"
    )
    print(f"{'contender':20} {'median s':>9} {'min-max s':>15} {'/ esap':>8} {'RSS MiB':>8}")
    for n in CONTENDERS:
        row = _row(result, n)
        print(f"{row[0]:20} {row[1]:>9} {row[2]:>15} {row[3]:>8} {row[4]:>8}")
    for note in case.notes:
        print(f"note: {note}")


def markdown(results: list[dict[str, Any]], command: str) -> str:
    """docs/benchmarks/gammapy.md: the tables, the command, the load averages and the date."""
    lines = [
        "# esap-dask against gammapy's own parallel reduction",
        "",
        "Written by `python -m bench.gammapy_peer`. The same gammapy 1D reduction (the makers",
        "and geometry of `esap_dask.iact.spectrum.make_makers`, On region at each file's",
        "`RA_OBJ`/`DEC_OBJ`) over the same files: esap-dask's `gammapy-spectrum` pipeline with",
        f"`map_observations` on a LocalCluster of {WORKERS} workers × 1 thread (started once,",
        "outside the timing), against gammapy's `DatasetsMaker(makers, stack_datasets=False,",
        'n_jobs=2, parallel_backend="multiprocessing")` and `n_jobs=1`, over observations read',
        "from the same files (`DataStore` for H.E.S.S., `Observation.read` for the synthetic",
        "files; reading is timed for both). esap-dask writes a Zarr store; gammapy returns",
        "its `Datasets` in memory. The counts and counts_off of every observation of the",
        "first round are checked equal (`esap_dask.iact.read_datasets` of esap-dask's store",
        "against `DatasetsMaker`'s output). One warm-up each, then interleaved rounds in",
        "rotating order; medians with min–max. Ratios are gammapy time / esap-dask time:",
        "**above 1, esap-dask is faster**. The rerun is esap-dask on its complete store with",
        "nothing changed; gammapy cannot skip, it redoes the work.",
        "",
        f"Command: `{command}`; esap-dask measured: {revision()}.",
        "",
    ]
    for res in results:
        case, t = res["case"], res["times"]
        lines += [
            f"## {case.title}",
            "",
            f"{len(t[ESAP])} rounds; {res['files']} runs reduced "
            f"({len(res['failed'])} failing in both tools left out); counts and counts_off "
            f"equal to esap-dask's store ({_checked(res)}).",
            "",
            "| contender | median s | min–max s | gammapy / esap-dask | driver peak RSS MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += ["| " + " | ".join(_row(res, n)) + " |" for n in CONTENDERS]
        lines.append("")
    lines += [
        "Load average (1/5/15 min) and time of each case, on 2 cores shared with other",
        "users (the noise hits every contender alike: rounds are interleaved):",
        "",
    ]
    for res in results:
        lb, la = res["load_before"], res["load_after"]
        lines.append(
            f"- {res['case'].title}: {res['started']:%Y-%m-%d %H:%M} UTC, load "
            f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} before, {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} "
            "after"
        )
    for res in results:
        lines += [f"- {note}" for note in res["case"].notes]
    lines += [
        "- Why `n_jobs=2` is slower than `n_jobs=1` here: `DatasetsMaker.run` submits",
        "  `self.make_dataset` to the pool with `apply_async`, and pickling that bound method",
        "  pickles the maker with the datasets its callback has collected so far",
        "  (`self._datasets`), so every task carries all finished datasets to the worker",
        "  process: the traffic grows with the square of the number of observations (measured",
        "  with gammapy 2.1: the pickled method of an empty maker is 25 kB, 971 kB with 50",
        "  empty datasets collected). Checked outside this benchmark on 40 synthetic files:",
        "  the same `n_jobs=2` run took 21.3 s as shipped and 8.7 s with",
        "  `DatasetsMaker.__getstate__` patched to leave `_datasets` out (`n_jobs=1`: 8.3 s).",
        "- Each contender's driver is its own process, started once per case; its peak RSS",
        "  is reset (`/proc/self/clear_refs`) before every run. gammapy's `n_jobs=2` driver",
        "  holds the observations and receives every dataset from its pool; with `n_jobs=1`",
        "  the driver itself loads every observation's events and IRFs and keeps them in its",
        "  `Observation` objects until the run ends; esap-dask's driver holds neither (the",
        "  workers read, reduce and write).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 synthetic files, 3 rounds")
    parser.add_argument(
        "--repeats",
        default=None,
        help="timed rounds: N, or per case 'hess=3,synthetic=1' (default 5; --quick 3)",
    )
    parser.add_argument(
        "--limit",
        type=float,
        default=900.0,
        help="stop a gammapy run after this many seconds, reported as a lower bound (900)",
    )
    parser.add_argument("--case", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument(
        "--no-record", action="store_true", help="print only; results.json and docs left alone"
    )
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--data-store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver_main(args.driver, args.address, args.data_store)
        return
    names = args.case.split(",")
    unknown = [n for n in names if n not in CASE_FUNCTIONS]
    if unknown:
        parser.error(f"--case: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    default = 3 if args.quick else 5
    repeats = dict.fromkeys(names, default)
    for part in filter(None, (args.repeats or "").split(",")):
        key, _, value = part.rpartition("=")
        for n in [key] if key else names:
            if n not in repeats or not value.isdigit() or int(value) < 1:
                parser.error(f"--repeats: {part!r}: give N or CASE=N for the cases run")
            repeats[n] = int(value)
    command = "python -m bench.gammapy_peer " + " ".join(sys.argv[1:])

    from distributed import LocalCluster

    from bench.common import report

    results = []
    with (
        tempfile.TemporaryDirectory(prefix="esap-gammapy-") as tmp,
        LocalCluster(n_workers=WORKERS, threads_per_worker=1, dashboard_address=":0") as cluster,
    ):
        work = Path(tmp)
        for name in names:
            case = CASE_FUNCTIONS[name](work, args.quick)
            case.limit = args.limit
            result = measure(case, cluster.scheduler_address, work, repeats[name])
            print_table(result)
            results.append(result)
            if not args.no_record:  # after every case: a long run stopped early keeps its figures
                report(records(result))
                DOCS.parent.mkdir(parents=True, exist_ok=True)
                DOCS.write_text(markdown(results, command))
                print(f"wrote {DOCS} and merged the figures into bench/results.json")


if __name__ == "__main__":
    main()
