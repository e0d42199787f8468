"""What a run reports while it goes, as events any number of sinks subscribe to.

The library never prints: the level loop emits these events on an `Events` bus, and the
app's terminal display, a logger (`log_events`) or an experiment tracker render them.

    events = Events()
    unsubscribe = events.subscribe(lambda e: print(e))
    swamp.run(settings, events=events)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Info:
    """A one-line message for the user (may hold rich markup such as [bold])."""

    message: str


@dataclass(frozen=True)
class RunStarted:
    run_dir: Path
    method: str
    model: str
    dataset: str
    particles: int
    levels: int
    prune_fraction: float
    device: str
    engine: str             # the engine's description, e.g. "vectorised (4 particles)"


@dataclass(frozen=True)
class LevelStarted:
    """Particles train from schedule iteration `first_iteration` (the rewind point) to
    `last_iteration`."""

    level: int
    particles: int
    first_iteration: int
    last_iteration: int


@dataclass(frozen=True)
class ParticleProgress:
    """Particle `index` of `level` has reached schedule iteration `iteration`."""

    level: int
    index: int
    iteration: int
    lr: float | None = None   # the learning rate of its last step (issue 14: trackers log it)


@dataclass(frozen=True)
class LevelFinished:
    """A finished level (also each level found finished when a run resumes)."""

    row: dict[str, Any]     # the level's metrics.csv row


@dataclass(frozen=True)
class RunFinished:
    run_dir: Path
    rows: list[dict[str, Any]]   # every finished level's row, in order


Event = Info | RunStarted | LevelStarted | ParticleProgress | LevelFinished | RunFinished
Callback = Callable[[Event], None]


class Events:
    """A synchronous event bus: `emit` calls every subscriber in subscription order."""

    def __init__(self) -> None:
        self._subscribers: list[Callback] = []

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call `callback(event)` for every event from now on; returns the unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: Event) -> None:
        for callback in list(self._subscribers):   # a callback may unsubscribe itself
            callback(event)

    def info(self, message: str) -> None:
        """Shorthand for `emit(Info(message))` (what engines take as their `info`)."""
        self.emit(Info(message))


def describe(event: Event) -> str | None:
    """One plain line for an event, or None for those too frequent to log (progress)."""
    if isinstance(event, Info):
        return event.message
    if isinstance(event, RunStarted):
        return (f"run {event.run_dir}: {event.method}, {event.model} on {event.dataset}, "
                f"{event.particles} particle(s), {event.levels} levels of "
                f"{event.prune_fraction:g}, device {event.device}, engine {event.engine}")
    if isinstance(event, LevelStarted):
        return (f"level {event.level}: {event.particles} particle(s), iterations "
                f"{event.first_iteration}..{event.last_iteration}")
    if isinstance(event, LevelFinished):
        row = event.row
        score = (f"test MMD² {row['test_mmd']:.4f}" if "test_mmd" in row   # a generator
                 else f"test accuracy {row['test_acc']:.4f}")
        return f"level {row['level']} finished: density {row['density']:.4f}, {score}"
    if isinstance(event, RunFinished):
        return f"run {event.run_dir} finished: {len(event.rows)} level(s)"
    return None


def log_events(events: Events, logger: logging.Logger | None = None,
               level: int = logging.INFO) -> Callable[[], None]:
    """Write every event but per-iteration progress to `logger` (default `swamp`);
    returns the unsubscribe."""
    log = logger or logging.getLogger("swamp")

    def sink(event: Event) -> None:
        line = describe(event)
        if line is not None:
            log.log(level, line)

    return events.subscribe(sink)
