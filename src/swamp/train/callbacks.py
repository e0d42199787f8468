"""Side effects of the training loop, each written once for every engine.

A callback may act when training starts (`on_start`), after every optimiser step
(`on_step_end`), and when a stop is requested (`on_stop`); `state`/`load` give the tensors
and values a checkpoint must keep for it. `fit` calls only the hooks a callback overrides.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from swamp.core.averaging import RunningAverage
from swamp.errors import SwampError

if TYPE_CHECKING:
    from swamp.train.state import LoopState

Tensors = dict[str, torch.Tensor]


class Callback:
    key = ""          # name of the callback's entries in a checkpoint

    def on_start(self, loop: "LoopState") -> None:
        pass

    def on_step_end(self, loop: "LoopState") -> None:
        pass

    def on_stop(self, loop: "LoopState") -> None:
        pass

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        return {}, {}

    def load(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        pass


def overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook) is not getattr(Callback, hook)


class ReMask(Callback):
    """Re-applies the mask to the weights and their optimiser state after every step, so
    pruned weights stay exactly zero under momentum and weight decay."""

    def __init__(self, mask: Any):
        self.mask = mask
        self.bound: Any = None

    def on_start(self, loop: "LoopState") -> None:
        self.bound = self.mask.bind(loop.replicas.named_parameters(), loop.optimizer)
        self.bound.apply_()

    def on_step_end(self, loop: "LoopState") -> None:
        self.bound.apply_()


class LossCheck(Callback):
    """Mean loss of every replica per epoch; a non-finite one stops training with one line
    naming the replica. Checked once per epoch: a per-step .item() would stall a GPU."""

    key = "loss"

    def __init__(self, labels: Sequence[str], steps_per_epoch: int, stop: int):
        self.labels = list(labels)
        self.steps_per_epoch = steps_per_epoch
        self.stop = stop
        self.total: torch.Tensor | None = None
        self.batches = 0
        self.last = [math.nan] * len(self.labels)

    def on_step_end(self, loop: "LoopState") -> None:
        if self.total is None:
            self.total = torch.zeros_like(loop.losses)
        self.total += loop.losses
        self.batches += 1
        done = loop.step
        if done % self.steps_per_epoch == 0 or done == self.stop:
            means = (self.total / self.batches).tolist()
            for label, value in zip(self.labels, means):
                if not math.isfinite(value):
                    raise SwampError(f"{label}: the training loss became {value} at iteration "
                                     f"{done}; lower `lr` or check the data")
            self.last = means
            self.total.zero_()
            self.batches = 0

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        tensors = {"total": self.total} if self.total is not None else {}
        return tensors, {"batches": self.batches, "last": self.last}

    def load(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        self.total = tensors.get("total")
        self.batches = int(meta["batches"])
        self.last = [math.nan if v is None else float(v) for v in meta["last"]]


class SWA(Callback):
    """The running average of the replicas' weights at the schedule's SWA points."""

    key = "swa"

    def __init__(self, averages_after: Callable[[int], bool]):
        self.averages_after = averages_after
        self.average = RunningAverage()

    def on_step_end(self, loop: "LoopState") -> None:
        if self.averages_after(loop.step - 1):
            self.average.update(loop.replicas.state())

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        return dict(self.average.mean), {"count": self.average.count}

    def load(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        self.average = RunningAverage.restore(tensors, int(meta["count"]))


class Progress(Callback):
    """Tells `report(done)` the iteration reached after every step."""

    def __init__(self, report: Callable[[int], None]):
        self.report = report

    def on_start(self, loop: "LoopState") -> None:
        self.report(loop.step)

    def on_step_end(self, loop: "LoopState") -> None:
        self.report(loop.step)


class Checkpoint(Callback):
    """Writes the loop's whole state every `file.every` iterations, at the last iteration
    (a finished particle) and when a stop is requested (see checkpoint.py)."""

    def __init__(self, file: Any, stop: int):
        self.file = file
        self.stop = stop

    def on_step_end(self, loop: "LoopState") -> None:
        done = loop.step
        if done == self.stop or (self.file.every > 0 and done % self.file.every == 0):
            loop.save(self.file)

    def on_stop(self, loop: "LoopState") -> None:
        loop.save(self.file)
