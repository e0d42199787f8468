"""One level of method `slt` (strong lottery tickets, issue 16; docs/slt.md).

The level's particles are copies of a `ScoredNetwork` (train/scores.py): the model's
prunable weights frozen at `slt_init` (scaled by 1/sqrt(the level's density)), one trainable
score per weight, the forward pass through the top |score| at exactly the counts of an IMP
level of the same index (`target_counts`: the densities of every other method's levels).
The engines train them like any model (the one loop; `vectorised` stacks them with vmap), on
a schedule without a rewind point (no weight is trained, so there is nothing to rewind to).

The level's mask combines the particles' scores: `average` keeps the top |mean score| (the
SWAMP-style average, in score space); `vote` (a majority) and `overlap` (all) let each
particle take its own mask and combine the masks as `core/combine.py` does (rank by votes,
then by mean |score|, then the index tie-break; exact counts, so the share only says which
weights pass the vote, recorded, not which are kept). The level's solution is the frozen weights times
that mask (biases and norm layers stay at their initialisation; BatchNorm statistics are
recomputed by the loop).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

import torch

from swamp.core.combine import keep_top_voted
from swamp.core.masks import Mask
from swamp.core.pruning import keep_exactly, target_counts
from swamp.core.seeds import derive_seed
from swamp.engines.base import TrainContext
from swamp.train import ParticleResult, Schedule
from swamp.train.scores import ScoredNetwork, average_scores

StateDict = dict[str, torch.Tensor]


class ScoreLevel:
    """What level `level` of an slt run trains, and how its particles become its ticket."""

    def __init__(self, settings: Any, ctx: TrainContext, init: StateDict,
                 prunable: Sequence[str], level: int, density: float):
        s = settings
        self.settings, self.level = s, level
        model = copy.deepcopy(ctx.model)
        model.load_state_dict(init)
        ones = Mask.ones(model, prunable)
        self.counts = target_counts(ones, s.prune.prune_fraction, level, s.prune.scope)[level]
        init_name = None if s.method.slt_init == "model" else s.method.slt_init
        # one draw of frozen weights and initial scores per run: levels differ by their
        # density (the weights' scale, the counts) only
        self.net = ScoredNetwork(model, density, scope=s.prune.scope, init=init_name,
                                 names=prunable, seed=derive_seed(s.run.seed, "slt"),
                                 counts=self.counts)
        t = dataclasses.replace(ctx.settings, rewind_epochs=0.0, rewind_iters=0)
        schedule = Schedule.build(t, len(ctx.data.train), bool(s.method.swa))
        self.ctx = TrainContext(self.net, ctx.data, schedule, t, ctx.objective)
        self.start: StateDict = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def particles(self, results: Sequence[ParticleResult]) -> list[StateDict]:
        """Each particle's ticket: frozen weights times its own mask, with its buffers."""
        tickets = []
        for r in results:
            model_state, scores = self.net.parts(r.state)
            tickets.append(self.ticket(model_state, self.mask_of(scores)))
        return tickets

    def mask_of(self, scores: StateDict) -> Mask:
        ranked = {n: scores[n].detach().abs() for n in self.net.names}
        return keep_exactly(ranked, self.net.ones, self.counts, self.net.scope)

    def ticket(self, model_state: StateDict, mask: Mask) -> StateDict:
        return mask.apply_to_state_dict({k: v.detach().clone() for k, v in model_state.items()})

    def combine(self, results: Sequence[ParticleResult]) -> tuple[Mask, dict[str, Any]]:
        """The level's mask from its trained particles' scores, and a record of how."""
        return self.combine_scores([self.net.parts(r.state)[1] for r in results])

    def combine_scores(self, scores: Sequence[StateDict]) -> tuple[Mask, dict[str, Any]]:
        """The mask of several particles' scores (`slt_combine`), and a record of how."""
        how = self.settings.method.slt_combine
        if len(scores) == 1:
            return self.mask_of(scores[0]), {"solution": "single particle"}
        if how == "average":
            return (self.mask_of(average_scores(scores)),
                    {"solution": "mask of the mean score", "particles": len(scores)})
        ones, names = self.net.ones, self.net.names
        masks = [self.mask_of(s) for s in scores]
        share = 1.0 if how == "overlap" else 0.5        # vote: a majority
        need = max(1, math.ceil(share * len(scores) - 1e-9))
        votes = {n: torch.stack([m[n] for m in masks]).sum(0) for n in names}
        mean_abs = {n: torch.stack([s[n].detach().abs().float() for s in scores]).mean(0)
                    for n in names}
        mask = keep_exactly(mean_abs, ones, self.counts, self.net.scope,
                            keep=lambda s, m, k: keep_top_voted(votes, s, m, k))
        passed = sum(int(((votes[n] >= need) & ones[n]).sum()) for n in names)
        return mask, {"solution": f"mask {how} of the particles' masks",
                      "particles": len(scores), "votes_needed": need, "passed": passed,
                      "target": mask.nnz, "added_back": max(0, mask.nnz - passed),
                      "removed_extra": max(0, passed - mask.nnz)}

    def solution(self, results: Sequence[ParticleResult], mask: Mask) -> StateDict:
        """The frozen weights times the level's mask (buffers of the first particle; the loop
        recomputes BatchNorm statistics)."""
        return self.ticket(self.net.parts(results[0].state)[0], mask)
