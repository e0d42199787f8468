"""Structured sparsity (issue 13): N:M groups and blocks, exactly counted in every method."""

import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from conftest import RecordingEngine, tiny_settings
from swamp.app.cli import main
from swamp.config import Settings
from swamp.core.combine import combine_masks
from swamp.core.masks import Mask
from swamp.core.patterns import NM, Blocks, check_pattern, nm_counts, nm_levels, pattern_of
from swamp.core.pruning import (counts_like, keep_groups, prune, target_counts, to_blocks)
from swamp.errors import SwampError
from swamp.loop import LevelLoop
from swamp.methods import get_method
from swamp.posthoc import lottery_pools
from swamp.store import RunStore, load_state


def groups(t, m):
    return t.reshape(t.shape[0], -1).reshape(-1, m)


def per_group(mask, m):
    """The set of kept counts over all groups of all layers."""
    return {int(c) for n in mask.names for c in groups(mask[n], m).sum(1)}


def tiles_are_whole(mask, b):
    """Every tile of every layer is all kept or all pruned."""
    for n in mask.names:
        rows = mask[n].reshape(mask[n].shape[0], -1)
        r, c = rows.shape
        t = rows.reshape(r // b.rows, b.rows, c // b.cols, b.cols).sum((1, 3))
        if not bool(((t == 0) | (t == b.rows * b.cols)).all()):
            return False
    return True


def ones_like(weights):
    return Mask({n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})


# ---- the pattern maker: properties ------------------------------------------------------
@st.composite
def nm_case(draw):
    m = draw(st.integers(2, 8))
    n = draw(st.integers(1, m - 1))
    rows = draw(st.integers(1, 4))
    cols = m * draw(st.integers(1, 4))
    # few distinct values: many ties
    vals = draw(st.lists(st.integers(0, 3), min_size=rows * cols, max_size=rows * cols))
    k = draw(st.integers(0, m))
    return NM(n, m), torch.tensor(vals, dtype=torch.float32).view(rows, cols), k


@hsettings(max_examples=150, deadline=None)
@given(nm_case())
def test_keep_groups_keeps_exactly_k_of_the_best_in_every_group(case):
    pattern, scores, k = case
    mask = Mask({"w": torch.ones(scores.shape, dtype=torch.bool)})
    out = keep_groups([{"w": scores}], mask, k, pattern)
    g, s = groups(out["w"], pattern.m), groups(scores, pattern.m)
    assert (g.sum(1) == k).all()
    for kept, score in zip(g, s):
        if 0 < k < pattern.m:
            # every kept score >= every dropped one; among equal scores the lower index goes
            assert score[kept].min() >= score[~kept].max()
            tie = score[kept].min()
            dropped_ties = (~kept & (score == tie)).nonzero().flatten()
            kept_ties = (kept & (score == tie)).nonzero().flatten()
            if dropped_ties.numel() and kept_ties.numel():
                assert dropped_ties.max() < kept_ties.min()
    assert keep_groups([{"w": scores}], mask, k, pattern) == out      # deterministic


@hsettings(max_examples=60, deadline=None)
@given(nm_case(), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_nm_prune_walks_every_group_down_the_schedule_to_n(case, fraction, seed):
    pattern, _, _ = case
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(3, 2 * pattern.m, generator=g),
         "b": torch.randn(2, 1, pattern.m, generator=g)}
    mask = ones_like(w)
    schedule = nm_counts(pattern, fraction, nm_levels(pattern, fraction))
    assert schedule[-1] == pattern.n and schedule[0] == pattern.m
    assert all(a > b for a, b in zip(schedule, schedule[1:]))     # every level prunes
    for k in schedule[1:]:
        nxt = prune(w, mask, fraction, scope="nm", pattern=pattern)
        assert per_group(nxt, pattern.m) == {k}
        assert all(not (nxt[n] & ~mask[n]).any() for n in w)        # never revived
        mask = nxt
    assert prune(w, mask, fraction, scope="nm", pattern=pattern) == mask   # N:M is final


@hsettings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from(["magnitude", "lamp", "random"]), st.sampled_from(["global", "layerwise"]),
       st.integers(0, 2**31 - 1))
def test_block_prune_removes_whole_tiles_in_exact_counts(br, bc, tr, tc, scorer, scope, seed):
    b = Blocks(br, bc)
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(br * tr, bc * tc, generator=g),
         "c": torch.randn(br * 2, 1, bc * tc, generator=g)}
    mask = ones_like(w)
    for _ in range(2):
        want = target_counts(mask, 0.3, 1, scope, b)[1]
        nxt = prune(w, mask, 0.3, scorer=scorer, scope=scope, generator=g, pattern=b)
        assert tiles_are_whole(nxt, b)
        tiles = to_blocks(nxt, b)
        if scope == "global":
            assert tiles.nnz == want[""]
        else:
            assert {n: int(tiles[n].sum()) for n in w} == want
        assert all(not (nxt[n] & ~mask[n]).any() for n in w)
        mask = nxt


def test_blocks_rank_by_tile_norm_and_ties_drop_the_lower_index():
    w = {"w": torch.tensor([[3.0, 0.0, 1.0, 1.0, 2.0, 2.0],
                            [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]])}
    # 2x2 tiles, norms 3, 2, 2 (a tie between tiles 1 and 2): removing one drops tile 1
    out = prune(w, ones_like(w), 0.34, pattern=Blocks(2, 2))
    assert out["w"].tolist() == [[True, True, False, False, True, True]] * 2
    # a large weight decides a tile's norm, however small its neighbours
    spiky = {"w": torch.tensor([[5.0, 1.0, 1.0, 1.0]] * 2)}
    kept = prune(spiky, ones_like(spiky), 0.5, pattern=Blocks(2, 2))
    assert kept["w"].tolist() == [[True, True, False, False]] * 2


def test_equal_scores_are_broken_the_same_way_every_time():
    w = {"w": torch.ones(4, 8)}
    a = prune(w, ones_like(w), 0.5, scope="nm", pattern=NM(2, 4))
    assert a["w"][0].tolist() == [False, False, True, True] * 2      # lower index out first
    assert prune(w, ones_like(w), 0.5, scope="nm", pattern=NM(2, 4)) == a
    b = prune(w, ones_like(w), 0.5, pattern=Blocks(2, 4))       # 4 equal tiles, 2 removed
    assert to_blocks(b, Blocks(2, 4))["w"].flatten().tolist() == [False, False, True, True]
    assert b["w"].tolist() == [[False] * 8] * 2 + [[True] * 8] * 2


def test_combinations_keep_the_pattern_and_the_exact_count():
    g = torch.Generator().manual_seed(1)
    states = [{"a": torch.randn(4, 8, generator=g), "b": torch.randn(4, 4, generator=g)}
              for _ in range(3)]
    mask = ones_like(states[0])
    for share in (1.0, 0.5, 1 / 3):
        out, record = combine_masks(states, mask, 0.5, share, scope="nm", pattern=NM(2, 4))
        assert per_group(out, 4) == {2} and record["target"] == out.nnz
        tiles, rec = combine_masks(states, mask, 0.5, share, pattern=Blocks(2, 2))
        assert tiles_are_whole(tiles, Blocks(2, 2))
        assert to_blocks(tiles, Blocks(2, 2)).nnz == rec["target"] == 6   # 12 tiles -> 6


def test_a_mask_that_is_not_nm_shaped_is_refused():
    mask = Mask({"w": torch.tensor([[True, True, True, True, True, False, False, True]])})
    with pytest.raises(SwampError, match="same count in every group"):
        prune({"w": torch.ones(1, 8)}, mask, 0.5, scope="nm", pattern=NM(2, 4))
    with pytest.raises(SwampError, match="scope 'nm' goes with"):
        prune({"w": torch.ones(1, 8)}, mask, 0.5, scope="global", pattern=NM(2, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nm_masks_are_accepted_by_semi_structured_sparse_kernels():
    from torch.sparse import to_sparse_semi_structured

    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        pytest.skip("2:4 kernels need compute capability 8.0 or more")
    w = {"w": torch.randn(128, 128)}
    mask = prune(w, ones_like(w), 0.5, scope="nm", pattern=NM(2, 4))
    dense = (w["w"] * mask["w"]).half().cuda()
    x = torch.randn(128, 64, dtype=torch.half, device="cuda")
    sparse = to_sparse_semi_structured(dense)
    torch.testing.assert_close(torch.mm(sparse, x), torch.mm(dense, x), rtol=1e-2, atol=1e-2)


# ---- every method, through the level loop -----------------------------------------------
METHODS = ["imp", "swamp", "sms", "colt", "mask-vote", "random", "oneshot"]


def tiny_run(tmp_path, method, **kw):
    single = method in ("imp", "random", "oneshot")
    s = tiny_settings(tmp_path, method=method, particles=1 if single else 2, epochs=1,
                      data_size=160, **kw)
    loop = LevelLoop(s, engine=RecordingEngine())
    return loop, loop.run()


def check_levels(result, levels, counted, want, mask_ok):
    """Per level: `counted(mask)` is `want[level]`, masks only shrink, and the solution and
    every saved particle are exactly zero where the mask prunes."""
    store = RunStore(result.run_dir)
    previous = None
    for level in range(levels + 1):
        mask = result.mask(level)
        assert mask_ok(mask) and counted(mask) == want[level], level
        if previous is not None:
            assert all(not (mask[n] & ~previous[n]).any() for n in mask.names)
        states = [result.solution(level)]
        states += [load_state(p) for p in sorted(store.level_dir(level).glob("particle_*"))]
        assert len(states) >= 2                       # the particles were saved and checked
        for state in states:
            for n in mask.names:
                assert not state[n][~mask[n]].any(), (level, n)
        previous = mask


@pytest.mark.parametrize("method", METHODS)
def test_nm_runs_keep_exactly_n_of_every_m_in_every_method(tmp_path, method):
    pattern = NM(2, 4)
    levels = nm_levels(pattern, 0.2)
    loop, result = tiny_run(tmp_path, method, scope="nm", nm="2:4", levels=levels)
    want = [{k} for k in nm_counts(pattern, 0.2, levels)]
    check_levels(result, levels, lambda m: per_group(m, 4), want, lambda m: True)
    assert want[-1] == {2}
    assert [row["target_density"] for row in result.levels] == [1.0, 0.75, 0.5]
    assert [row["density"] for row in result.levels] == [1.0, 0.75, 0.5]


@pytest.mark.parametrize("method", METHODS)
def test_block_runs_count_whole_tiles_exactly_in_every_method(tmp_path, method):
    b = Blocks(2, 4)
    loop, result = tiny_run(tmp_path, method, block="2x4", levels=2, prune_fraction=0.3)
    ones = Mask.ones(loop.model, loop.prunable)
    want = [c[""] for c in target_counts(ones, 0.3, 2, "global", b)]
    if method == "oneshot":     # from dense to each level's count: the same numbers
        want = [target_counts(ones, 0.3, lv, "global", b)[lv][""] for lv in range(3)]
    check_levels(result, 2, lambda m: to_blocks(m, b).nnz, want,
                 lambda m: tiles_are_whole(m, b))


def test_layerwise_blocks_count_tiles_per_layer(tmp_path):
    b = Blocks(2, 4)
    loop, result = tiny_run(tmp_path, "imp", block="2x4", scope="layerwise", levels=1,
                            prune_fraction=0.5)
    ones = Mask.ones(loop.model, loop.prunable)
    want = target_counts(ones, 0.5, 1, "layerwise", b)[1]
    tiles = to_blocks(result.mask(1), b)
    assert {n: int(tiles[n].sum()) for n in tiles.names} == want


@pytest.mark.parametrize("flags", [dict(scope="nm", nm="2:4"), dict(block="2x4")])
def test_lottery_pools_re_prune_to_the_pattern(tmp_path, flags):
    s = tiny_settings(tmp_path, method="imp", particles=1, epochs=1, data_size=160,
                      levels=2, **flags)
    source = LevelLoop(s).run().run_dir
    out = lottery_pools(source, tmp_path / "pools", grid=[0.5], window=1)
    pattern = pattern_of(s.prune)
    for level in range(3):
        mask = Mask.load(RunStore(out).mask_path(level))
        like = Mask.load(RunStore(source).mask_path(level))
        assert counts_like(mask, pattern) == counts_like(like, pattern)
        if isinstance(pattern, Blocks):
            assert tiles_are_whole(mask, pattern)


# ---- refusals: one line, before anything is written -------------------------------------
REFUSED = [
    (dict(scope="nm"), "`scope` nm needs the pattern"),
    (dict(nm="2:4"), "applies with `scope` nm"),
    (dict(scope="nm", nm="4:2", levels=2), "`nm` must be N:M"),
    (dict(scope="nm", nm="two:four"), "`nm` must be N:M"),
    (dict(scope="nm", nm="2:4", levels=5), "reaches 2:4 at level 2; use `levels` 2"),
    (dict(scope="nm", nm="2:4", levels=2, scorer="lamp"), "equals magnitude"),
    (dict(scope="nm", nm="2:4", levels=2, method="oneshot", particles=1,
          target_sparsity=0.5), "`target_sparsity` does not apply"),
    (dict(block="4"), "`block` must be RxC"),
    (dict(block="0x4"), "`block` must be RxC"),
    (dict(block="1x1"), "unstructured"),
    (dict(block="2x2", scope="nm", nm="2:4"), "two patterns"),
]


@pytest.mark.parametrize("values,message", REFUSED)
def test_unsupported_combinations_are_refused_in_one_line(tmp_path, values, message):
    with pytest.raises(SwampError, match=message) as err:
        tiny_settings(tmp_path, **values).resolved()
    assert "\n" not in str(err.value)


def test_the_command_line_refuses_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["run", "--dataset", "synthetic", "--model", "mlp", "--scope", "nm",
                 "--nm", "2:4", "--levels", "3", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "--levels 2" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("values,layer", [
    (dict(model="conv1d", scope="nm", nm="2:4", levels=2), "features.0.weight"),   # rows of 5
    (dict(block="4x4"), "5.weight"),                                               # 10 outputs
])
def test_a_layer_the_pattern_does_not_fit_is_named_and_nothing_is_written(tmp_path, values,
                                                                          layer):
    s = tiny_settings(tmp_path, **values)
    with pytest.raises(SwampError, match=f"'{layer}'.*`exclude` {layer}") as err:
        LevelLoop(s)
    assert "\n" not in str(err.value) and not (tmp_path / "runs").exists()
    # excluded, it runs (the excluded layer stays dense)
    s = tiny_settings(tmp_path, epochs=1, data_size=160, exclude=[layer], **values)
    loop = LevelLoop(s, engine=RecordingEngine())
    assert layer not in loop.prunable
    check_pattern(pattern_of(s.prune), {n: loop.model.get_parameter(n).shape
                                        for n in loop.prunable})


def test_nm_schedule_and_target_density():
    assert nm_counts(NM(2, 4), 0.2, 2) == [4, 3, 2]
    assert nm_counts(NM(2, 8), 0.2, 5) == [8, 6, 5, 4, 3, 2]
    assert nm_counts(NM(1, 4), 0.05, 3) == [4, 3, 2, 1]      # at least one per level
    assert nm_levels(NM(2, 4), 0.5) == 1
    s = Settings.from_dict(dict(scope="nm", nm="1:4", levels=3)).resolved()
    plan = get_method("swamp").plan(s, 100)
    assert [plan.target_density(lv) for lv in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_an_unquoted_yaml_nm_is_explained(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("scope: nm\nnm: 2:4\nlevels: 2\n")
    with pytest.raises(SwampError, match="quote it"):
        Settings.from_file(path)
    path.write_text("scope: nm\nnm: '2:4'\nlevels: 2\n")
    assert pattern_of(Settings.from_file(path).resolved().prune) == NM(2, 4)
