"""Train one ticket: the schedule, the masked optimiser step and SWA accumulation.

Nothing here knows about levels, particles' averaging or the run directory: the level loop
hands in a start state, a mask and the seeds of one particle, and gets back its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swamp.core.averaging import RunningAverage
from swamp.config import TrainSettings
from swamp.data import Split
from swamp.errors import SwampError
from swamp.core.seeds import derive_seed  # noqa: F401  (re-exported for callers)
from swamp.core.masks import Mask

StateDict = dict[str, torch.Tensor]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """Iteration counts and the learning rate at every iteration of one level."""

    steps_per_epoch: int
    total: int          # T: iterations of a full training run
    rewind: int         # T0: iteration every level restarts from
    swa_start: int      # first iteration whose end counts towards the SWA average
    swa: bool
    swa_freq: int       # 0: at epoch ends
    lr: float
    swa_lr: float
    kind: str

    @classmethod
    def build(cls, t: TrainSettings, n_train: int, swa: bool) -> "Schedule":
        spe = max(1, n_train // t.batch_size)
        total = t.epochs * spe
        rewind = t.rewind_iters or int(round(t.rewind_epochs * spe))
        if rewind >= total:
            raise SwampError(f"the rewind point ({rewind} iterations) is not before the end of "
                             f"training ({total} iterations); lower --rewind-epochs/--rewind-iters")
        # lr / 2: the SWA recipe of Izmailov et al. for ResNets and WRNs, and the best of
        # {lr/20, lr/5, lr/2} on MNIST-1D's validation split (benchmarks/results/swa_lr.md).
        swa_lr = t.swa_lr if t.swa_lr is not None else t.lr / 2
        return cls(spe, total, rewind, int(round(t.swa_start * total)), swa, t.swa_freq,
                   t.lr, swa_lr, t.schedule)

    def lr_at(self, step: int) -> float:
        """Cosine (or constant) annealing; with SWA it anneals to swa_lr by swa_start, then
        stays there (the SWA recipe of Izmailov et al. 2018)."""
        if self.swa and step >= self.swa_start and self.kind != "cosine":
            return self.swa_lr
        if self.kind == "constant":
            return self.lr
        if self.kind == "step":  # the LTH recipe: lr / 10 at 50% and 75% of training
            return self.lr * 0.1 ** sum(step >= f * self.total for f in (0.5, 0.75))
        end, floor = (self.swa_start, self.swa_lr) if self.swa else (self.total, 0.0)
        if step >= end:
            return floor
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * step / max(1, end)))

    def averages_after(self, step: int) -> bool:
        """Whether the weights after iteration `step` (0-based) enter the SWA average."""
        done = step + 1
        if not self.swa or done <= self.swa_start:
            return False
        if self.swa_freq > 0:
            return (done - self.swa_start) % self.swa_freq == 0 or done == self.total
        return done % self.steps_per_epoch == 0 or done == self.total


def make_optimizer(model: nn.Module, t: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                               weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, betas=(t.momentum or 0.9, 0.999),
                            weight_decay=t.weight_decay)


class BatchOrder:
    """Seeded epoch permutations of the training indices; iteration t -> its batch indices."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device,
                 subset: torch.Tensor | None = None):
        self.indices = subset if subset is not None else None
        self.n = len(subset) if subset is not None else n
        self.batch_size = min(batch_size, self.n)
        self.steps_per_epoch = max(1, self.n // batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = device
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def batch(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        while self._epoch < epoch:  # draw every epoch's permutation in order: reproducible
            self._perm = torch.randperm(self.n, generator=self.generator)
            if self.indices is not None:
                self._perm = self.indices[self._perm]
            self._perm = self._perm.to(self.device)
            self._epoch += 1
        assert self._perm is not None
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]


@dataclass
class ParticleResult:
    """What one particle hands back to the level loop."""

    state: StateDict            # its solution: SWA average if it kept one, else final weights
    averaged: int               # number of snapshots in the SWA average (0: none)
    train_loss: float           # mean loss of its last epoch


def train_steps(model: nn.Module, mask: Mask | None, train: Split, schedule: Schedule,
                settings: TrainSettings, *, start: int, stop: int, order_seed: int,
                augment: Augment | None = None, augment_seed: int = 0,
                subset: torch.Tensor | None = None,
                on_step: Callable[[int], None] | None = None,
                label: str = "training") -> ParticleResult:
    """Train `model` in place from iteration `start` to `stop` of the schedule.

    After every optimiser step the mask is re-applied to the weights and to the optimiser
    state, so pruned weights stay exactly zero under momentum and weight decay.
    """
    device = next(model.parameters()).device
    order = BatchOrder(len(train), settings.batch_size, order_seed, device, subset)
    aug_gen = torch.Generator().manual_seed(augment_seed)
    optimizer = make_optimizer(model, settings)
    bound = mask.bind(model, optimizer) if mask is not None else None
    if bound is not None:
        bound.apply_()
    average = RunningAverage() if schedule.swa else None
    model.train()
    epoch_loss = torch.zeros((), device=device)
    epoch_batches = 0
    last_loss = float("nan")
    for step in range(start, stop):
        idx = order.batch(step)
        x, y = train.x[idx], train.y[idx]
        if augment is not None:
            x = augment(x, aug_gen)
        lr = schedule.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if bound is not None:
            bound.apply_()
        epoch_loss += loss.detach()
        epoch_batches += 1
        done = step + 1
        # Check the loss once per epoch: a per-step .item() would stall a GPU pipeline.
        if done % order.steps_per_epoch == 0 or done == stop:
            last_loss = (epoch_loss / epoch_batches).item()
            if not math.isfinite(last_loss):
                raise SwampError(f"{label}: the training loss became {last_loss} at iteration "
                                 f"{done}; lower --lr or check the data")
            epoch_loss.zero_()
            epoch_batches = 0
        if average is not None and schedule.averages_after(step):
            average.update(model.state_dict())
        if on_step is not None:
            on_step(done)
    if average is not None and average.count > 0:
        return ParticleResult(average.value(), average.count, last_loss)
    return ParticleResult(clone_state(model.state_dict()), 0, last_loss)


def clone_state(state: StateDict) -> StateDict:
    return {k: v.detach().clone() for k, v in state.items()}
