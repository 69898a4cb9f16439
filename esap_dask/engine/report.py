"""A picture of a store's ledger: ``esap-dask status STORE --plot summary.png``.

Three panels: observations done and failed over time (cumulative, by processing end
time), the distribution of per-observation processing durations, and failures by
error type. A store without failures gets the first two, and "no failures" in the title.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from esap_dask.engine.ledger import DONE, FAILED, read_columns
from esap_dask.store import esap_attrs, open_store

__all__ = ["plot_status"]


def plot_status(
    store: str, out: str | Path, *, storage_options: Mapping[str, Any] | None = None
) -> Path:
    """Render the ledger summary of ``store`` to the PNG file ``out``; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    group = open_store(store, storage_options=storage_options, mode="r")
    meta = esap_attrs(group)
    cols = read_columns(group, ["status", "start", "end", "error_type"])
    status, start, end = cols["status"], cols["start"], cols["end"]
    kinds = cols["error_type"].astype(object)

    failures = Counter(str(k) for k in kinds[status == FAILED])
    panels = 3 if failures else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.7 * panels, 4.2))
    ax_time, ax_dur = axes[0], axes[1]
    fig.suptitle(
        f"{store}: {meta.get('pipeline')} {meta.get('version')}, {len(status)} observations"
        + ("" if failures else ", no failures")
    )
    for code, label, colour in ((DONE, "done", "tab:green"), (FAILED, "failed", "tab:red")):
        t = np.sort(end[(status == code) & np.isfinite(end)])
        if len(t):
            when = (t * 1000).astype("datetime64[ms]")
            ax_time.step(when, np.arange(1, len(t) + 1), where="post", label=label, color=colour)
    locator = mdates.AutoDateLocator()
    ax_time.xaxis.set_major_locator(locator)
    ax_time.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax_time.set(title="Observations finished over time (UTC)", ylabel="cumulative count")
    ax_time.legend()

    seconds = (end - start)[np.isfinite(end) & np.isfinite(start) & (status != 0)]
    if len(seconds):
        ax_dur.hist(seconds, bins=min(50, max(5, len(seconds) // 10)), color="tab:blue")
    ax_dur.set(title="Processing time per observation", xlabel="seconds", ylabel="observations")

    if failures:
        ax_fail = axes[2]
        names, counts = zip(*failures.most_common(10), strict=True)
        ax_fail.barh(names, counts, color="tab:red")
        ax_fail.invert_yaxis()
        ax_fail.set(title="Failures by reason", xlabel="observations")
        ax_fail.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
