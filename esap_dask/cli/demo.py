"""``esap-dask demo``: synthetic DL3 observations through ``dl3-products``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from esap_dask.cli.common import (
    EXIT_FAILED,
    facility_option,
    fail,
    guarded,
    out,
    print_summary,
)


@click.command()
@click.option(
    "--directory",
    "-d",
    default="esap-demo",
    show_default=True,
    type=click.Path(),
    help="Where the synthetic observations and the store go.",
)
@click.option(
    "--count",
    "-n",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of synthetic observations.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic data.")
@facility_option
def demo(directory: str, count: int, seed: int, facility: str) -> None:
    """Generate synthetic DL3 observations and run dl3-products on them."""
    from esap_dask.engine.mapper import map_observations
    from esap_dask.iact.synthetic import write_observations

    root = Path(directory)
    inputs = root / "observations"
    files = sorted(inputs.glob("*.fits*"))[:count] if inputs.is_dir() else []
    if len(files) == count:  # a second demo reuses them: nothing to redo, as the rerun shows
        out.print(f"reusing {count} synthetic observations in {inputs}")
    else:
        try:
            files = write_observations(inputs, count, seed=seed)
        except OSError as e:
            fail(
                f"--directory {directory}: cannot write the demo's observations there "
                f"({e.strerror or e}); give a writable directory with -d"
            )
        out.print(f"{len(files)} synthetic observations in {inputs}")
    store = str(root / "dl3-products.zarr")
    summary = guarded(
        lambda: map_observations("dl3-products", [str(f) for f in files], store, facility=facility)
    )
    print_summary(summary)
    out.print(f"open it with: xarray.open_zarr({store!r})", highlight=False)
    sys.exit(0 if summary.ok else EXIT_FAILED)
