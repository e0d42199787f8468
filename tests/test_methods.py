"""The methods as settings of the one level loop: masks, starts, particles, soups."""

import json

import pytest
import torch

from swamp.config import Settings
from swamp.data import DataBundle, Split, load_dataset
from swamp.errors import SwampError
from swamp.loop import LevelLoop, run
from swamp.core.masks import Mask
from swamp.core.combine import combine_masks
from swamp.core.pruning import target_counts
from swamp.methods.soups import greedy_soup
from swamp.core.pruning import keep_top
from swamp.store import load_state
from conftest import RecordingEngine


def run_recorded(settings, **kw):
    loop = LevelLoop(settings, engine=RecordingEngine(), **kw)
    return loop, loop.run()


def counts(result, levels):
    return [result.mask(level).nnz for level in range(levels + 1)]


def metrics(result, level):
    return json.loads((result.run_dir / f"level_{level}" / "metrics.json").read_text())


# ---- mask combination: exact counts --------------------------------------------------------
def test_overlap_too_small_adds_back_the_largest_mean_magnitudes():
    mask = Mask({"w": torch.ones(6, dtype=torch.bool)})
    a = {"w": torch.tensor([9.0, 8.0, 7.0, 0.1, 0.2, 0.3])}
    b = {"w": torch.tensor([9.0, 0.1, 0.2, 8.0, 7.0, 0.3])}
    # each keeps 3 (fraction 0.5); the overlap is only {0}; two are added back by mean |w|:
    # means are [9, 4.05, 3.6, 4.05, 3.6, 0.3] -> indices 1 and 3 (ties: lower index first
    # removed among equals, so both 4.05 survive before the 3.6s)
    out, record = combine_masks([a, b], mask, 0.5, 1.0)
    assert out.nnz == 3
    assert out["w"].tolist() == [True, True, False, True, False, False]
    assert record["passed"] == 1 and record["added_back"] == 2


def test_vote_share_and_too_many_passers_are_pruned_by_mean_magnitude():
    mask = Mask({"w": torch.ones(6, dtype=torch.bool)})
    a = {"w": torch.tensor([5.0, 4.0, 3.0, 0.0, 0.0, 0.0])}
    b = {"w": torch.tensor([0.0, 0.0, 0.0, 5.0, 4.0, 3.0])}
    # union (share 1/2): all six pass, exactly 3 kept: the largest mean |w| (2.5, 2.5, 2, 2...)
    union, record = combine_masks([a, b], mask, 0.5, 0.5)
    assert union.nnz == 3 and record["removed_extra"] == 3
    assert union["w"].tolist() == [True, False, False, True, True, False]   # tie: lower index out
    # share 1 (intersection) passes nothing: the 3 best by mean |w| are added back
    inter, _ = combine_masks([a, b], mask, 0.5, 1.0)
    assert inter == union


def test_too_many_passers_drop_the_fewest_votes_first():
    # 3 particles keep 3 of 6 each; share 2/3 needs 2 votes. Weight 0 is kept by all three
    # but has the smallest mean |w| (1); weights 1, 2, 3 have 2 votes and means 6, 5, 4.
    mask = Mask({"w": torch.ones(6, dtype=torch.bool)})
    a = {"w": torch.tensor([1.0, 10.0, 9.0, 0.0, 0.0, 0.0])}
    b = {"w": torch.tensor([1.0, 8.0, 0.0, 7.0, 0.0, 0.0])}
    c = {"w": torch.tensor([1.0, 0.0, 6.0, 5.0, 0.0, 0.0])}
    out, record = combine_masks([a, b, c], mask, 0.5, 2 / 3)
    assert record["votes_needed"] == 2 and record["passed"] == 4
    assert record["removed_extra"] == 1
    # the unanimous weight survives; the 2-vote weight with the smallest mean |w| goes
    assert out["w"].tolist() == [True, True, True, False, False, False]


def test_top_up_adds_back_kept_weights_before_weights_no_particle_kept():
    # Intersection (COLT). Weight 3 is kept by no particle but has the largest mean |w| (6)
    # of the non-passers; weights 1, 2, 4, 5 were kept by one particle each (means 4, 3.5).
    mask = Mask({"w": torch.ones(6, dtype=torch.bool)})
    a = {"w": torch.tensor([9.0, 8.0, 7.0, 6.0, 0.0, 0.0])}
    b = {"w": torch.tensor([9.0, 0.0, 0.0, 6.0, 8.0, 7.0])}
    out, record = combine_masks([a, b], mask, 0.5, 1.0)
    assert record["passed"] == 1 and record["added_back"] == 2
    assert out["w"].tolist() == [True, True, False, False, True, False]
    # the same ranking per layer with the layerwise scope
    two = Mask({"x": torch.ones(6, dtype=torch.bool), "y": torch.ones(6, dtype=torch.bool)})
    lw, _ = combine_masks([{"x": a["w"], "y": b["w"]}, {"x": b["w"], "y": a["w"]}], two, 0.5,
                          1.0, scope="layerwise")
    assert lw["x"].tolist() == lw["y"].tolist() == [True, True, False, False, True, False]


def test_layerwise_combination_keeps_every_layers_count():
    torch.manual_seed(0)
    mask = Mask({"a": torch.ones(10, 10, dtype=torch.bool), "b": torch.ones(50, dtype=torch.bool)})
    states = [{"a": torch.randn(10, 10), "b": torch.randn(50) * 10} for _ in range(3)]
    out, _ = combine_masks(states, mask, 0.3, 1.0, scope="layerwise")
    assert int(out["a"].sum()) == 70 and int(out["b"].sum()) == 35


# ---- greedy soup ---------------------------------------------------------------------------
def test_greedy_soup_adds_a_particle_only_if_validation_accuracy_does_not_drop():
    particles = [{"w": torch.tensor([float(i)])} for i in range(4)]
    val = [0.5, 0.9, 0.7, 0.8]                    # order tried: 1, 3, 2, 0
    soup_acc = {(1, 3): 0.95, (1, 2, 3): 0.90, (0, 1, 3): 0.95}

    def make(indices):
        return {"w": torch.tensor([float(sum(indices))]), "ids": tuple(sorted(indices))}

    def score(state):
        return soup_acc[state["ids"]]

    state, chosen, acc = greedy_soup(particles, val, make, score)
    assert chosen == [1, 3, 0]                    # 2 lowered it; 0 kept it equal
    assert acc == 0.95 and state["ids"] == (0, 1, 3)


def test_greedy_soup_choices_ignore_the_test_split(tiny):
    data = load_dataset("synthetic", size=320, split_seed=0)
    other_test = Split(torch.randn_like(data.test.x), data.test.y.flip(0))
    changed = DataBundle(data.name, data.train, data.val, other_test, data.num_classes,
                         data.input_shape, data.augment)
    settings = tiny(method="sms", soup="greedy", particles=3, levels=2)
    a = run(settings, data=data, run_dir=settings.run.out + "/a")
    b = run(settings, data=changed, run_dir=settings.run.out + "/b")
    for level in range(3):
        ma, mb = metrics(a, level), metrics(b, level)
        assert ma["combined"]["solution"] == "greedy soup"
        assert ma["combined"]["soup"] == mb["combined"]["soup"]
        assert ma["val_acc"] == mb["val_acc"] and ma["density"] == mb["density"]
        assert ma["test_acc"] != mb["test_acc"] or ma["test_nll"] != mb["test_nll"]


# ---- the methods in the loop ---------------------------------------------------------------
def test_every_method_lands_on_the_exact_density_schedule(tiny):
    reference = counts(run(tiny(method="imp", particles=1)), 2)
    for method, extra in [("colt", {}), ("mask-vote", {"particles": 3}),
                          ("random", {"particles": 1}), ("oneshot", {"particles": 1}),
                          ("sms", {}), ("sms-paper", {}), ("swamp+", {})]:
        result = run(tiny(method=method, **extra))
        assert counts(result, 2) == reference, method
        masks = [result.mask(level) for level in range(3)]
        if method != "oneshot":      # iterative: nothing revived
            for earlier, later in zip(masks, masks[1:]):
                assert all(not torch.any(later[n] & ~earlier[n]) for n in earlier.names)


def test_colt_particles_train_on_disjoint_segments_and_a_ticket_on_all(tiny):
    loop, result = run_recorded(tiny(method="colt", particles=2, levels=1))
    jobs = loop.engine.tasks[0].jobs
    assert len(jobs) == 3 and jobs[2].subset is None
    a, b = (set(j.subset.tolist()) for j in jobs[:2])
    assert not a & b and a | b == set(range(len(loop.data.train)))
    m0 = metrics(result, 0)
    assert m0["combined"]["solution"] == "ticket particle"
    record = m0["combined"]["next_mask"]
    assert record["votes_needed"] == 2 and record["voters"] == 2
    assert record["passed"] + record["added_back"] - record["removed_extra"] == result.mask(1).nnz
    # the next mask is made from the segment particles' own masks, not from the solution
    parts = [load_state(loop.store.particle_path(0, i)) for i in range(2)]
    expected, _ = combine_masks(parts, result.mask(0), 0.2, 1.0)
    assert result.mask(1) == expected


@pytest.mark.parametrize("rewind_epochs", [0.0, 1.0])
def test_sms_starts_each_level_from_the_previous_solution(tiny, rewind_epochs):
    loop, result = run_recorded(tiny(method="sms", particles=2, levels=2,
                                     rewind_epochs=rewind_epochs))
    t0 = loop.schedule.rewind
    assert (t0 > 0) == (rewind_epochs > 0)
    for task in loop.engine.tasks[1:]:
        previous = result.solution(task.level - 1)
        for k, v in task.start_state.items():
            expected = previous[k] * task.mask[k] if k in task.mask.names else previous[k]
            assert torch.equal(v, expected)
        # the level's full schedule T0..T again, from the rewind point's schedule position
        assert task.start_step == t0
    assert loop.engine.tasks[0].start_step == t0


def test_sms_paper_prunes_one_dense_model_then_soups_from_it(tiny):
    loop, result = run_recorded(tiny(method="sms-paper", particles=2, levels=2,
                                     schedule="linear", warmup=0.25))
    assert [len(t.jobs) for t in loop.engine.tasks] == [1, 2, 2]
    assert [r["particles"] for r in result.levels] == [1, 2, 2]
    level1 = loop.engine.tasks[1]
    dense = result.solution(0)
    for k, v in level1.start_state.items():   # copies of the pruned dense model
        expected = dense[k] * level1.mask[k] if k in level1.mask.names else dense[k]
        assert torch.equal(v, expected)


def test_linear_schedule_with_warmup_by_hand():
    from swamp.config import TrainSettings
    from swamp.train import Schedule

    s = Schedule.build(TrainSettings(epochs=10, batch_size=10, lr=0.1, schedule="linear",
                                     warmup=0.2), 100, swa=False)
    assert s.total == 100 and s.warmup == 20
    # warm-up: (t + 1) / 20 of the rate the decay would give; then from 0.1 down to 0 at T
    assert s.lr_at(0) == pytest.approx(0.1 / 20)
    assert s.lr_at(9) == pytest.approx(0.1 * 10 / 20)
    assert s.lr_at(20) == pytest.approx(0.1)
    assert s.lr_at(60) == pytest.approx(0.1 * (1 - 40 / 80))
    assert s.lr_at(99) == pytest.approx(0.1 * (1 - 79 / 80))
    with_swa = Schedule.build(TrainSettings(epochs=10, batch_size=10, lr=0.1, schedule="linear",
                                            swa_start=0.5, swa_lr=0.02), 100, swa=True)
    assert with_swa.lr_at(25) == pytest.approx(0.1 + (0.02 - 0.1) * 25 / 50)
    assert with_swa.lr_at(50) == with_swa.lr_at(99) == 0.02
    cosine = Schedule.build(TrainSettings(epochs=10, batch_size=10, lr=0.1), 100, swa=False)
    warm = Schedule.build(TrainSettings(epochs=10, batch_size=10, lr=0.1, warmup=0.1), 100,
                          swa=False)
    assert [warm.lr_at(t) for t in range(10, 100)] == [cosine.lr_at(t) for t in range(10, 100)]
    assert warm.lr_at(4) == pytest.approx(cosine.lr_at(4) * 5 / 10)


def test_swamp_plus_uses_one_particle_before_its_level(tiny):
    loop, result = run_recorded(tiny(method="swamp+", particles=2, levels=2,
                                     swamp_plus_level=2))
    assert [len(t.jobs) for t in loop.engine.tasks] == [1, 1, 2]
    assert [r["particles"] for r in result.levels] == [1, 1, 2]


def test_random_masks_are_seeded_and_not_magnitude_masks(tiny, tmp_path):
    a = run(tiny(method="random", particles=1, levels=1))
    b = run(tiny(method="random", particles=1, levels=1), run_dir=tmp_path / "again")
    imp = run(tiny(method="imp", particles=1, levels=1))
    assert a.mask(1) == b.mask(1) and a.mask(1) != imp.mask(1)
    assert a.mask(1).nnz == imp.mask(1).nnz


def test_oneshot_prunes_the_dense_solution_straight_to_each_density(tiny):
    result = run(tiny(method="oneshot", particles=1))
    dense = result.solution(0)
    ones = result.mask(0)
    for level in (1, 2):
        n = result.mask(level).nnz
        expected = keep_top({k: dense[k].abs() for k in ones.names}, ones, n)
        assert result.mask(level) == expected
    one = run(tiny(method="oneshot", particles=1, target_sparsity=0.9))
    assert [r["level"] for r in one.levels] == [0, 1]
    assert one.levels[1]["density"] == pytest.approx(0.1, abs=1e-4)
    assert one.levels[1]["target_density"] == pytest.approx(0.1)


def test_oneshot_target_sparsity_honours_the_layerwise_scope(tiny):
    from swamp.methods import get_method

    torch.manual_seed(0)
    # a layer of large weights: global pruning would keep far more of it than of "b"
    dense = {"a": torch.randn(20, 10) * 10, "b": torch.randn(40), "bias": torch.randn(3)}
    mask = Mask({"a": torch.ones(20, 10, dtype=torch.bool), "b": torch.ones(40, dtype=torch.bool)})
    for scope in ("layerwise", "global"):
        s = tiny(method="oneshot", particles=1, target_sparsity=0.9, scope=scope)
        out, record = get_method("oneshot").plan(s, n_train=100).next_mask(
            0, dense, None, mask, lambda: dense)
        assert record is None
        if scope == "layerwise":        # each layer keeps n - floor(0.9 n + 0.5)
            assert (int(out["a"].sum()), int(out["b"].sum())) == (20, 4)
            assert out == Mask({n: keep_top({n: dense[n].abs()}, Mask({n: mask[n]}), k)[n]
                                for n, k in (("a", 20), ("b", 4))})
        else:
            assert out.nnz == 24 and int(out["b"].sum()) < 4


def test_target_counts_follow_the_pruning_recurrence():
    mask = Mask({"a": torch.ones(10, dtype=torch.bool), "b": torch.ones(7, dtype=torch.bool)})
    assert [c[""] for c in target_counts(mask, 0.2, 3, "global")] == [17, 14, 11, 9]
    assert target_counts(mask, 0.5, 1, "layerwise") == [{"a": 10, "b": 7}, {"a": 5, "b": 3}]


@pytest.mark.parametrize("values,fragment", [
    ({"method": "imp", "soup": "greedy"}, "`soup` greedy"),
    ({"method": "colt", "soup": "greedy"}, "`soup` greedy"),
    ({"method": "swamp", "soup": "best"}, "unknown soup"),
    ({"method": "swamp", "vote_share": 0.7}, "`vote_share` applies"),
    ({"method": "mask-vote", "vote_share": 0.0}, "`vote_share` must"),
    ({"method": "colt", "particles": 1}, "`particles` 2 or more"),
    ({"method": "swamp", "swamp_plus_level": 2}, "`swamp_plus_level` applies"),
    ({"method": "swamp+", "swamp_plus_level": 20, "levels": 3}, "between 0 and"),
    ({"method": "imp", "target_sparsity": 0.9}, "`target_sparsity` applies"),
    ({"method": "oneshot", "target_sparsity": 1.0}, "`target_sparsity` must"),
    ({"method": "random", "scorer": "lamp"}, "random masks"),
    ({"method": "random", "particles": 2}, "one particle"),
    ({"method": "sms", "soup": "greedy", "val_fraction": 0.0}, "`val_fraction` 0 leaves none"),
    ({"warmup": 1.0}, "`warmup` must be in"),
    ({"method": "swamp", "warmup": 0.8}, "lasts into SWA"),
    ({"schedule": "exponential"}, "use cosine, step, linear or constant"),
])
def test_method_settings_that_do_not_apply_are_refused(values, fragment):
    with pytest.raises(SwampError, match=fragment):
        Settings.from_dict(values).resolved()


def test_new_settings_keep_the_existing_run_names():
    base = Settings()
    assert Settings.from_dict({"soup": "uniform", "vote_share": 0.5}).run_hash() == base.run_hash()
    assert Settings.from_dict({"soup": "greedy"}).run_hash() != base.run_hash()
