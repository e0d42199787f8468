"""What a run shows while it goes: progress per level and particle, one table row per level.

On a terminal, rich draws live progress bars; elsewhere (CI logs, pipes) one plain line is
printed per finished particle so logs stay short.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

ROW_FORMAT = "{:>5}  {:>8}  {:>9}  {:>9}  {:>13}  {:>9}  {:>8}"
HEADER = ROW_FORMAT.format("level", "density", "sparsity", "solution", "particle mean",
                           "ensemble", "time")


def pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


class RunDisplay:
    """Console output of one run; `quiet=True` prints nothing."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self._progress: Progress | None = None
        self._tasks: dict[int, Any] = {}
        self._started: dict[int, float] = {}
        self._level = 0
        self._first = self._last = 0
        self._header_shown = False

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)

    # ---- one level ------------------------------------------------------------------------
    def level_started(self, level: int, particles: int, first: int, last: int) -> None:
        """Particles train from schedule iteration `first` (the rewind point) to `last`."""
        self._level, self._first, self._last = level, first, last
        steps = last - first
        self._tasks.clear()
        if self.quiet:
            return
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                transient=True)
            self._progress.start()
            for i in range(particles):
                self._tasks[i] = self._progress.add_task(
                    f"level {level} · particle {i + 1}/{particles}", total=steps)
        else:
            self._particles = particles

    def particle_progress(self, index: int, iteration: int) -> None:
        """Particle `index` has reached schedule iteration `iteration`."""
        if self.quiet:
            return
        self._started.setdefault(index, time.perf_counter())
        if self._progress is not None:
            self._progress.update(self._tasks[index], completed=iteration - self._first)
        elif iteration == self._last:
            took = time.perf_counter() - self._started[index]
            self.console.print(f"  level {self._level} · particle {index + 1}/"
                               f"{self._particles} trained ({took:.1f} s)")

    def level_finished(self, row: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._started.clear()
        if self.quiet:
            return
        if not self._header_shown:
            self.console.print(HEADER, style="bold")
            self._header_shown = True
        self.console.print(ROW_FORMAT.format(
            row["level"], pct(row["density"]), pct(row["sparsity"]), pct(row["test_acc"]),
            pct(row["particle_acc_mean"]), pct(row["ensemble_acc"]),
            f"{row['train_seconds']:.1f}s"))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
