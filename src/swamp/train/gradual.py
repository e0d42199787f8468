"""Gradual magnitude pruning inside one training run (issue 12), a callback of the step loop.

From iteration `start` to `end`, every `every` iterations (and at `end`), each replica's mask
is pruned to the sparsity of the ramp at that iteration, with exact counts, by the scores of
its own current weights (`swamp.core.pruning`: magnitude or LAMP; ties by index). Between
pruning steps, and after every optimiser step, the current mask is re-applied to the weights
and to their optimiser state (momentum, Adam moments), as `ReMask` does for a fixed mask, so
a pruned weight stays exactly zero. Weights once pruned stay pruned (each step keeps the top
weights among those still alive).

With p = (t - start) / (end - start), s_i the sparsity of the mask the level starts from and
s_f the level's target sparsity, the sparsity at a pruning step t is

    cubic     s_t = s_f + (s_i - s_f) (1 - p)^3          (Zhu & Gupta 2017, arXiv 1710.01878)
    linear    s_t = s_f + (s_i - s_f) (1 - p)
    harmonic  s_t = s_f + (s_i - s_f) (1 + cos(pi p)) / 2  (half-cosine annealing)

and the number of weights kept is floor((1 - s_t) * numel + 0.5) over all prunable tensors
(global scope) or per tensor with the tensor's own s_i (layerwise scope).

Stacked replicas (particles of a level trained together) each prune their *own* weights, so
their masks may differ within a level: a particle's mask is then the same whichever engine
trains it (sequentially, stacked or on another rank), which a mask shared across particles
could not be (the sequential engine trains one particle after another). The level loop makes
the level's mask from the particles' average (see docs/finetune.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from swamp.core.masks import Mask
from swamp.core.pruning import keep_exactly, score
from swamp.errors import SwampError
from swamp.train.callbacks import Callback

if TYPE_CHECKING:
    from swamp.train.state import LoopState

RAMPS = ("cubic", "linear", "harmonic")


def ramp_sparsity(ramp: str, t: int, start: int, end: int, s_i: float, s_f: float) -> float:
    """The sparsity of `ramp` at iteration t (s_i before `start`, s_f from `end` on)."""
    if t <= start:
        return s_i
    if t >= end:
        return s_f
    p = (t - start) / (end - start)
    if ramp == "cubic":
        return s_f + (s_i - s_f) * (1.0 - p) ** 3
    if ramp == "linear":
        return s_f + (s_i - s_f) * (1.0 - p)
    if ramp == "harmonic":
        return s_f + (s_i - s_f) * (1.0 + math.cos(math.pi * p)) / 2.0
    raise SwampError(f"unknown `ramp` {ramp!r}; use {', '.join(RAMPS)}")


def kept_count(sparsity: float, numel: int) -> int:
    """Weights kept at `sparsity` of `numel`: rounded half up, at least one."""
    return max(1, math.floor((1.0 - sparsity) * numel + 0.5))


@dataclass(frozen=True)
class GradualStep:
    """The gradual pruning of one level: from the level's start mask to `target_density`."""

    ramp: str
    start: int                  # first iteration of the ramp (sparsity s_i there)
    end: int                    # last pruning step (sparsity s_f from there on)
    every: int                  # iterations between pruning steps
    target_density: float
    scorer: str = "magnitude"
    scope: str = "global"

    def __post_init__(self) -> None:
        if self.ramp not in RAMPS:
            raise SwampError(f"unknown `ramp` {self.ramp!r}; use {', '.join(RAMPS)}")
        if self.every < 1 or self.end <= self.start:
            raise SwampError(f"gradual pruning needs `prune_start` < `prune_end` and "
                             f"`prune_every` >= 1 (got {self.start}, {self.end}, {self.every})")

    def points(self) -> list[int]:
        """The iterations after which the mask is pruned: start + k*every before end, end."""
        return [*range(self.start + self.every, self.end, self.every), self.end]

    def counts_at(self, t: int, mask: Mask) -> dict[str, int]:
        """Kept counts at iteration t for a level that starts from `mask` (one replica's),
        in the format of `core.pruning.target_counts` (global: key '')."""
        s_f = 1.0 - self.target_density
        if self.scope == "global":
            s_i = 1.0 - mask.nnz / mask.numel
            return {"": kept_count(ramp_sparsity(self.ramp, t, self.start, self.end, s_i, s_f),
                                   mask.numel)}
        out = {}
        for n in mask.names:
            numel = mask[n].numel()
            s_i = 1.0 - int(mask[n].sum()) / numel
            out[n] = kept_count(ramp_sparsity(self.ramp, t, self.start, self.end, s_i, s_f),
                                numel)
        return out


class GradualPrune(Callback):
    """Re-masks after every step (as `ReMask`) and prunes each replica's mask at the
    `GradualStep`'s points; the current masks are part of the checkpoint."""

    key = "gradual"

    def __init__(self, mask: Mask, step: GradualStep):
        self.initial = mask             # the level's start mask (one replica's layout)
        self.spec = step
        self.points = set(step.points())
        self.current: dict[str, torch.Tensor] | None = None   # replica-major when stacked
        self.stacked = False
        self.bound: Any = None

    def on_start(self, loop: "LoopState") -> None:
        params = loop.replicas.named_parameters()
        first = self.initial.names[0]
        # stacked replicas (even one) carry a leading replica dim the mask does not have
        self.stacked = params[first].dim() == self.initial[first].dim() + 1
        if self.current is None:
            if self.stacked:
                n = loop.replicas.n
                self.current = {k: v.unsqueeze(0).repeat(n, *([1] * v.dim())).contiguous()
                                for k, v in self.initial.items()}
            else:
                self.current = dict(self.initial.items())
        self._bind(loop)

    def _bind(self, loop: "LoopState") -> None:
        assert self.current is not None
        self.bound = Mask(self.current).bind(loop.replicas.named_parameters(), loop.optimizer)
        self.bound.apply_()

    def masks(self) -> list[Mask]:
        """Each replica's current mask."""
        assert self.current is not None
        if not self.stacked:
            return [Mask(self.current)]
        n = next(iter(self.current.values())).shape[0]
        return [Mask({k: v[i] for k, v in self.current.items()}) for i in range(n)]

    def on_step_end(self, loop: "LoopState") -> None:
        if loop.step in self.points:
            self._prune(loop)
        else:
            self.bound.apply_()

    def _prune(self, loop: "LoopState") -> None:
        params = loop.replicas.named_parameters()
        s = self.spec
        # counts from the level's start mask: the ramp is the same for every replica
        counts = s.counts_at(loop.step, self.initial)
        new = []
        for i, mask in enumerate(self.masks()):
            weights = {k: (params[k][i] if self.stacked else params[k]).detach()
                       for k in mask.names}
            new.append(keep_exactly(score(weights, mask, s.scorer), mask, counts, s.scope))
        if self.stacked:
            self.current = {k: torch.stack([m[k] for m in new]) for k in self.initial.names}
        else:
            self.current = dict(new[0].items())
        self._bind(loop)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(self.current or {}), {}

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if tensors:
            self.current = {k: tensors[k].bool() for k in self.initial.names}
