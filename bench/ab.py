"""esap-dask against itself: two revisions side by side, their runs interleaved.

``python -m bench.ab --base HEAD~1 [--head WORKTREE] [--case tiny,hess,tiny-100k] [--rounds 5]``
(cases: tiny, tiny-files, hess, tiny-100k, realistic; ``--head`` defaults to this working
tree, uncommitted changes included)

This machine's speed drifts by up to 1.8x within an hour (2,000 realistic files took 13 s,
then 21, then 24 s on the same code, session 8): two medians measured one after the other
compare the hours, not the code. So each revision gets its own LocalCluster (2 workers x
1 thread, its workers importing that revision), both running at once, and every round runs
each case once on each revision, in alternating order: a fresh driver process per run,
which makes a warm-up run and then the timed runs (this file's ``--one``, with esap-dask
imported from the revision's tree). The result is the median of each, and
the ratio head / base (below 1: head is faster), with the load average before and after;
then the median of the rounds' own ratios ("paired": head / base of the runs of one round,
which ran side by side) with their range, and every run's time, so that a drift of the
machine within the session shows as what it is.
Two identical revisions gave 1.01 (10,000 tiny) and 1.16 (105 H.E.S.S. files) with 4 runs
each: differences smaller than that need more rounds.

The base revision is checked out with ``git worktree add --detach`` in a temporary
directory, removed after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HESS = ROOT.parent / "shared" / "data" / "hess-dl3-dr1" / "data"
CASES = ("tiny", "tiny-files", "hess", "tiny-100k", "realistic")
#: timed runs per driver process (after its warm-up run)
TIMED = {"tiny": 2, "tiny-files": 2, "hess": 2, "tiny-100k": 2, "realistic": 1}


def observations(case: str, work: Path) -> tuple[str, Any]:
    """The pipeline and observation list of ``case`` (files are made once under ``work``)."""
    if case == "tiny":
        return "helloworld", list(range(1, 10_001))
    if case == "tiny-100k":
        return "helloworld", range(1, 100_001)
    if case == "hess":
        files = sorted(str(p) for p in HESS.glob("*.fits.gz"))
        if not files:
            raise SystemExit(f"no H.E.S.S. DR1 files in {HESS}")
        return "dl3-products", files
    if case == "tiny-files":
        folder = work / "tiny-files"
        if not folder.exists():
            folder.mkdir()
            for i in range(10_000):
                (folder / f"obs{i:05d}.dat").write_bytes(b"x" * (100 + i % 50))
        return "helloworld", sorted(str(p) for p in folder.iterdir())
    if case == "realistic":
        folder = work / "gadf"
        if not folder.exists():
            from esap_dask.iact.synthetic import write_observations

            write_observations(folder, 2000, seed=7, n_events=20_000)
        return "dl3-products", sorted(str(p) for p in folder.iterdir())
    raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")


def one(address: str, case: str, work: Path) -> list[float]:
    """In a driver process of one revision: a warm-up run, then the timed runs of ``case``."""
    from distributed import Client

    import esap_dask

    pipeline, items = observations(case, work)
    stores = Path(tempfile.mkdtemp(dir=work))
    times = []
    with Client(address) as client:
        warm = items[:200] if case == "realistic" else items
        esap_dask.map_observations(pipeline, warm, stores / "warm.zarr", client=client)
        for k in range(TIMED[case]):
            t0 = time.perf_counter()
            s = esap_dask.map_observations(pipeline, items, stores / f"{k}.zarr", client=client)
            times.append(time.perf_counter() - t0)
            if not s.ok or s.processed != len(items):
                raise RuntimeError(f"{case}: {s.processed} processed, failures {s.failures[:3]}")
    return times


@contextmanager
def cluster(tree: Path, work: Path, name: str) -> Iterator[str]:
    """A LocalCluster of 2 x 1 whose workers import esap-dask from ``tree``; its address."""
    address = work / f"{name}.address"
    code = (
        "import sys, time\n"
        "from distributed import LocalCluster\n"
        "with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=':0') as c:\n"
        "    open(sys.argv[1], 'w').write(c.scheduler_address)\n"
        "    time.sleep(86400)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(  # a session of its own: its workers are stopped with it
        [sys.executable, "-c", code, str(address)], env=env, cwd=work, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not address.exists() or not address.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the cluster of {tree} did not start")
            time.sleep(0.2)
        yield address.read_text()
    finally:  # an interrupt: the cluster's own shutdown; a kill of all of it if that hangs
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)  # a LocalCluster once sat 60 s in its shutdown, its workers alive
        with contextlib.suppress(ProcessLookupError):  # whatever is left of its session
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def worktree(rev: str, work: Path) -> Iterator[Path]:
    """``rev`` checked out in a worktree under ``work``; removed after."""
    path = work / f"tree-{rev.replace('/', '_').replace('~', '-')}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                       check=False, capture_output=True)  # fmt: skip


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the revision to compare against")
    parser.add_argument("--head", default=None, help="a revision (default: this working tree)")
    parser.add_argument("--case", default="tiny,hess,tiny-100k", help=", ".join(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--one", nargs=3, metavar=("ADDRESS", "CASE", "WORK"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        address, case, work = args.one
        print(json.dumps(one(address, case, Path(work))))
        return
    cases = args.case.split(",")
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    with tempfile.TemporaryDirectory(prefix="esap-ab-") as tmp:
        work = Path(tmp)
        for case in cases:  # make the files once, before any timing
            observations(case, work)
        with worktree(args.base, work) as base_tree, _head(args.head, work) as head_tree:
            trees = {"base": base_tree, "head": head_tree}
            with cluster(base_tree, work, "base") as base, cluster(head_tree, work, "head") as head:
                addresses = {"base": base, "head": head}
                before = load()
                times: dict[tuple[str, str], list[float]] = {}
                paired: dict[str, list[float]] = {}  # head / base within each round
                for r in range(args.rounds):
                    order = ("base", "head") if r % 2 == 0 else ("head", "base")
                    for case in cases:
                        mine: dict[str, float] = {}
                        for who in order:
                            env = {**os.environ, "PYTHONPATH": str(trees[who])}
                            out = subprocess.run(  # this file: the base may predate it
                                [sys.executable, __file__, "--one", addresses[who], case, tmp],
                                env=env, cwd=tmp, capture_output=True, text=True,
                            )  # fmt: skip
                            if out.returncode:
                                raise SystemExit(f"{who} {case}: {out.stderr[-2000:]}")
                            got = json.loads(out.stdout.strip().splitlines()[-1])
                            times.setdefault((case, who), []).extend(got)
                            mine[who] = statistics.median(got)
                        paired.setdefault(case, []).append(mine["head"] / mine["base"])
                    print(f"round {r + 1}/{args.rounds} done, load {load()}", flush=True)
                after = load()
    print(f"\nbase {args.base}, head {args.head or 'working tree'}; load {before} -> {after}")
    print(
        f"{'case':<12}{'base median s':>15}{'head median s':>15}{'head / base':>13}"
        f"{'paired':>8}{'range':>13}  runs"
    )
    for case in cases:
        b, h = times[(case, "base")], times[(case, "head")]
        mb, mh = statistics.median(b), statistics.median(h)
        ratios = paired[case]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(
            f"{case:<12}{mb:>15.3f}{mh:>15.3f}{mh / mb:>13.2f}"
            f"{statistics.median(ratios):>8.2f}{spread:>13}  {len(b)} + {len(h)}"
        )
        print(f"{'':<12}{'base s: ' + ' '.join(f'{t:.3f}' for t in b)}")
        print(f"{'':<12}{'head s: ' + ' '.join(f'{t:.3f}' for t in h)}")


@contextmanager
def _head(rev: str | None, work: Path) -> Iterator[Path]:
    if rev is None:
        yield ROOT
        return
    with worktree(rev, work) as path:
        yield path


if __name__ == "__main__":
    main()
