"""Iteration counts, the learning rate at every iteration, SWA points and batch orders."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from swamp.config import TrainSettings
from swamp.errors import SwampError


DEFAULT_REWIND_EPOCHS = 1.0   # TrainSettings.rewind_epochs' default
SHORT_RUN_REWIND = 0.1        # the rewind point of a run too short for the default one


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
    warmup: int = 0     # iterations of linear warm-up from the start of training

    @classmethod
    def build(cls, t: TrainSettings, n_train: int, swa: bool) -> "Schedule":
        spe = max(1, n_train // t.batch_size)
        total = t.steps if t.steps is not None else t.epochs * spe   # `steps`: a budget
        rewind = t.rewind_iters or int(round(t.rewind_epochs * spe))
        if rewind >= total and t.rewind_iters == 0 and t.rewind_epochs == DEFAULT_REWIND_EPOCHS:
            # issue 14: a short run works with the default rewind point, which adapts to it
            # (the run says so: `adapted_rewind`)
            rewind = int(total * SHORT_RUN_REWIND)
        if rewind >= total:
            raise SwampError(f"the rewind point ({rewind} iterations) is not before the end of "
                             f"training ({total} iterations); lower `rewind_epochs` or `rewind_iters`")
        # lr / 2: the SWA recipe of Izmailov et al. for ResNets and WRNs, and the best of
        # {lr/20, lr/5, lr/2} on MNIST-1D's validation split (benchmarks/results/swa_lr.md).
        swa_lr = t.swa_lr if t.swa_lr is not None else t.lr / 2
        return cls(spe, total, rewind, int(round(t.swa_start * total)), swa, t.swa_freq,
                   t.lr, swa_lr, t.schedule, int(round(t.warmup * total)))

    def adapted_rewind(self, t: TrainSettings) -> str | None:
        """A line saying the default rewind point was moved for short training, or None."""
        nominal = t.rewind_iters or int(round(t.rewind_epochs * self.steps_per_epoch))
        if self.rewind == nominal:
            return None
        return (f"the default rewind point (`rewind_epochs` {t.rewind_epochs:g}: {nominal} "
                f"iterations) is not before the end of this short training ({self.total} "
                f"iterations); rewinding to iteration {self.rewind} "
                f"({SHORT_RUN_REWIND:.0%} of training) instead; set `rewind_epochs` or "
                f"`rewind_iters` to choose")

    def lr_at(self, step: int) -> float:
        """The schedule's rate, scaled by (step + 1) / warmup during a warm-up."""
        lr = self._annealed(step)
        if step < self.warmup:
            return lr * (step + 1) / self.warmup
        return lr

    def _annealed(self, step: int) -> float:
        """Cosine, linear (or constant) annealing; with SWA it anneals to swa_lr by swa_start,
        then stays there (the SWA recipe of Izmailov et al. 2018)."""
        if self.swa and step >= self.swa_start and self.kind not in ("cosine", "linear"):
            return self.swa_lr
        if self.kind == "constant":
            return self.lr
        if self.kind == "step":  # the LTH recipe: lr / 10 at 50% and 75% of training
            return self.lr * 0.1 ** sum(step >= f * self.total for f in (0.5, 0.75))
        end, floor = (self.swa_start, self.swa_lr) if self.swa else (self.total, 0.0)
        if step >= end:
            return floor
        if self.kind == "linear":   # Sparse Model Soups' retraining: linear decay after warm-up
            start = min(self.warmup, end - 1)
            return self.lr + (floor - self.lr) * max(0, step - start) / max(1, end - start)
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * step / max(1, end)))

    def averages_after(self, step: int) -> bool:
        """Whether the weights after iteration `step` (0-based) enter the SWA average."""
        done = step + 1
        if not self.swa or done <= self.swa_start:
            return False
        if self.swa_freq > 0:
            return (done - self.swa_start) % self.swa_freq == 0 or done == self.total
        return done % self.steps_per_epoch == 0 or done == self.total


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
