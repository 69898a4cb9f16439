"""MkDocs hook: drop generated benchmark pages from the navigation when they do not exist.

``docs/benchmarks/results.md`` is written by ``python -m bench.suite`` and
``docs/benchmarks/peers.md`` by ``python -m bench.peers``; a site built before any benchmark
ran must still build with ``mkdocs build --strict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GENERATED = (
    "benchmarks/results.md",
    "benchmarks/peers.md",
    "benchmarks/gammapy.md",
    "benchmarks/profiles.md",  # written from bench.profile_run's output
)


def _without(nav: list[Any], target: str) -> list[Any]:
    kept: list[Any] = []
    for item in nav:
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if isinstance(value, list):
                kept.append({title: _without(value, target)})
            elif value != target:
                kept.append(item)
        elif item != target:
            kept.append(item)
    return kept


def on_config(config: Any) -> Any:
    """Remove each generated page from ``nav`` unless its benchmark has written it."""
    for page in GENERATED:
        if not (Path(config["docs_dir"]) / page).is_file() and config.get("nav"):
            config["nav"] = _without(config["nav"], page)
    return config
