"""The vectorised engine: all particles of a level in one forward and backward pass.

Particles are stacked along a new leading dimension (torch.func: `functional_call` + `vmap`
over stacked parameters and buffers). Each particle gets its own mini-batch from its own
`BatchOrder` and augmentation generator, exactly as in `train_steps`; the mask is shared;
one optimiser steps all stacked parameters at once (SGD and Adam are elementwise, so each
particle's update equals its own optimiser's). BatchNorm in training mode uses each
particle's own batch statistics and updates its own stacked running statistics. SWA keeps a
running average of the stacked state with the same arithmetic as `RunningAverage`. The
results therefore equal the sequential engine's within float tolerance (the batched kernels
sum in another order).

Where the model or setting cannot be stacked (forward code that vmap rejects, particles
with training subsets of different sizes, a single particle) one line says so and the
particles are trained by the sequential engine.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from swamp import cpu
from swamp.core.averaging import RunningAverage
from swamp.engines.base import LevelTask, ProgressFn, TrainContext
from swamp.engines.sequential import SequentialEngine
from swamp.errors import SwampError
from swamp.training import BatchOrder, ParticleResult, make_optimizer

StateDict = dict[str, torch.Tensor]
Info = Callable[[str], None]


class _Holder(nn.Module):
    """Owns the stacked parameters so that `make_optimizer` builds the same optimiser."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self.plist = nn.ParameterList([nn.Parameter(p.detach(), requires_grad=p.requires_grad)
                                       for p in params.values()])


def _aliases(model: nn.Module) -> dict[str, str]:
    """State-dict name -> the canonical (first) name of that parameter or buffer."""
    first: dict[int, str] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        first.setdefault(id(t), name)
    out = {}
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    for key in model.state_dict():
        t = tensors.get(key)
        out[key] = first[id(t)] if t is not None else key
    return out


class Stack:
    """N copies of a model's parameters and buffers, stacked along dim 0."""

    def __init__(self, model: nn.Module, start: StateDict, n: int):
        model.load_state_dict(start)
        self.model = model
        self.n = n
        self.aliases = _aliases(model)

        def stacked(t: torch.Tensor) -> torch.Tensor:
            return t.detach().unsqueeze(0).repeat(n, *([1] * t.dim())).contiguous()

        named = dict(model.named_parameters())
        self.holder = _Holder({name: stacked(p).requires_grad_(p.requires_grad)
                               for name, p in named.items()})
        # the tensors the optimiser owns are the ones the forward pass reads
        self.params: dict[str, torch.Tensor] = dict(zip(named, self.holder.plist))
        self.buffers = {name: stacked(b) for name, b in model.named_buffers()}

    def state(self) -> StateDict:
        """Stacked state dict, keyed like `model.state_dict()` (views, not copies)."""
        out = {}
        for key, canonical in self.aliases.items():
            t = self.params.get(canonical)
            out[key] = (t if t is not None else self.buffers[canonical]).detach()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, B, ...) -> logits (N, B, classes)."""
        def one(p: StateDict, b: StateDict, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, (p, b), (xb,))
        return vmap(one)(self.params, self.buffers, x)


def unsupported_reason(task: LevelTask, ctx: TrainContext) -> str | None:
    """Why the particles of `task` cannot be stacked, or None."""
    if len(task.jobs) < 2:
        return "a single particle has nothing to stack"
    sizes = {len(j.subset) if j.subset is not None else len(ctx.data.train) for j in task.jobs}
    if len(sizes) > 1:
        return "the particles train on data subsets of different sizes"
    return None


def probe(model: nn.Module, start: StateDict, x: torch.Tensor) -> str | None:
    """Try one stacked forward and backward on 2 particles; the error line, or None."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        stack = Stack(model, start, 2)
        xb = x[:2].unsqueeze(0).expand(2, *x[:2].shape).contiguous()
        out = stack.forward(xb)
        out.float().sum().backward()
        return None
    except Exception as exc:  # vmap raises many kinds of errors for unsupported code
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]
    finally:
        model.load_state_dict(saved)


def train_stacked(task: LevelTask, ctx: TrainContext,
                  progress: ProgressFn | None = None) -> list[ParticleResult]:
    """Train every particle of `task` at once; the same results as `train_steps` per job."""
    model, train, schedule, settings = ctx.model, ctx.data.train, ctx.schedule, ctx.settings
    device = next(model.parameters()).device
    n = len(task.jobs)
    model.train()
    stack = Stack(model, task.start_state, n)
    orders = [BatchOrder(len(train), settings.batch_size, job.order_seed, device, job.subset)
              for job in task.jobs]
    generators = [torch.Generator().manual_seed(job.augment_seed) for job in task.jobs]
    optimizer = make_optimizer(stack.holder, settings)

    # The shared mask, applied to the stacked weights and their optimiser state.
    mask = task.mask
    masked = []
    for name in mask.names:
        p = stack.params[stack.aliases[name]]
        masked.append((p, mask._factor(name, p.dtype, p.device)))   # broadcasts over dim 0

    def apply_mask() -> None:
        targets = [p for p, _ in masked]
        factors = [f for _, f in masked]
        for p, f in masked:
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and k != "step":
                    targets.append(v)
                    factors.append(f)
        with torch.no_grad():
            torch._foreach_mul_(targets, factors)

    apply_mask()
    average = RunningAverage() if schedule.swa else None
    steps_per_epoch = orders[0].steps_per_epoch
    epoch_loss = torch.zeros(n, device=device)
    epoch_batches = 0
    last_loss = [float("nan")] * n
    augment = ctx.data.augment
    start, stop = task.start_step, schedule.total
    for step in range(start, stop):
        idx = torch.stack([order.batch(step) for order in orders])       # (N, B)
        x, y = train.x[idx], train.y[idx]
        if augment is not None:
            x = torch.stack([augment(x[i], generators[i]) for i in range(n)])
        lr = schedule.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = stack.forward(x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                 reduction="none").view(n, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        apply_mask()
        epoch_loss += losses.detach()
        epoch_batches += 1
        done = step + 1
        if done % steps_per_epoch == 0 or done == stop:
            means = (epoch_loss / epoch_batches).tolist()
            for i, value in enumerate(means):
                if not math.isfinite(value):
                    raise SwampError(
                        f"level {task.level}, particle {task.jobs[i].index}: the training "
                        f"loss became {value} at iteration {done}; lower --lr or check the data")
            last_loss = means
            epoch_loss.zero_()
            epoch_batches = 0
        if average is not None and schedule.averages_after(step):
            average.update(stack.state())
        if progress is not None:
            for job in task.jobs:
                progress(job.index, done)
    if average is not None and average.count > 0:
        final, count = average.value(), average.count
    else:
        final, count = stack.state(), 0
    return [ParticleResult({k: v[i].clone() for k, v in final.items()}, count, last_loss[i])
            for i in range(n)]


class VectorisedEngine:
    """Stacked particles with torch.func; falls back to `sequential` where it cannot."""

    name = "vectorised"

    def __init__(self, info: Info | None = None, threads: int = 0):
        self.info = info or (lambda message: None)
        self.threads = threads
        self._checked: bool | None = None   # whether the model passed the vmap probe
        self._fallback = SequentialEngine(threads)
        self._said: set[str] = set()

    @property
    def decision(self) -> dict:
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
            error = probe(ctx.model, task.start_state, ctx.data.train.x[:2])
            self._checked = error is None
            if error is not None:
                self._say_once(f"engine vectorised: this model cannot be stacked with vmap "
                               f"({error}); training the particles sequentially")
        if reason is None and not self._checked:
            return False
        if reason is not None:
            if len(task.jobs) > 1:
                self._say_once(f"engine vectorised: {reason}; training the particles "
                               f"sequentially")
            return False
        return True

    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        if not self.usable(task, ctx):
            return self._fallback.train_particles(task, ctx, progress)
        threads = cpu.run_threads(self.threads) if ctx.model_device.type == "cpu" else 0
        with cpu.torch_threads(threads):
            return train_stacked(task, ctx, progress)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_steps(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per call of `fn` over `steps` calls after one warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps
