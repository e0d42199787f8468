"""Pruning: exact counts, no revival, deterministic ties, LAMP, random, fast path == simple path."""

from __future__ import annotations

import math

import pytest
import torch

from swamp.core import pruning
from swamp.errors import SwampError
from swamp.core.masks import Mask
from swamp.core.pruning import keep_top, lamp, n_to_remove, prune, prune_to_count, score

@pytest.fixture(autouse=True, params=["radix", "sort"])
def path(request, monkeypatch) -> str:
    """Run every test with the radix path forced on and off (it agrees with the sort path)."""
    monkeypatch.setattr(pruning, "_RADIX_MIN", 0 if request.param == "radix" else 1 << 62)
    return request.param


SHAPES = {"a.weight": (64, 32, 3, 3), "b.weight": (128, 64), "c.weight": (10, 7)}  # 26 694


def weights(seed: int = 0, shapes: dict = SHAPES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


def ones(ws: dict[str, torch.Tensor]) -> Mask:
    return Mask({n: torch.ones_like(w, dtype=torch.bool) for n, w in ws.items()})


def is_subset(new: Mask, old: Mask) -> bool:
    return all(not (new[n] & ~old[n]).any() for n in old.names)


def test_rounding_is_half_up() -> None:
    # Python's round(2.5) == 2 (banker's); we round half up.
    assert [n_to_remove(0.25, 10), n_to_remove(0.5, 5), n_to_remove(0.5, 1)] == [3, 3, 1]
    assert [n_to_remove(0.25, 6), n_to_remove(0.2, 2), n_to_remove(0.2, 3)] == [2, 0, 1]
    ws = {"w": torch.arange(1.0, 11.0)}
    assert prune(ws, ones(ws), 0.25).nnz == 7  # 2.5 -> 3 removed: the three smallest
    assert prune(ws, ones(ws), 0.25)["w"].tolist() == [False] * 3 + [True] * 7


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.25, 0.5, 0.8])
@pytest.mark.parametrize("scorer", ["magnitude", "lamp"])
def test_global_removes_exact_count_per_level(alpha: float, scorer: str) -> None:
    ws = weights()
    mask = ones(ws)
    numel = mask.numel
    for level in range(1, 6):
        new = prune(ws, mask, alpha, scorer=scorer)
        assert mask.nnz - new.nnz == math.floor(alpha * mask.nnz + 0.5)
        assert is_subset(new, mask)  # never revives
        # density follows (1-α)^ℓ up to rounding (at most 1/2 per level)
        assert abs(new.nnz - numel * (1 - alpha) ** level) <= 0.5 * level
        mask = new


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.25, 0.5])
def test_layerwise_removes_exact_count_per_layer(alpha: float) -> None:
    ws = weights(1)
    mask = ones(ws)
    for level in range(1, 5):
        new = prune(ws, mask, alpha, scope="layerwise")
        for n in mask.names:
            before, after = int(mask[n].sum()), int(new[n].sum())
            assert before - after == math.floor(alpha * before + 0.5)
            assert abs(after - mask[n].numel() * (1 - alpha) ** level) <= 0.5 * level
            # inside a layer, everything removed is no larger than anything kept
            a = ws[n].abs()
            removed = mask[n] & ~new[n]
            assert a[removed].max() <= a[new[n]].min()
        assert is_subset(new, mask)
        mask = new


def test_never_revives_even_if_pruned_weights_are_large() -> None:
    ws = {"w": torch.tensor([100.0, 1.0, 2.0, 3.0, 50.0])}
    mask = Mask({"w": torch.tensor([False, True, True, True, False])})
    new = prune(ws, mask, 0.34)  # 1.02 -> 1 removed, among the remaining only
    assert new["w"].tolist() == [False, False, True, True, False]


def test_global_ranks_across_layers() -> None:
    ws = {"x": torch.tensor([5.0, 0.1, 6.0]), "y": torch.tensor([0.2, 7.0, 0.3, 8.0])}
    new = prune(ws, ones(ws), 0.5)  # 3.5 -> 4 removed: 0.1, 0.2, 0.3, then 5.0
    assert new["x"].tolist() == [False, False, True]
    assert new["y"].tolist() == [False, True, False, True]


def test_ties_broken_by_global_index() -> None:
    ws = {"x": torch.ones(4), "y": torch.tensor([1.0, 1.0, 0.5, 1.0])}
    # remove 3: first the unique smallest (y[2]), then the two lowest-index ties (x[0], x[1])
    new = prune_to_count(score(ws, ones(ws)), ones(ws), 3)
    assert new["x"].tolist() == [False, False, True, True]
    assert new["y"].tolist() == [True, True, False, True]
    # negative weights tie with positive ones under magnitude
    ws = {"x": torch.tensor([-2.0, 2.0, -2.0, 1.0])}
    assert prune(ws, ones(ws), 0.5)["x"].tolist() == [False, True, True, False]
    # layerwise: ties inside each layer, lowest index first
    ws = {"x": torch.ones(4), "y": torch.full((6,), 3.0)}
    new = prune(ws, ones(ws), 0.5, scope="layerwise")
    assert new["x"].tolist() == [False, False, True, True]
    assert new["y"].tolist() == [False] * 3 + [True] * 3


def test_ties_on_the_fast_path() -> None:
    # 200 000 weights taking 3 values: far above the radix threshold, many exact ties.
    g = torch.Generator().manual_seed(0)
    ws = {
        "x": torch.randint(0, 3, (120_000,), generator=g).float(),
        "y": torch.randint(0, 3, (80_000,), generator=g).float(),
    }
    mask = ones(ws)
    k = int((ws["x"] == 0).sum() + (ws["y"] == 0).sum()) + 1000  # all zeros and 1000 ones
    new = prune_to_count(score(ws, mask), mask, k)
    x_ones = (ws["x"] == 1).nonzero().squeeze(1)
    expect_x = ws["x"] != 0
    expect_x[x_ones[:1000]] = False  # the first 1000 ones in index order, all in x
    assert torch.equal(new["x"], expect_x)
    assert torch.equal(new["y"], ws["y"] != 0)


def _random_case(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], int, int]:
    g = torch.Generator().manual_seed(seed)
    sizes = [70_000, 3, 20_000, 1]
    scores = []
    for i, s in enumerate(sizes):
        x = torch.rand(s, generator=g)
        if i % 2 == 0:
            x = (x * 50).floor() / 7  # few distinct values: many ties
        scores.append(x)
    scores[2][:5000] = scores[0][:5000]  # ties across layers
    masks = [torch.rand(s, generator=g) < 0.7 for s in sizes]
    remaining = int(sum(m.sum() for m in masks))
    k = int(torch.randint(1, remaining, (1,), generator=g))
    return scores, masks, k, remaining


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_equals_simple_path(seed: int) -> None:
    scores, masks, k, remaining = _random_case(seed)
    fast = pruning._remove_lowest_radix(lambda i: scores[i], masks, k)
    assert fast is not None  # the radix path really ran
    slow = pruning._remove_lowest_sort(lambda i: scores[i], masks, k)
    for f, s, m in zip(fast, slow, masks):
        assert torch.equal(f, s)
        assert not (f & ~m).any()
    assert sum(int(m.sum()) - int(f.sum()) for f, m in zip(fast, masks)) == k


def test_fast_path_equals_simple_path_on_real_shapes() -> None:
    ws = weights(3)
    ws["a.weight"][0] = 0.0  # exact zeros: ties at the bottom
    mask = prune(ws, ones(ws), 0.3, scorer="random", generator=torch.Generator().manual_seed(1))
    names = mask.names
    for k in [1, 2_000, mask.nnz // 2, mask.nnz - 1]:
        args = (lambda i: ws[names[i]].abs(), [mask[n].flatten() for n in names], k)
        fast, slow = pruning._remove_lowest_radix(*args), pruning._remove_lowest_sort(*args)
        assert fast is not None and all(map(torch.equal, fast, slow))


def test_negative_scores_fall_back_to_sort_and_agree() -> None:
    g = torch.Generator().manual_seed(0)
    s = {"x": torch.randn(80_000, generator=g), "y": torch.tensor([-0.0, 0.0, -0.0, 1.0])}
    s["x"][:10] = 0.0
    mask = ones(s)
    scores = [s["x"], s["y"]]
    assert pruning._remove_lowest_radix(lambda i: scores[i], [mask["x"], mask["y"]], 5) is None
    n_neg = int((s["x"] < 0).sum())
    new = prune_to_count(s, mask, n_neg + 12)  # all negatives, then the 12 zeros (-0.0 == 0.0)
    assert torch.equal(new["x"], s["x"] > 0)
    assert new["y"].tolist() == [False, False, True, True]


def test_nan_scores_raise() -> None:
    s = {"x": torch.tensor([1.0, float("nan"), 2.0])}
    with pytest.raises(SwampError, match="NaN"):
        prune_to_count(s, ones(s), 1)
    big = {"x": torch.rand(100_000)}
    big["x"][7] = float("nan")
    with pytest.raises(SwampError, match="NaN"):
        prune(big, ones(big), 0.2)


def test_lamp_scores_hand_computed() -> None:
    # [1, 2, 3]: squares [1, 4, 9], suffix sums [14, 13, 9] -> [1/14, 4/13, 9/9]
    s = lamp(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3, dtype=torch.bool))
    assert torch.allclose(s, torch.tensor([1 / 14, 4 / 13, 1.0]))
    # signs do not matter and pruned weights do not enter the sums (pruned score 0):
    # remaining [3, -1, 2] -> sorted squares [1, 4, 9] -> -1: 1/14, 2: 4/13, 3: 9/9
    w = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    s = lamp(w, torch.tensor([[True, True], [False, True]]))
    assert torch.allclose(s, torch.tensor([[1.0, 1 / 14], [0.0, 4 / 13]]))


def test_lamp_keeps_a_weight_in_every_layer() -> None:
    ws = {"small": torch.tensor([0.1, 0.2, 0.3]), "big": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])}
    # magnitude: removing 4 of 8 empties the small layer
    assert prune(ws, ones(ws), 0.5)["small"].sum() == 0
    # LAMP scores: small [.01/.14, .04/.13, 1] = [.071, .308, 1];
    # big [1/55, 4/54, 9/50, 16/41, 1] = [.018, .074, .18, .39, 1]
    # -> the 4 lowest: big[0], small[0], big[1], big[2]
    new = prune(ws, ones(ws), 0.5, scorer="lamp")
    assert new["small"].tolist() == [False, True, True]
    assert new["big"].tolist() == [False, False, False, True, True]


def test_random_scorer_reproducible_by_seed() -> None:
    ws = weights()

    def run(seed: int) -> Mask:
        g = torch.Generator().manual_seed(seed)
        return prune(ws, ones(ws), 0.5, scorer="random", generator=g)

    assert run(0) == run(0)
    assert run(0) != run(1)
    assert run(0).nnz == run(1).nnz == ones(ws).nnz - n_to_remove(0.5, ones(ws).nnz)
    with pytest.raises(SwampError, match="generator"):
        prune(ws, ones(ws), 0.5, scorer="random")


def test_keep_top_and_prune_to_count() -> None:
    s = {"x": torch.tensor([3.0, 1.0, 2.0, 2.0]), "y": torch.tensor([0.0, 5.0])}
    mask = Mask({"x": torch.tensor([True, True, True, True]), "y": torch.tensor([False, True])})
    kept = keep_top(s, mask, 3)  # among the 5 remaining: 5, 3, and the later 2 (tie -> index)
    assert kept["x"].tolist() == [True, False, False, True]
    assert kept["y"].tolist() == [False, True]
    assert prune_to_count(s, mask, 0) == mask
    assert prune_to_count(s, mask, 5).nnz == 0
    with pytest.raises(SwampError, match="between 0 and 5"):
        prune_to_count(s, mask, 6)
    with pytest.raises(SwampError, match="between 0 and 5"):
        keep_top(s, mask, -1)


def test_inputs_are_not_modified_and_extra_entries_ignored() -> None:
    ws = weights()
    sd = {**{n: w.clone() for n, w in ws.items()}, "a.bias": torch.zeros(64)}
    mask = ones(ws)
    new = prune(sd, mask, 0.2)
    assert mask == ones(ws) and all(torch.equal(sd[n], ws[n]) for n in ws)
    assert new.names == mask.names


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), 0.0, 1.0])
def test_bad_fraction_raises(fraction: float) -> None:
    ws = weights()
    with pytest.raises(SwampError, match="between 0 and 1"):
        prune(ws, ones(ws), fraction)


def test_unknown_scorer_scope_and_missing_weights_raise() -> None:
    ws = weights()
    with pytest.raises(SwampError, match="known scorers: lamp, magnitude, random"):
        prune(ws, ones(ws), 0.2, scorer="snip")
    with pytest.raises(SwampError, match="known scopes: global, layerwise"):
        prune(ws, ones(ws), 0.2, scope="per-layer")
    with pytest.raises(SwampError, match="lack"):
        prune({"a.weight": ws["a.weight"]}, ones(ws), 0.2)
