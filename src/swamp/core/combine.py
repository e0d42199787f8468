"""Mask combination: several states prune themselves, their masks vote, and the result is
adjusted to the exact count of the density schedule (colt: overlap; mask-vote: a share)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from swamp.core.masks import Mask
from swamp.core.patterns import NM, Blocks, Pattern
from swamp.core.pruning import (block_norms, from_blocks, keep_exactly, keep_groups, keep_top,
                                prune, target_counts, to_blocks)


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
                  generator: torch.Generator | None = None, pattern: Pattern = None
                  ) -> tuple[Mask, dict]:
    """Each state prunes itself to the level target; keep a weight if at least
    ceil(share * N) states keep it (share 1: intersection, COLT; share <= 1/N: union).

    The density schedule stays exact: the result keeps exactly as many weights as pruning one
    state would (per layer with the layerwise scope). Weights are ranked by vote count, then
    by mean |w| over the states, then by the index tie-break (`keep_top_voted`): if the vote
    keeps too many, the passers with the fewest votes (among those, the smallest mean |w|)
    are removed; if it keeps too few (the usual case for an intersection), the removed
    weights with the most votes (among those, the largest mean |w|) are added back.
    Returns the mask and a record of what the adjustment did.

    Patterns: with `Blocks` the whole combination runs on tiles (each state's tile norms,
    the tile mask; counts in the record are tiles); with `NM` every member prunes itself to
    the next group count and every group keeps exactly that count, ranked by votes, then
    mean |w|, then index.
    """
    if isinstance(pattern, Blocks):
        tiles, record = combine_masks([block_norms(s, mask, pattern) for s in states],
                                      to_blocks(mask, pattern), fraction, share, scorer=scorer,
                                      scope=scope, generator=generator)
        return from_blocks(tiles, mask, pattern), {**record, "counted_in": f"{pattern} blocks"}
    masks = [prune(s, mask, fraction, scorer=scorer, scope=scope, generator=generator,
                   pattern=pattern) for s in states]
    need = max(1, math.ceil(share * len(states) - 1e-9))
    votes = {n: torch.stack([m[n] for m in masks]).sum(0) for n in mask.names}
    passed = Mask({n: (votes[n] >= need) & mask[n] for n in mask.names})
    # every particle's own mask has the exact target count (per layer: the same recurrence)
    counts = target_counts(mask, fraction, 1, scope, pattern)[1]
    target = masks[0].nnz
    if isinstance(pattern, NM):
        result = keep_groups([votes, mean_magnitude(states, mask)], mask, counts[""], pattern)
    else:
        result = keep_exactly(mean_magnitude(states, mask), mask, counts, scope,
                              keep=lambda s, m, k: keep_top_voted(votes, s, m, k))
    record = {"votes_needed": need, "voters": len(states), "passed": passed.nnz,
              "target": target, "added_back": max(0, target - passed.nnz),
              "removed_extra": max(0, passed.nnz - target)}
    return result, record
