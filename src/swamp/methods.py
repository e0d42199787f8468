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
from swamp.core.pruning import keep_top, n_to_remove, prune, score
from swamp.core.seeds import derive_seed

StateDict = dict[str, torch.Tensor]


# ---- exact mask combinations ---------------------------------------------------------------
def mean_magnitude(states: Sequence[Mapping[str, torch.Tensor]], mask: Mask
                   ) -> dict[str, torch.Tensor]:
    """Mean over states of |w| on every prunable tensor (the tie-break of mask combination)."""
    out = {}
    for n in mask.names:
        acc = torch.zeros(mask[n].shape, dtype=torch.float32, device=mask[n].device)
        for s in states:
            acc += s[n].detach().abs().float().to(acc.device)
        out[n] = acc / len(states)
    return out


def keep_top_voted(votes: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                   mask: Mask, n_keep: int) -> Mask:
    """Exactly `n_keep` weights of `mask`, ranked by vote count, then by `scores` (mean |w|),
    then by the index tie-break of `keep_top` (the lower flat index is dropped first).

    This one ranking serves both directions of `combine_masks`: when more weights pass the
    vote than the schedule keeps, the passers with the fewest votes go first (a unanimous
    weight outranks a 2-vote weight whatever their magnitudes); when too few pass, every
    passer stays and the rest are added back by the most votes first, so a weight no
    particle kept never comes back before one that a particle kept.
    """
    if not 0 <= n_keep <= mask.nnz:
        return keep_top(scores, mask, n_keep)          # its one-line error
    kept = Mask({n: torch.zeros_like(mask[n]) for n in mask.names})
    slots = n_keep
    top = max((int(votes[n][mask[n]].max()) for n in mask.names if mask[n].any()), default=0)
    for v in range(top, -1, -1):
        if slots == 0:
            break
        tier = Mask({n: mask[n] & (votes[n] == v) for n in mask.names})
        have = tier.nnz
        if have == 0:
            continue
        kept = kept.union(tier if have <= slots else keep_top(scores, tier, slots))
        slots -= min(have, slots)
    return kept


def combine_masks(states: Sequence[Mapping[str, torch.Tensor]], mask: Mask, fraction: float,
                  share: float, *, scorer: str = "magnitude", scope: str = "global",
                  generator: torch.Generator | None = None) -> tuple[Mask, dict]:
    """Each state prunes itself to the level target; keep a weight if at least
    ceil(share * N) states keep it (share 1: intersection, COLT; share <= 1/N: union).

    The density schedule stays exact: the result keeps exactly as many weights as pruning one
    state would (per layer with the layerwise scope). Weights are ranked by vote count, then
    by mean |w| over the states, then by the index tie-break (`keep_top_voted`): if the vote
    keeps too many, the passers with the fewest votes (among those, the smallest mean |w|)
    are removed; if it keeps too few (the usual case for an intersection), the removed
    weights with the most votes (among those, the largest mean |w|) are added back.
    Returns the mask and a record of what the adjustment did.
    """
    masks = [prune(s, mask, fraction, scorer=scorer, scope=scope, generator=generator)
             for s in states]
    need = max(1, math.ceil(share * len(states) - 1e-9))
    votes = {n: torch.stack([m[n] for m in masks]).sum(0) for n in mask.names}
    passed = Mask({n: (votes[n] >= need) & mask[n] for n in mask.names})
    scores = mean_magnitude(states, mask)
    target = masks[0].nnz   # every particle's own mask has the exact target count
    if scope == "global":
        result = keep_top_voted(votes, scores, mask, target)
    else:
        result = Mask({n: keep_top_voted(votes, scores, Mask({n: mask[n]}),
                                         int(masks[0][n].sum()))[n] for n in mask.names})
    record = {"votes_needed": need, "voters": len(states), "passed": passed.nnz,
              "target": target, "added_back": max(0, target - passed.nnz),
              "removed_extra": max(0, passed.nnz - target)}
    return result, record


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
def target_counts(mask: Mask, fraction: float, levels: int, scope: str) -> list[dict[str, int]]:
    """Per-level kept counts per tensor of iterative pruning from `mask` (exact recurrence of
    `pruning.prune`: remove floor(fraction * remaining + 0.5) per level, globally or per layer).
    For the global scope only the total is defined; it is stored under the key ''."""
    out = []
    if scope == "global":
        n = mask.nnz
        for _ in range(levels + 1):
            out.append({"": n})
            n -= n_to_remove(fraction, n)
        return out
    counts = {n: int(mask[n].sum()) for n in mask.names}
    for _ in range(levels + 1):
        out.append(dict(counts))
        counts = {n: c - n_to_remove(fraction, c) for n, c in counts.items()}
    return out


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
            if p.scope == "global":
                return keep_top(scores, ones, counts[""])
            return Mask({n: keep_top(scores, Mask({n: ones[n]}), counts[n])[n]
                         for n in ones.names})
        scorer = "random" if self.spec.masks == "random" else p.scorer
        return prune(solution, mask, p.prune_fraction, scorer=scorer, scope=p.scope,
                     generator=self._generator(level))
