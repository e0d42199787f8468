"""What a run shows while it goes: progress per level and particle, one table row per level.

A `RunDisplay` subscribes to a run's events (`swamp.events`). On a terminal, rich draws live
progress bars; elsewhere (CI logs, pipes) one plain line is printed per finished particle so
logs stay short.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from swamp.events import (Event, Info, LevelFinished, LevelStarted, ParticleProgress,
                          RunFinished, RunStarted)
from swamp.store import RunStore

from swamp.progress import (GENERATIVE_HEADER, HEADER, ROW_FORMAT,  # noqa: F401 (one
                            level_row, pct)                           # row format)


def make_console() -> Console:
    """The terminal console; into a file or a pipe, lines are not wrapped (rich would wrap at
    80 columns there, cutting paths in two)."""
    console = Console(highlight=False)
    console.soft_wrap = not console.is_terminal
    return console


class RunDisplay:
    """Console output of runs, as a subscriber of their events: `events.subscribe(display)`.

    `quiet=True` prints nothing; `announce=True` also prints a run's settings line and its
    closing line (`swamp run`; `swamp compare` announces runs itself)."""

    def __init__(self, console: Console | None = None, quiet: bool = False,
                 announce: bool = False):
        self.console = console or make_console()
        self.quiet = quiet
        self.announce = announce
        self._progress: Progress | None = None
        self._tasks: dict[int, Any] = {}
        self._started: dict[int, float] = {}
        self._level = 0
        self._first = self._last = 0
        self._header_shown = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, Info):
            self.info(event.message)
        elif isinstance(event, LevelStarted):
            self.level_started(event.level, event.particles, event.first_iteration,
                               event.last_iteration)
        elif isinstance(event, ParticleProgress):
            self.particle_progress(event.index, event.iteration)
        elif isinstance(event, LevelFinished):
            self.level_finished(event.row)
        elif isinstance(event, RunStarted):
            self._header_shown = False   # each run's table has its header
            if self.announce:
                self._announce(event)
        elif isinstance(event, RunFinished) and self.announce and event.rows:
            last = event.rows[-1]
            score = (f"test perplexity {last['test_ppl']:.3g} (token accuracy "
                     f"{100 * last['test_acc']:.2f}%)" if "test_ppl" in last
                     else f"test MMD² {last['test_mmd']:.4f}" if "test_mmd" in last
                     else f"test accuracy {100 * last['test_acc']:.2f}%")
            self.info(f"done: level {last['level']} at {100 * last['sparsity']:.2f}% sparsity, "
                      f"{score}; metrics in {RunStore(event.run_dir).metrics_csv}")

    def _announce(self, event: RunStarted) -> None:
        self.info(f"method [bold]{event.method}[/bold]: {event.model} on {event.dataset}, "
                  f"{event.particles} particle(s), {event.levels} levels of "
                  f"{event.prune_fraction:g}, device {event.device}, engine {event.engine}")
        self.info(f"run directory: {event.run_dir}")

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
        generative = "test_mmd" in row
        if not self._header_shown:
            self.console.print(GENERATIVE_HEADER if generative else HEADER, style="bold")
            self._header_shown = True
        self.console.print(level_row(row))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
