"""SIGINT and SIGTERM become a request to stop, which the training loop answers at the end
of its current step by writing a checkpoint and raising `Interrupted`.

A second SIGINT stops at once (the default behaviour), for a loop that is not training.
Handlers are installed only from the main thread and restored when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_requested: list[int] = []


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal; its work up to the last checkpoint is kept."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def requested() -> int | None:
    """The signal that asked to stop, or None."""
    return _requested[0] if _requested else None


def raise_if_requested() -> None:
    if _requested:
        raise Interrupted(_requested[0])


def _handler(signum: int, frame: object) -> None:
    if _requested and signum == signal.SIGINT:
        raise KeyboardInterrupt          # a second Ctrl-C: stop now
    if not _requested:
        _requested.append(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM request a stop instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _requested.clear()
    for s in previous:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested.clear()
