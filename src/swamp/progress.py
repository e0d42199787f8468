"""Progress of a run as plain text lines: what `swamp.run(..., progress=True)` prints.

The same lines as the command line's display prints into a file or a pipe (app/display.py
draws rich progress bars on a terminal instead; both format level rows from here): the
run's header, a line per trained particle, one table row per finished level, and, during a
long level, how far its first particle is (at most every `every_s` seconds).

    events = swamp.Events()
    events.subscribe(TextProgress())          # or: swamp.run(settings, progress=True)
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from swamp.events import (Event, Info, LevelFinished, LevelStarted, ParticleProgress,
                          RunFinished, RunStarted)

ROW_FORMAT = "{:>5}  {:>8}  {:>9}  {:>9}  {:>13}  {:>9}  {:>8}"
HEADER = ROW_FORMAT.format("level", "density", "sparsity", "solution", "particle mean",
                           "ensemble", "time")
# generators (issue 16): the solution's and the particles' mean MMD^2 to the test split
GENERATIVE_HEADER = ROW_FORMAT.format("level", "density", "sparsity", "MMD²", "particle MMD²",
                                      "", "time")


def pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def header_of(row: dict[str, Any]) -> str:
    return GENERATIVE_HEADER if "test_mmd" in row else HEADER


def level_row(row: dict[str, Any]) -> str:
    """A level's metrics row as one line of the table under `header_of(row)`."""
    scores = ((f"{row['test_mmd']:.4f}", f"{row['particle_mmd_mean']:.4f}", "")
              if "test_mmd" in row else (pct(row["test_acc"]), pct(row["particle_acc_mean"]),
                                         pct(row["ensemble_acc"])))
    return ROW_FORMAT.format(row["level"], pct(row["density"]), pct(row["sparsity"]), *scores,
                             f"{row['train_seconds']:.1f}s")


def strip_markup(message: str) -> str:
    """Info messages may hold rich markup ([bold], [/]); plain text drops it."""
    import re

    return re.sub(r"\[/?[a-z ]*\]", "", message)


class TextProgress:
    """An event subscriber writing plain progress lines to `stream` (default: stderr)."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 10.0):
        self.stream = stream
        self.every_s = every_s
        self._header_shown = False
        self._level = self._particles = self._first = self._last = 0
        self._started: dict[int, float] = {}
        self._shown = 0.0

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Info):
            self._print(strip_markup(event.message))
        elif isinstance(event, RunStarted):
            self._header_shown = False
            self._print(f"method {event.method}: {event.model} on {event.dataset}, "
                        f"{event.particles} particle(s), {event.levels} levels of "
                        f"{event.prune_fraction:g}, device {event.device}, engine "
                        f"{event.engine}")
            self._print(f"run directory: {event.run_dir}")
        elif isinstance(event, LevelStarted):
            self._level, self._particles = event.level, event.particles
            self._first, self._last = event.first_iteration, event.last_iteration
            self._started.clear()
            self._shown = time.monotonic()
        elif isinstance(event, ParticleProgress):
            now = time.monotonic()
            started = self._started.setdefault(event.index, now)
            if event.iteration == self._last:
                self._print(f"  level {self._level} · particle {event.index + 1}/"
                            f"{self._particles} trained ({now - started:.1f} s)")
            elif event.index == 0 and now - self._shown >= self.every_s:
                self._shown = now
                done = event.iteration - self._first
                total = max(self._last - self._first, 1)
                self._print(f"  level {self._level} · particle 1/{self._particles}: "
                            f"{done}/{total} iterations ({100 * done / total:.0f}%)")
        elif isinstance(event, LevelFinished):
            if not self._header_shown:
                self._print(header_of(event.row))
                self._header_shown = True
            self._print(level_row(event.row))
        elif isinstance(event, RunFinished) and event.rows:
            last = event.rows[-1]
            score = (f"test MMD² {last['test_mmd']:.4f}" if "test_mmd" in last
                     else f"test accuracy {100 * last['test_acc']:.2f}%")
            self._print(f"done: level {last['level']} at {100 * last['sparsity']:.2f}% "
                        f"sparsity, {score}; run in {event.run_dir}")
