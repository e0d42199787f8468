"""Pruning: score the remaining weights, then remove an exact number of the lowest-scoring.

Scorers (`SCORERS`) map one layer's weights and mask to non-negative float scores:

- ``magnitude``: |w|.
- ``lamp``: Layer-Adaptive Magnitude Pruning (Lee et al., ICLR 2021). Within a layer, sort the
  remaining weights by w² ascending; the weight at sorted position u scores
  w_u² / Σ_{v≥u} w_v². Only unpruned weights enter the sums. The largest weight of each layer
  scores 1 (the rest score less), so global LAMP pruning keeps every non-zero layer alive
  unless asked to remove almost everything.
- ``random``: uniform [0, 1) scores from an explicit `torch.Generator` (reproducible).

Scopes: ``global`` ranks all prunable tensors together; ``layerwise`` removes the same fraction
of each layer's own remaining weights; ``nm`` ranks each group of M consecutive weights along
the input dimension on its own (N:M sparsity, with `pattern=NM(n, m)`).

Patterns (`swamp.core.patterns`; every function here takes `pattern=`): with `Blocks(r, c)`
the weight matrices are cut into r x c tiles, each tile becomes one "weight" whose value is
its L2 norm, and everything below (scorers, scopes, exact counts, ties) runs on the tensors
of tile norms, counting tiles; the tile mask is then expanded back. With `NM(n, m)` every
group keeps the same count (`patterns.nm_counts`), chosen by score within the group, ties
to the lower index like everywhere else.

Exactness rules (shared by every path):

- the number removed is ``n = floor(fraction * remaining + 0.5)`` (round half up, in float64;
  Python's `round` would round 2.5 to 2), per layer for the layerwise scope;
- pruned weights are never revived (they are not candidates);
- scores are compared as float32; among equal scores the weight with the lower flat index is
  removed first, where the global index runs over the tensors in `mask.names` order.

The selection (`prune_to_count`) is an exact radix select over float32 bit patterns: for
non-negative floats the int32 bit pattern is monotone in the value, so a histogram of the
high 16 bits (per-layer `bincount`) finds the bucket holding the n-th smallest score, and a
histogram of the low 16 bits of that bucket's few elements finds the exact threshold.
Only per-layer temporaries are allocated and magnitude scores are recomputed per pass rather
than stored, so pruning needs no second full copy of the weights. Tiny inputs, and scores
the radix path does not handle (negative, -0.0, inf, NaN), take a simple sort-based path that
gives identical masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import torch
from torch import Tensor

from swamp.errors import SwampError
from swamp.core.masks import Mask
from swamp.core.patterns import NM, Blocks, Pattern, matrix_shape, nm_counts

__all__ = [
    "SCORERS",
    "SCOPES",
    "Scorer",
    "n_to_remove",
    "score",
    "prune",
    "prune_to_count",
    "keep_top",
    "keep_exactly",
    "target_counts",
    "counts_like",
    "to_blocks",
    "from_blocks",
    "block_norms",
    "group_counts",
    "keep_groups",
]

Scorer = Callable[[Tensor, Tensor, "torch.Generator | None"], Tensor]
"""(weight, layer mask, generator) -> float scores of the weight's shape; higher = keep."""


# ---------------------------------------------------------------------------------------
# scorers


def magnitude(weight: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """|w|."""
    return weight.detach().abs()


def lamp(weight: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LAMP scores w_u² / Σ_{v≥u} w_v² over the layer's unpruned weights; pruned score 0."""
    a = weight.detach().flatten().abs()
    m = mask.flatten().to(a.device)
    # Sorting |w| orders w² without float32 rounding ties; stable: equal |w| keep index order.
    vals, order = torch.sort(a[m], stable=True)
    vals = vals.double().square()  # float64: suffix sums over millions of weights
    suffix = vals.flip(0).cumsum(0).flip(0)
    s = torch.where(suffix > 0, vals / suffix.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    kept = torch.empty(s.shape, dtype=torch.float32, device=s.device)
    kept[order] = s.float()
    out = torch.zeros(a.shape, dtype=torch.float32, device=a.device)
    out[m] = kept
    return out.view(weight.shape)


def random(weight: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform [0, 1) scores drawn from `generator` (one draw per element, whatever the mask)."""
    if generator is None:
        raise SwampError(
            "the 'random' scorer needs a generator; pass generator=torch.Generator()."
            "manual_seed(seed) so that the mask is reproducible"
        )
    s = torch.rand(weight.shape, generator=generator, device=generator.device)
    return s.to(weight.device)


SCORERS: dict[str, Scorer] = {"magnitude": magnitude, "lamp": lamp, "random": random}
SCOPES = ("global", "layerwise", "nm")


def _get_scorer(scorer: str | Scorer) -> Scorer:
    if callable(scorer):
        return scorer
    try:
        return SCORERS[scorer]
    except KeyError:
        raise SwampError(
            f"unknown scorer {scorer!r}; known scorers: {', '.join(sorted(SCORERS))}"
        ) from None


def _check_weights(weights: Mapping[str, Tensor], mask: Mask) -> None:
    for n in mask.names:
        if n not in weights:
            raise SwampError(
                f"the weights lack the prunable tensor {n!r}; pass the state dict of the "
                f"model the mask was made for"
            )
        if weights[n].shape != mask[n].shape:
            raise SwampError(
                f"weight {n!r} has shape {tuple(weights[n].shape)} but the mask has "
                f"{tuple(mask[n].shape)}; pass the state dict of the model the mask was made for"
            )


def score(
    weights: Mapping[str, Tensor],
    mask: Mask,
    scorer: str | Scorer = "magnitude",
    generator: torch.Generator | None = None,
    pattern: Pattern = None,
) -> dict[str, Tensor]:
    """Scores of every prunable tensor (only names in `mask` are read from `weights`).

    With a `Blocks` pattern the scores are those of the tiles (the scorer applied to the
    tile norms under the tile mask), in the shape of the tile grid."""
    fn = _get_scorer(scorer)
    _check_weights(weights, mask)
    if isinstance(pattern, Blocks):
        return score(block_norms(weights, mask, pattern), to_blocks(mask, pattern), fn,
                     generator)
    with torch.no_grad():
        return {n: fn(weights[n], mask[n], generator) for n in mask.names}


class _LazyScores(Mapping[str, Tensor]):
    """Scores computed on access: |w| is cheaper to recompute per pass than to store."""

    def __init__(self, weights: Mapping[str, Tensor], mask: Mask, fn: Scorer) -> None:
        self._w, self._m, self._fn = weights, mask, fn

    def __getitem__(self, name: str) -> Tensor:
        return self._fn(self._w[name], self._m[name], None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._m.names)

    def __len__(self) -> int:
        return len(self._m)


# ---------------------------------------------------------------------------------------
# exact selection

_RADIX_MIN = 1 << 16  # below this many remaining weights the sort path is as fast
_BUCKETS = 1 << 16
_OFFSET = (1 << 15) + 1  # bucket of a non-negative float = its high 16 bits + _OFFSET
_INF_HIGH = 0x7F80  # high 16 bits of +inf; higher buckets hold NaNs


def _flat_f32(t: Tensor) -> Tensor:
    return t.detach().flatten().to(torch.float32).contiguous()


def _remove_lowest_sort(
    get_score: Callable[[int], Tensor], masks: list[Tensor], k: int
) -> list[Tensor]:
    """Reference path: concatenate remaining scores, stable sort, drop the first k."""
    vals, idx, offset = [], [], 0
    for i, m in enumerate(masks):
        s = _flat_f32(get_score(i))
        vals.append(s[m])
        idx.append(m.nonzero().squeeze(1) + offset)
        offset += m.numel()
    v = torch.cat(vals)
    if torch.isnan(v).any():
        raise SwampError("pruning scores contain NaN (did training diverge?); check the weights")
    order = torch.sort(v, stable=True).indices[:k]  # stable: ties keep index order
    keep = torch.cat(masks)
    keep[torch.cat(idx)[order]] = False
    return list(keep.split([m.numel() for m in masks]))


def _buckets(s: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """int32 bits of `s`, and bucket = high 16 bits + 32769 in [1, 65536]; pruned -> 0.

    Bucket 0 for pruned weights lets pass 2 keep `bucket >= b` without re-reading the mask.
    """
    bits = s.view(torch.int32)
    high = bits >> 16  # arithmetic shift: negative floats land in [-32768, 0)
    high += _OFFSET  # negative floats -> [1, 32769), non-negative floats -> [32769, 65537)
    # In place and without temporaries (mul_ by a bool tensor would allocate an int copy).
    torch.where(m, high, torch.zeros((), dtype=high.dtype, device=high.device), out=high)
    return bits, high


# One function per pass and layer, so that a layer's temporaries die before the next layer's.
def _pass1(s: Tensor, m: Tensor) -> Tensor:
    return torch.bincount(_buckets(s, m)[1], minlength=_BUCKETS + 1)


def _pass2(s: Tensor, m: Tensor, b: int) -> tuple[Tensor, Tensor, Tensor]:
    bits, high = _buckets(s, m)
    keep = high >= b  # pruned are in bucket 0 < b; bucket b is kept for now, fixed later
    idx = (high == b).nonzero().squeeze(1)  # index order = tie-break order
    return keep, idx, bits[idx] & 0xFFFF


def _remove_lowest_radix(
    get_score: Callable[[int], Tensor], masks: list[Tensor], k: int
) -> list[Tensor] | None:
    """Exact radix select on float32 bit patterns; None if a score is negative/-0.0/inf/NaN."""
    device = masks[0].device
    # Pass 1: histogram of the high 16 bits over all layers (bucket 0: pruned, ignored).
    hist = torch.zeros(_BUCKETS + 1, dtype=torch.int64, device=device)
    for i, m in enumerate(masks):
        hist += _pass1(_flat_f32(get_score(i)), m)
    hist = hist.cpu()
    hist[0] = 0
    if hist[:_OFFSET].any() or hist[_OFFSET + _INF_HIGH :].any():
        return None  # sign bit set (negative or -0.0), or inf/NaN: let the sort path decide
    cum = hist.cumsum(0)
    b = int(torch.searchsorted(cum, k))  # bucket of the k-th smallest score (b >= _OFFSET)
    k_in_b = k - int(cum[b - 1])

    # Pass 2: keep everything above bucket b; collect bucket b's elements (few) by index.
    keeps, cand_idx, cand_low = [], [], []
    low_hist = torch.zeros(_BUCKETS, dtype=torch.int64, device=device)
    for i, m in enumerate(masks):
        keep, idx, low = _pass2(_flat_f32(get_score(i)), m, b)
        keeps.append(keep)
        cand_idx.append(idx)
        cand_low.append(low)
        low_hist += torch.bincount(low, minlength=_BUCKETS)
    low_cum = low_hist.cpu().cumsum(0)
    lo = int(torch.searchsorted(low_cum, k_in_b))  # low bits of the exact threshold
    ties_to_remove = k_in_b - (int(low_cum[lo - 1]) if lo > 0 else 0)

    # Remove bucket-b elements below the threshold, then the first ties in global index order.
    for keep, idx, low in zip(keeps, cand_idx, cand_low):
        drop = idx[low < lo]
        if ties_to_remove > 0:
            ties = idx[low == lo][:ties_to_remove]
            ties_to_remove -= ties.numel()
            drop = torch.cat([drop, ties])
        keep[drop] = False
    return keeps


def _remove_lowest(
    get_score: Callable[[int], Tensor],
    masks: list[Tensor],
    k: int,
    remaining: int,
    method: Literal["auto", "radix", "sort"] = "auto",
) -> list[Tensor]:
    """New flat masks with the k lowest-scoring of the `remaining` kept weights removed."""
    if k == 0:
        return [m.clone() for m in masks]
    if k == remaining:
        return [torch.zeros_like(m) for m in masks]
    if method == "radix" or (method == "auto" and remaining >= _RADIX_MIN):
        out = _remove_lowest_radix(get_score, masks, k)
        if out is not None:
            return out
    return _remove_lowest_sort(get_score, masks, k)


def prune_to_count(scores: Mapping[str, Tensor], mask: Mask, n_remove: int) -> Mask:
    """Remove exactly `n_remove` of the remaining weights with the lowest scores.

    Ties go to the lower global flat index (tensors in `mask.names` order); pruned weights
    are ignored and stay pruned. `scores` needs only the names in `mask`.
    """
    remaining = mask.nnz
    if not 0 <= n_remove <= remaining:
        raise SwampError(
            f"cannot remove {n_remove} weights: the mask has {remaining} remaining; "
            f"ask for between 0 and {remaining}"
        )
    _check_weights(scores, mask)
    return _prune_to_count(scores, mask, n_remove, remaining)


def _prune_to_count(
    scores: Mapping[str, Tensor], mask: Mask, n_remove: int, remaining: int
) -> Mask:
    names = mask.names
    masks = [mask[n].flatten() for n in names]
    with torch.no_grad():
        flat = _remove_lowest(lambda i: scores[names[i]], masks, n_remove, remaining)
    return Mask({n: f.view(mask[n].shape) for n, f in zip(names, flat)})


def keep_top(scores: Mapping[str, Tensor], mask: Mask, n_keep: int) -> Mask:
    """Keep exactly the `n_keep` highest-scoring remaining weights (same tie rule)."""
    remaining = mask.nnz
    if not 0 <= n_keep <= remaining:
        raise SwampError(
            f"cannot keep {n_keep} weights: the mask has {remaining} remaining; "
            f"ask for between 0 and {remaining}"
        )
    return prune_to_count(scores, mask, remaining - n_keep)


def n_to_remove(fraction: float, remaining: int) -> int:
    """floor(fraction * remaining + 0.5): round half up (Python's round(2.5) would give 2)."""
    return math.floor(fraction * remaining + 0.5)


def prune(
    weights: Mapping[str, Tensor],
    mask: Mask,
    fraction: float,
    scorer: str | Scorer = "magnitude",
    scope: str = "global",
    generator: torch.Generator | None = None,
    pattern: Pattern = None,
) -> Mask:
    """The next mask: remove `fraction` of the remaining weights, lowest scores first.

    `weights` may be a model's state dict; only the names in `mask` are read. Global scope
    removes `n_to_remove(fraction, mask.nnz)` weights in one ranking; layerwise scope removes
    `n_to_remove(fraction, remaining in layer)` from each layer. With `pattern`: `Blocks`
    counts tiles instead of weights; `NM` (scope nm) takes every group from its count to the
    next one of `patterns.nm_counts` (a mask already at N:M comes back unchanged).
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise SwampError(
            f"prune fraction must lie strictly between 0 and 1, got {fraction!r}; "
            f"e.g. 0.2 removes a fifth of the remaining weights"
        )
    fn = _get_scorer(scorer)
    if scope not in SCOPES:
        raise SwampError(f"unknown pruning scope {scope!r}; known scopes: {', '.join(SCOPES)}")
    _check_scope(scope, pattern)
    _check_weights(weights, mask)
    if isinstance(pattern, Blocks):
        tiles = to_blocks(mask, pattern)
        return from_blocks(prune(block_norms(weights, mask, pattern), tiles, fraction, fn,
                                 scope, generator), mask, pattern)
    if isinstance(pattern, NM):
        k = nm_counts(pattern, fraction, 1, group_counts(mask, pattern))[1]
        return keep_groups([score(weights, mask, fn, generator)], mask, k, pattern)
    # |w| is recomputed per pass (no full copy of the weights); other scores are stored once.
    scores: Mapping[str, Tensor]
    if fn is magnitude:
        scores = _LazyScores(weights, mask, fn)
    else:
        scores = score(weights, mask, fn, generator)
    return keep_exactly(scores, mask, target_counts(mask, fraction, 1, scope)[1], scope)


def keep_exactly(scores: Mapping[str, Tensor], mask: Mask, counts: Mapping[str, int],
                 scope: str, keep: Callable[[Mapping[str, Tensor], Mask, int], Mask] = keep_top,
                 pattern: Pattern = None) -> Mask:
    """Keep exactly `counts` weights of `mask` by `scores`: globally (`counts['']`) or per
    layer (`counts[name]`), in the format of `target_counts`. `keep` ranks one group
    (default `keep_top`; mask combination ranks by votes first). With `Blocks`, `scores`
    and `counts` are of tiles (`score(..., pattern=)`, `target_counts(..., pattern=)`);
    with `NM`, `counts['']` weights are kept in every group."""
    _check_scope(scope, pattern)
    if isinstance(pattern, Blocks):
        return from_blocks(keep_exactly(scores, to_blocks(mask, pattern), counts, scope, keep),
                           mask, pattern)
    if isinstance(pattern, NM):
        return keep_groups([scores], mask, counts[""], pattern)
    if scope == "global":
        return keep(scores, mask, counts[""])
    return Mask({n: keep(scores, Mask({n: mask[n]}), counts[n])[n] for n in mask.names})


def counts_at_density(mask: Mask, density: float, scope: str) -> dict[str, int]:
    """Kept counts at `density` of `mask`'s tensors, in the format of `target_counts`
    (rounded half up like `n_to_remove`; at least one weight per group)."""
    if not 0.0 < density <= 1.0:
        raise SwampError(f"a density must lie in (0, 1], got {density!r}")
    if scope == "global":
        return {"": max(1, math.floor(density * mask.numel + 0.5))}
    return {n: max(1, math.floor(density * mask[n].numel() + 0.5)) for n in mask.names}


def target_counts(mask: Mask, fraction: float, levels: int, scope: str,
                  pattern: Pattern = None) -> list[dict[str, int]]:
    """Per-level kept counts per tensor of iterative pruning from `mask` (the exact recurrence
    of `prune`: remove `n_to_remove(fraction, remaining)` per level, globally or per layer).
    For the global scope only the total is defined; it is stored under the key ''.
    `Blocks`: the same, counting tiles; `NM`: the count of every group, under ''."""
    _check_scope(scope, pattern)
    if isinstance(pattern, Blocks):
        return target_counts(to_blocks(mask, pattern), fraction, levels, scope)
    if isinstance(pattern, NM):
        return [{"": k} for k in nm_counts(pattern, fraction, levels,
                                           group_counts(mask, pattern))]
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


def counts_like(mask: Mask, pattern: Pattern = None) -> dict[str, int]:
    """The kept counts of `mask` in the format of `target_counts` (both the global total ''
    and every layer's; `Blocks`: tiles; `NM`: the count of every group)."""
    if isinstance(pattern, NM):
        return {"": group_counts(mask, pattern)}
    if isinstance(pattern, Blocks):
        mask = to_blocks(mask, pattern)
    return {"": mask.nnz, **{n: int(mask[n].sum()) for n in mask.names}}


# ---------------------------------------------------------------------------------------
# structured patterns (issue 13; what they are: swamp.core.patterns)


def _check_scope(scope: str, pattern: Pattern) -> None:
    if (scope == "nm") != isinstance(pattern, NM):
        raise SwampError("scope 'nm' goes with pattern=NM(n, m) and NM(n, m) with scope 'nm' "
                         f"(got scope {scope!r}, pattern {pattern})")


def _tiles(t: Tensor, pattern: Blocks) -> Tensor:
    """(tile rows, tile cols, r * c): the tiles of `t`'s matrix view, one per row of the last
    dimension (the shape is checked by `patterns.check_pattern`)."""
    rows, cols = matrix_shape(t.shape)
    r, c = pattern.rows, pattern.cols
    if rows % r or cols % c:
        raise SwampError(f"a {rows}x{cols} matrix does not divide into {pattern} blocks; "
                         f"exclude the layer or choose another block")
    return (t.reshape(rows // r, r, cols // c, c).permute(0, 2, 1, 3)
            .reshape(rows // r, cols // c, r * c))


def to_blocks(mask: Mask, pattern: Blocks) -> Mask:
    """The tile mask: a tile is kept when all its weights are (so expanding it back never
    revives a weight)."""
    return Mask({n: _tiles(mask[n], pattern).all(-1) for n in mask.names})


def from_blocks(tiles: Mask, like: Mask, pattern: Blocks) -> Mask:
    """Expand a tile mask to weights of `like`'s shapes (and within `like`)."""
    out = {}
    for n in like.names:
        rows, cols = matrix_shape(like[n].shape)
        t = tiles[n].to(like[n].device)
        full = t[:, None, :, None].expand(t.shape[0], pattern.rows, t.shape[1], pattern.cols)
        out[n] = full.reshape(like[n].shape) & like[n]
    return Mask(out)


def block_norms(weights: Mapping[str, Tensor], mask: Mask, pattern: Blocks
                ) -> dict[str, Tensor]:
    """L2 norm of every tile of every tensor in `mask` (float32; the tile's "weight")."""
    _check_weights(weights, mask)
    with torch.no_grad():
        return {n: _tiles(weights[n].detach().float(), pattern).square().sum(-1).sqrt()
                for n in mask.names}


def _groups(t: Tensor, pattern: NM) -> Tensor:
    """(groups, M): consecutive M weights along each row of `t`'s matrix view."""
    rows, cols = matrix_shape(t.shape)
    if cols % pattern.m:
        raise SwampError(f"rows of {cols} weights do not divide into groups of {pattern.m}; "
                         f"exclude the layer or choose another M")
    return t.reshape(-1, pattern.m)


def group_counts(mask: Mask, pattern: NM) -> int:
    """The kept count of every group of `mask` (one number: an N:M-made mask keeps the same
    count in every group; another mask is refused)."""
    seen = set()
    for n in mask.names:
        seen.update(_groups(mask[n], pattern).sum(1).unique().tolist())
    if len(seen) != 1:
        raise SwampError(f"the mask keeps {sorted(seen)} weights in different groups of "
                         f"{pattern.m}; an {pattern} mask keeps the same count in every group "
                         f"(start from a dense mask)")
    return int(seen.pop())


def keep_groups(keys: list[Mapping[str, Tensor]], mask: Mask, k: int, pattern: NM) -> Mask:
    """Keep exactly `k` weights of `mask` in every group of M: ranked by `keys[0]`, then by
    `keys[1]`, ... (higher = keep), then by index (the lower index is dropped first, as in
    `keep_top`). Pruned weights rank below every kept one and are never revived."""
    m = pattern.m
    if not 0 <= k <= m:
        raise SwampError(f"cannot keep {k} weights in groups of {m}")
    out = {}
    with torch.no_grad():
        for n in mask.names:
            live = _groups(mask[n], pattern)
            if bool((live.sum(1) < k).any()):
                raise SwampError(f"cannot keep {k} of every {m} weights in {n!r}: some groups "
                                 f"keep fewer already")
            # Least significant key first, then stable sorts by more significant keys: the
            # final order is lexicographic (live, keys..., index), ascending.
            order = torch.arange(m, device=live.device).expand(live.shape[0], m)
            for key in [*reversed(keys), None]:
                vals = live.float() if key is None else _groups(_flat_f32(key[n]).to(
                    live.device), pattern)
                if key is not None and bool(torch.isnan(vals[live]).any()):
                    raise SwampError("pruning scores contain NaN (did training diverge?); "
                                     "check the weights")
                idx = torch.sort(vals.gather(1, order), dim=1, stable=True).indices
                order = order.gather(1, idx)
            keep = torch.ones_like(live)
            keep.scatter_(1, order[:, :m - k], False)
            out[n] = keep.view(mask[n].shape)
    return Mask(out)
