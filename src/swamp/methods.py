"""What makes each named method a setting of the one level loop (DESIGN.md section 2).

`MethodPlan` answers, for one run, the questions on which the methods differ:

- which particles a level trains (`jobs`): how many (swamp+: one until --swamp-plus-level),
  on which data (colt: disjoint segments of the training split, plus one *ticket particle*
  on the whole split that is the level's solution);
- where a level starts (`start_state`): the rewind point, or (sms) the previous level's
  solution under the new mask, trained over the full T0..T schedule again;
- how the particles become the level's solution (`solution`): their uniform average, a
  greedy soup chosen on the validation split only, or (colt) the ticket particle;
- how the next mask is made (`next_mask`): prune the solution (imp, swamp, sms, ...); draw it
  at random with the same density (random); prune the dense level-0 solution straight to
  the level's density (oneshot); or let each particle prune its own weights and combine the
  masks (colt: overlap; mask-vote: a share of votes). Mask combinations are adjusted to
  the exact count of the density schedule, see `combine_masks`.

Nothing here trains; the loop calls these with the states it has trained.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from swamp.core.averaging import average_states
from swamp.config import MethodSpec, Settings, method_spec
from swamp.engines import ParticleJob
from swamp.core.masks import Mask
from swamp.core.combine import combine_masks
from swamp.core.pruning import keep_exactly, prune, score, target_counts
from swamp.core.seeds import derive_seed

StateDict = dict[str, torch.Tensor]


# ---- greedy soup ---------------------------------------------------------------------------
def greedy_soup(particles: Sequence[StateDict], val_acc: Sequence[float],
                make: Callable[[list[int]], StateDict], score_val: Callable[[StateDict], float]
                ) -> tuple[StateDict, list[int], float]:
    """Model-soup greedy selection (Wortsman et al. 2022) on validation accuracy only.

    Particles are tried from the best validation accuracy down; one joins the soup only if
    the soup's validation accuracy does not drop with it (after `make`: average, mask, BN
    recompute), i.e. if it is >= the current soup's (ties join, as in Wortsman et al.).
    `val_acc` are the particles' own validation accuracies.
    Returns (soup state, chosen particle indices in order of joining, soup val accuracy).
    """
    order = sorted(range(len(particles)), key=lambda i: (-val_acc[i], i))
    chosen = [order[0]]
    soup, best = particles[order[0]], val_acc[order[0]]
    for i in order[1:]:
        candidate = make(chosen + [i])
        acc = score_val(candidate)
        if acc >= best:
            chosen.append(i)
            soup, best = candidate, acc
    return soup, chosen, best


# ---- the plan of one run -------------------------------------------------------------------
class MethodPlan:
    """The method-specific decisions of one run (see the module docstring)."""

    def __init__(self, settings: Settings, n_train: int, device: torch.device | str = "cpu"):
        self.settings = settings
        self.spec: MethodSpec = method_spec(settings.method.method)
        self.n_train = n_train
        self.device = torch.device(device)
        p = settings.prune
        self.one_target = self.spec.masks == "oneshot" and settings.method.target_sparsity
        self.levels = 1 if self.one_target else p.levels
        self._segments: list[torch.Tensor] | None = None

    # -- shape of the run ----------------------------------------------------------------------
    @property
    def combines_masks(self) -> bool:
        return self.spec.combine in ("mask-overlap", "mask-vote")

    @property
    def has_ticket_particle(self) -> bool:
        """Disjoint data: the level's solution is one more particle on the whole split."""
        return self.spec.data_split == "disjoint"

    def swamp_plus_level(self) -> int:
        k = self.settings.method.swamp_plus_level
        return math.ceil(self.settings.prune.levels / 2) if k is None else k

    def particles_at(self, level: int) -> int:
        n = int(self.settings.method.particles or 1)
        if self.spec.single_until and level < self.swamp_plus_level():
            return 1
        return n

    def target_density(self, level: int) -> float:
        if self.one_target and level >= 1:
            return 1.0 - float(self.settings.method.target_sparsity)
        return (1 - self.settings.prune.prune_fraction) ** level

    def segments(self) -> list[torch.Tensor]:
        """Disjoint, seeded segments of the training split (fixed for the run)."""
        if self._segments is None:
            n = int(self.settings.method.particles or 1)
            g = torch.Generator().manual_seed(derive_seed(self.settings.run.seed, "segments"))
            perm = torch.randperm(self.n_train, generator=g)
            self._segments = [c.sort().values.to(self.device) for c in perm.chunk(n)]
        return self._segments

    def jobs(self, level: int) -> list[ParticleJob]:
        seed = self.settings.run.seed
        n = self.particles_at(level)
        subsets: list[torch.Tensor | None] = [None] * n
        if self.has_ticket_particle:
            subsets = [*self.segments(), None]
        return [ParticleJob(level, i, derive_seed(seed, "order", level, i),
                            derive_seed(seed, "augment", level, i), subset)
                for i, subset in enumerate(subsets)]

    def members(self, n_trained: int) -> list[int]:
        """Indices of the particles that form the level (output ensemble, mask votes):
        all of them, except the ticket particle of disjoint-data methods."""
        return list(range(n_trained - 1 if self.has_ticket_particle else n_trained))

    # -- where a level starts -----------------------------------------------------------------
    def start_state(self, rewind: StateDict, previous: StateDict | None) -> StateDict:
        if self.spec.restart == "previous" and previous is not None:
            return previous
        return rewind

    # -- the level's solution -----------------------------------------------------------------
    def solution(self, particles: Sequence[StateDict], val_acc: Sequence[float], mask: Mask,
                 refit: Callable[[StateDict], StateDict],
                 score_val: Callable[[StateDict], float]) -> tuple[StateDict, dict]:
        """The level's solution and a record of how it was made.

        `refit` masks nothing: it loads a state, recomputes BatchNorm and returns the state.
        """
        if self.has_ticket_particle:
            return particles[-1], {"solution": "ticket particle", "index": len(particles) - 1}
        if len(particles) == 1:
            return particles[0], {"solution": "single particle"}

        def make(indices: list[int]) -> StateDict:
            return refit(mask.apply_to_state_dict(average_states([particles[i]
                                                                  for i in indices])))

        if self.settings.method.soup == "greedy":
            soup, chosen, acc = greedy_soup(particles, val_acc, make, score_val)
            return soup, {"solution": "greedy soup", "soup": chosen, "soup_val_acc": acc}
        return make(list(range(len(particles)))), {"solution": "uniform average"}

    # -- the next mask ------------------------------------------------------------------------
    def _generator(self, level: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.settings.run.seed, "prune", level))

    def combined_mask(self, level: int, members: Sequence[StateDict], mask: Mask
                      ) -> tuple[Mask, dict]:
        """colt / mask-vote: the next mask from the particles' own masks."""
        p = self.settings.prune
        share = 1.0 if self.spec.combine == "mask-overlap" else self.settings.method.vote_share
        return combine_masks(members, mask, p.prune_fraction, share, scorer=p.scorer,
                             scope=p.scope, generator=self._generator(level))

    def next_mask(self, level: int, solution: StateDict, mask: Mask,
                  dense_solution: Callable[[], StateDict]) -> Mask:
        """The mask of level + 1 for methods that prune one state (not mask combinations)."""
        p = self.settings.prune
        if self.spec.masks == "oneshot":
            dense = dense_solution()
            ones = Mask({n: torch.ones_like(mask[n]) for n in mask.names})
            scores = score(dense, ones, p.scorer, self._generator(0))
            if self.one_target:
                # One step from dense to the target sparsity: the same exact count rule as
                # a level, globally or per layer.
                counts = target_counts(ones, float(self.settings.method.target_sparsity), 1,
                                       p.scope)[1]
            else:
                counts = target_counts(ones, p.prune_fraction, level + 1, p.scope)[level + 1]
            return keep_exactly(scores, ones, counts, p.scope)
        scorer = "random" if self.spec.masks == "random" else p.scorer
        return prune(solution, mask, p.prune_fraction, scorer=scorer, scope=p.scope,
                     generator=self._generator(level))
