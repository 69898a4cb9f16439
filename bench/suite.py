"""The benchmark suite: every case, one command, figures in bench/results.json and docs/.

``python -m bench.suite [--quick] [--cases overhead,write,batch,scaling,dl3,workers,peers]``

Writes ``bench/results.json`` (records: case, metric, unit, median value, min, max, runs,
baseline median, ratio), ``docs/benchmarks/results.md`` (the same as a table) and PNG plots
in ``docs/benchmarks/`` (overhead, batch size, incremental reruns). Every figure is the
median of repeated runs; every comparison is a ratio of two medians measured in the same
run. ``--quick`` runs fewer repeats and sizes.
Cases that need a service (``workers``: the local SLURM) say so and are left out when it is
not running. ``peers`` (``bench.peers``: esap-dask against batched ``client.map``,
``dask.bag``, Parsl and a serial loop, 15-25 minutes) writes ``docs/benchmarks/peers.md`` too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, Record, report

DOCS = ROOT / "docs" / "benchmarks"
ALL_CASES = "overhead,write,batch,scaling,dl3,workers,peers"


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, axes: Any, out: Path, grid: bool = True) -> None:
    """Legends (and grids) on ``axes``; ``fig`` written to ``out`` and closed."""
    for ax in axes:
        if grid:
            ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_overhead(results: list[dict], out: Path) -> None:
    """Time and driver peak RSS against the number of observations, log-log, per mode."""
    plt = _pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("esap", "o-"), ("handwritten", "s--"), ("serial", "^:")):
        for ax, metric in ((ax_t, f"{mode} time"), (ax_m, f"{mode} RSS")):
            pts = sorted(
                (int(r["case"].split("/")[1]), r["value"], r["min"], r["max"])
                for r in results
                if r["case"].startswith("overhead/") and r["metric"] == metric
            )
            if not pts:
                continue
            n, v, lo, hi = zip(*pts, strict=True)
            ax.errorbar(
                n,
                v,
                yerr=[
                    [a - b for a, b in zip(v, lo, strict=True)],
                    [b - a for a, b in zip(v, hi, strict=True)],
                ],
                fmt=style,
                label=mode,
                capsize=3,
            )
    ax_t.set(
        xscale="log",
        yscale="log",
        xlabel="observations",
        ylabel="seconds (median)",
        title="End-to-end time",
    )
    ax_m.set(
        xscale="log",
        yscale="log",
        xlabel="observations",
        ylabel="driver peak RSS (MiB, median)",
        title="Driver memory",
    )
    _save(plt, fig, (ax_t, ax_m), out)


def plot_batch(results: list[dict], out: Path) -> None:
    """Observations per second against the batch size, with the automatic choice."""
    plt = _pyplot()
    rows = [r for r in results if r["case"].startswith("batch size/")]
    fixed = sorted(
        (int(r["metric"].split()[1]), r) for r in rows if r["metric"].split()[1].isdigit()
    )
    auto = [r for r in rows if r["metric"] == "batch auto"]
    if not fixed:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [b for b, _ in fixed]
    ax.errorbar(
        sizes,
        [r["value"] for _, r in fixed],
        yerr=[[r["value"] - r["min"] for _, r in fixed], [r["max"] - r["value"] for _, r in fixed]],
        fmt="o-",
        capsize=3,
        label="fixed batch size",
    )
    for r in auto:
        ax.axhline(
            r["value"], color="C1", ls="--", label=f"automatic ({r['ratio']:.2f} of the best)"
        )
    ax.set(
        xscale="log",
        xlabel="observations per task",
        ylabel="observations / s (median)",
        title=rows[0]["case"],
    )
    _save(plt, fig, (ax,), out)


def plot_incremental(results: list[dict], out: Path) -> None:
    """Reruns as a fraction of their first run, per case (5% is the target)."""
    plt = _pyplot()
    rows = [
        r
        for r in results
        if r["case"].startswith("incremental/")
        and r["metric"].startswith("rerun")
        and r.get("ratio")
    ]
    if not rows:
        return
    cases = sorted({r["case"] for r in rows}, key=lambda c: (len(c), c))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    for k, metric in enumerate(("rerun unchanged", "rerun 1% touched")):
        shares = [
            next((100 / r["ratio"] for r in rows if r["case"] == c and r["metric"] == metric), 0.0)
            for c in cases
        ]
        ax.bar([i + (k - 0.5) * width for i in range(len(cases))], shares, width, label=metric)
    ax.axhline(5, color="k", ls=":", label="5% target (unchanged)")
    ax.set_xticks(
        range(len(cases)),
        [c.removeprefix("incremental/") for c in cases],
        rotation=15,
        ha="right",
        fontsize=8,
    )
    ax.set(ylabel="% of the first run (medians)", title="Incremental reruns")
    _save(plt, fig, (ax,), out, grid=False)


def markdown(results: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m bench.suite`: medians of repeated runs (min–max), and ratios",
        "of medians measured in the same run. Machine: 2 cores, 24 GiB.",
        "",
        "| case | metric | median | min–max | unit | runs | baseline | ratio |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        base = f"{r['baseline']:.4g}" if r.get("baseline") is not None else ""
        ratio = f"{r['ratio']:.3g}" if r.get("ratio") is not None else ""
        lines.append(
            f"| {r['case']} | {r['metric']} | {r['value']:.4g} | "
            f"{r['min']:.4g}–{r['max']:.4g} | {r['unit']} | {r['runs']} | "
            f"{base} | {ratio} |"
        )
    lines += [
        "",
        "![overhead](overhead.png)",
        "",
        "![batch size](batch_size.png)",
        "",
        "![incremental](incremental.png)",
        "",
    ]
    return "\n".join(lines)


def run_module(module: str, *args: str) -> None:
    """Run one case module that merges its own records into results.json."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, check=False)
    if proc.returncode:
        print(f"warning: {module} failed (exit {proc.returncode}); its figures are missing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    parser.add_argument("--cases", default=ALL_CASES)
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    if cases >= set(ALL_CASES.split(",")) and RESULTS.exists():
        RESULTS.unlink()  # every case runs: no figure of an earlier run (or case) stays
    repeats = 2 if args.quick else 3
    records: list[Record] = []
    if "overhead" in cases:
        from bench import mapper_overhead

        sizes = [100, 1000, 10_000] if args.quick else [100, 1000, 10_000, 100_000]
        records += mapper_overhead.run(
            repeats, sizes, 10_000, [10_000] if args.quick else [10_000, 100_000]
        )
    if "write" in cases:
        from bench import write_throughput

        records += write_throughput.run(repeats + 2, 8 if args.quick else 16, 32)
    if "batch" in cases:
        from bench import batch_size

        records += batch_size.run(5 if args.quick else 9, 20_000)
    if "scaling" in cases:
        from bench import scaling

        records += scaling.run(200 if args.quick else 10_000, 20_000, repeats)
        records += scaling.incremental(2000 if args.quick else 100_000, 1000)
    if records:
        report(records)
    if "dl3" in cases and (ROOT / "bench" / "dl3_real.py").exists():
        run_module("bench.dl3_real", "--repeats", str(repeats + 2))
    if "workers" in cases and (ROOT / "bench" / "worker_start.py").exists():
        run_module("bench.worker_start", "--repeats", str(repeats))
    if "peers" in cases:
        run_module(
            "bench.peers",
            *(["--quick"] if args.quick else []),
            "--repeats",
            str(3 if args.quick else 5),
        )
    results = json.loads(RESULTS.read_text())
    DOCS.mkdir(parents=True, exist_ok=True)
    plot_overhead(results, DOCS / "overhead.png")
    plot_batch(results, DOCS / "batch_size.png")
    plot_incremental(results, DOCS / "incremental.png")
    (DOCS / "results.md").write_text(markdown(results))
    print(f"wrote {RESULTS}, {DOCS / 'results.md'} and the plots in {DOCS}")


if __name__ == "__main__":
    main()
