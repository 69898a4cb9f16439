"""A progress bar for runs, in a terminal or a notebook (rich), and silent elsewhere."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

__all__ = ["Progress"]


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class Progress:
    """Observations done (and failed) out of ``total``; ``enabled=None`` means when interactive."""

    def __init__(
        self,
        total: int,
        description: str,
        *,
        enabled: bool | None = None,
        dashboard: str | None = None,
    ) -> None:
        self.enabled = _interactive() if enabled is None else enabled
        self.total = total
        self.failed = 0
        self.description = description
        self.dashboard = dashboard
        self._bar: RichProgress | None = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            console = Console(stderr=True)
            if self.dashboard:
                console.print(f"Dashboard: {self.dashboard}")
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[red]{task.fields[failed]} failed"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, failed=0)
        return self

    def advance(self, n: int, *, failed: int = 0) -> None:
        """Count ``n`` more observations finished, ``failed`` of them failed."""
        self.failed += failed
        if self._bar is not None:
            self._bar.update(self._task, advance=n, failed=self.failed)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
