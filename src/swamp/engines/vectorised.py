"""The vectorised engine: all particles of a level in one forward and backward pass.

The particles are `StackedReplicas` (torch.func: `functional_call` + `vmap` over stacked
parameters and buffers) trained by the same step loop as every engine (`train_group`): each
particle gets its own mini-batch from its own order and augmentation generator, the mask is
shared, one optimiser steps all of them. Results equal the sequential engine's within float
tolerance (the batched kernels sum in another order).

Where the particles cannot be stacked (forward code that vmap rejects, training subsets of
different sizes, a single particle, a precision whose autocast does not reach vmapped ops
on this device) one line says so and the sequential engine trains them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from swamp import cpu
from swamp.engines.base import Info, LevelTask, ProgressFn, TrainContext, train_group
from swamp.engines.sequential import SequentialEngine
from swamp.train import ParticleResult, StackedReplicas
from swamp.train.precision import DTYPES, compute_dtypes

StateDict = dict[str, torch.Tensor]


def unsupported_reason(task: LevelTask, ctx: TrainContext) -> str | None:
    """Why the particles of `task` cannot be stacked (before trying the model), or None."""
    if len(task.jobs) < 2:
        return "a single particle has nothing to stack"
    sizes = {len(j.subset) if j.subset is not None else len(ctx.data.train) for j in task.jobs}
    if len(sizes) > 1:
        return "the particles train on data subsets of different sizes"
    return None


def autocast_gap(model: nn.Module, start: StateDict, x: torch.Tensor, precision: str
                 ) -> str | None:
    """Why stacking would change the arithmetic of `precision`, or None: autocast does not
    reach every vmapped kernel on every device (on CPU, vmapped convolutions run in fp32)."""
    dtype = DTYPES[precision]
    if dtype is None:
        return None
    device = x.device
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            single = compute_dtypes(lambda: model(x[:2]), device, dtype)
            stack = StackedReplicas(model, start, 2)
            xb = x[:2].unsqueeze(0).expand(2, *x[:2].shape).contiguous()
            stacked = compute_dtypes(lambda: stack.forward(xb), device, dtype)
    finally:
        model.load_state_dict(saved)
    if stacked.count(dtype) < single.count(dtype):
        return f"autocast to {precision} does not reach every vmapped kernel on {device.type}"
    return None


def probe(model: nn.Module, start: StateDict, x: torch.Tensor) -> str | None:
    """Try one stacked forward and backward on 2 particles; the error line, or None."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        stack = StackedReplicas(model, start, 2)
        xb = x[:2].unsqueeze(0).expand(2, *x[:2].shape).contiguous()
        stack.forward(xb).logits.float().sum().backward()
        return None
    except Exception as exc:  # vmap raises many kinds of errors for unsupported code
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]
    finally:
        model.load_state_dict(saved)


class VectorisedEngine:
    """Stacked particles with torch.func; falls back to `sequential` where it cannot."""

    name = "vectorised"

    def __init__(self, info: Info | None = None, threads: int = 0):
        self.info = info or (lambda message: None)
        self.threads = threads
        self._checked: bool | None = None   # whether the model passed the vmap probe
        self._fallback = SequentialEngine(threads, info)
        self._said: set[str] = set()

    @property
    def record(self) -> dict[str, Any]:
        return {"engine": "vectorised", "threads": self.threads}

    @property
    def description(self) -> str:
        return "vectorised (particles stacked with torch.func.vmap)"

    def _say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            self.info(message)

    def usable(self, task: LevelTask, ctx: TrainContext) -> bool:
        reason = unsupported_reason(task, ctx)
        if reason is None and self._checked is None:
            x = ctx.data.train.x[:2]
            error = probe(ctx.model, task.start_state, x)
            self._checked = error is None
            if error is not None:
                self._say_once(f"engine vectorised: this model cannot be stacked with vmap "
                               f"({error}); training the particles sequentially")
            else:
                gap = autocast_gap(ctx.model, task.start_state, x, ctx.settings.precision)
                self._checked = gap is None
                if gap is not None:
                    self._say_once(f"engine vectorised: {gap}; training the particles "
                                   f"sequentially")
        if reason is not None:
            if len(task.jobs) > 1:
                self._say_once(f"engine vectorised: {reason}; training the particles "
                               f"sequentially")
            return False
        return bool(self._checked)

    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        if not self.usable(task, ctx):
            return self._fallback.train_particles(task, ctx, progress)
        threads = cpu.run_threads(self.threads) if ctx.model_device.type == "cpu" else 0
        with cpu.torch_threads(threads):
            replicas = StackedReplicas(ctx.model, task.start_state, len(task.jobs),
                                       ctx.objective.captures)
            return train_group(replicas, task, ctx, task.jobs, progress, self.info)

    def close(self, rows: Sequence[dict[str, Any]] = ()) -> None:
        pass


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings of asynchronous devices)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
