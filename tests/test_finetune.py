"""Issue 12, training side: gradual pruning (a callback of the one step loop), SquareHead and
KD distillation (objectives), and ticket transfer (`mask_from`)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from swamp.config import Settings
from swamp.core.masks import Mask
from swamp.data import Split
from swamp.errors import SwampError
from swamp.loop import LevelLoop, run
from swamp.train import (CrossEntropy, SingleReplica, StackedReplicas, TrainPlan, fit,
                         train_steps)
from swamp.train.callbacks import Callback
from swamp.train.checkpoint import CheckpointFile
from swamp.train.gradual import GradualPrune, GradualStep
from swamp.train.objective import Distill
from swamp.train.schedule import Schedule
from swamp.config import TrainSettings


# ---- gradual pruning --------------------------------------------------------------------
def formula(ramp, t, t0, n_dt, s_i, s_f):
    """The ramps as written in docs/finetune.md (Zhu & Gupta's cubic with exponent 3)."""
    if ramp == "cubic":
        return s_f + (s_i - s_f) * (1 - (t - t0) / n_dt) ** 3
    if ramp == "linear":
        return s_f + (s_i - s_f) * (1 - (t - t0) / n_dt)
    return s_f + (s_i - s_f) * 0.5 * (1 + math.cos(math.pi * (t - t0) / n_dt))


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 16),
                         nn.ReLU(), nn.Linear(16, 5))


def data(n=96, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 32, generator=g)
    return Split(x, torch.randint(0, classes, (n,), generator=g))


SETTINGS = TrainSettings(epochs=4, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-3)


def schedule(n=96):
    return Schedule.build(SETTINGS, n, swa=False)          # 6 steps per epoch, 24 in all


class Checker(Callback):
    """After every step: pruned weights and their momentum are exactly zero."""

    def __init__(self, gradual_of):
        self.gradual_of = gradual_of
        self.checked = 0

    def on_step_end(self, loop):
        g = self.gradual_of(loop)
        params = loop.replicas.named_parameters()
        for name, keep in g.current.items():
            p = params[name]
            assert torch.all(p[~keep] == 0), name
            buf = loop.optimizer.state[p].get("momentum_buffer")
            if buf is not None:
                assert torch.all(buf[~keep] == 0), name
        self.checked += 1


def gradual_of(loop):
    return next(cb for cb in loop.callbacks if isinstance(cb, GradualPrune))


def fit_gradual(replicas, step, mask, n, *, start=0, stop=None, checkpoint=None, resume=None,
                callbacks=()):
    sch = schedule()
    plan = TrainPlan(data(), sch, SETTINGS, start, sch.total if stop is None else stop,
                     order_seeds=list(range(10, 10 + n)), augment_seeds=[0] * n,
                     subsets=[None] * n, labels=[f"p{i}" for i in range(n)], mask=mask,
                     gradual=step, rng_seed=10)
    return fit(replicas, plan, checkpoint=checkpoint, resume=resume,
               callbacks=[*callbacks])


@pytest.mark.parametrize("ramp", ["cubic", "linear", "harmonic"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_the_ramp_equals_its_formula_at_every_pruning_step_with_exact_counts(ramp, scope):
    model = net()
    start = Mask.ones(model)
    # start from a mask that is already 30% sparse in one layer: s_i is the start's sparsity
    first = start.names[0]
    keep = start[first].clone().flatten()
    keep[: int(0.3 * keep.numel())] = False
    start = Mask({**dict(start.items()), first: keep.view(start[first].shape)})
    step = GradualStep(ramp, 2, 20, 3, 0.2, scope=scope)
    assert step.points() == [5, 8, 11, 14, 17, 20]
    seen = []

    class Record(Callback):
        def on_step_end(self, loop):
            g = gradual_of(loop)
            if loop.step in step.points():
                seen.append((loop.step, {n: int(t.sum()) for n, t in g.current.items()}))

    model.load_state_dict(start.apply_to_state_dict(model.state_dict()))
    checker = Checker(gradual_of)
    fit_gradual(SingleReplica(model), step, start, 1, callbacks=[checker, Record()])
    assert checker.checked == 24
    assert [t for t, _ in seen] == step.points()
    numel = {n: start[n].numel() for n in start.names}
    for t, kept in seen:
        if scope == "global":
            s_i = 1 - start.nnz / start.numel
            s_t = formula(ramp, t, 2, 18, s_i, 0.8)
            assert sum(kept.values()) == math.floor((1 - s_t) * start.numel + 0.5)
        else:
            for n, k in kept.items():
                s_i = 1 - int(start[n].sum()) / numel[n]
                s_t = formula(ramp, t, 2, 18, s_i, 0.8)
                assert k == math.floor((1 - s_t) * numel[n] + 0.5), (t, n)
    # the last step reaches the target exactly
    assert sum(seen[-1][1].values()) == pytest.approx(0.2 * start.numel, abs=len(numel))


def test_stacked_particles_prune_their_own_weights_like_single_ones_and_stay_zero():
    """Each particle's mask is the one it gets when trained alone (the documented choice:
    masks of stacked particles may differ; they do not depend on the engine)."""
    step = GradualStep("cubic", 0, 18, 4, 0.25)
    template = net()
    start = Mask.ones(template)
    state = template.state_dict()
    singles = []
    for i in range(2):
        model = net()
        sch = schedule()
        plan = TrainPlan(data(), sch, SETTINGS, 0, sch.total, order_seeds=[10 + i],
                         augment_seeds=[0], subsets=[None], labels=["p"], mask=start,
                         gradual=step, rng_seed=10)
        keep = {}

        class Keep(Callback):
            def on_step_end(self, loop):
                keep.update(gradual_of(loop).current)
        fit(SingleReplica(model, state), plan, callbacks=[Keep()])
        singles.append(Mask(keep))
    checker = Checker(gradual_of)
    final = {}

    class KeepStacked(Callback):
        def on_step_end(self, loop):
            final.update(gradual_of(loop).current)
    fit_gradual(StackedReplicas(net(), state, 2), step, start, 2,
                callbacks=[checker, KeepStacked()])
    assert checker.checked == 24
    for i in range(2):
        assert Mask({n: t[i] for n, t in final.items()}) == singles[i]
    assert singles[0] != singles[1]          # different data orders: different masks
    final.clear()                            # one stacked replica (vectorised, one job)
    fit_gradual(StackedReplicas(net(), state, 1), step, start, 1, callbacks=[KeepStacked()])
    assert Mask({n: t[0] for n, t in final.items()}) == singles[0]


def test_a_resumed_gradual_particle_continues_bit_for_bit(tmp_path):
    step = GradualStep("harmonic", 0, 20, 3, 0.3)
    start = Mask.ones(net())
    (whole,), _ = fit_gradual(SingleReplica(net()), step, start, 1)
    file = CheckpointFile(tmp_path / "c.safetensors", "f", 0)
    fit_gradual(SingleReplica(net()), step, start, 1, stop=10, checkpoint=file)
    (resumed,), _ = fit_gradual(SingleReplica(net()), step, start, 1, checkpoint=file,
                                resume=file.load(torch.device("cpu")))
    for k in whole.state:
        assert torch.equal(whole.state[k], resumed.state[k]), k


@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
def test_gradual_levels_reach_their_density_and_keep_pruned_weights_zero(tiny, engine):
    result = run(tiny(prune_schedule="gradual", ramp="cubic", engine=engine, levels=2,
                      prune_fraction=0.5, swa_start=0.8, epochs=3))
    numel = result.mask(0).numel
    for level in range(3):
        mask, sol = result.mask(level), result.solution(level)
        assert mask.nnz == math.floor(0.5 ** level * numel + 0.5)
        for n in mask.names:                       # the solution lies in the level's mask
            assert torch.all(sol[n][~mask[n].to(sol[n].device)] == 0)
        if level:                                  # the next level prunes on from this one
            assert (result.mask(level).intersect(result.mask(level - 1))) == mask
    # every particle keeps exactly the level's number of weights (its own mask)
    from swamp.store import RunStore, load_state
    store = RunStore(result.run_dir)
    for i in range(2):
        p = load_state(store.particle_path(2, i))
        assert sum(int((p[n] != 0).sum()) for n in mask.names) <= result.mask(2).nnz


def test_gradual_sequential_and_vectorised_engines_agree(tiny):
    a = run(tiny(prune_schedule="gradual", engine="sequential", levels=1, prune_fraction=0.6,
                 swa_start=0.8))
    b = run(tiny(prune_schedule="gradual", engine="vectorised", levels=1, prune_fraction=0.6,
                 swa_start=0.8, out=str(a.run_dir.parent.parent / "v")))
    assert a.mask(1) == b.mask(1)
    sa, sb = a.solution(1), b.solution(1)
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-5), k


def test_gradual_settings_are_checked(tiny):
    for kw, words in [(dict(prune_schedule="smooth"), "prune_schedule"),
                      (dict(prune_schedule="gradual", ramp="exp"), "ramp"),
                      (dict(prune_schedule="gradual", method="colt"), "colt"),
                      (dict(prune_schedule="gradual", method="imp", particles=1,
                            scorer="random"), "scorer"),
                      (dict(prune_end=5), "gradual only"),
                      (dict(ramp="linear"), "gradual only"),
                      (dict(prune_schedule="gradual", prune_start=5, prune_end=5),
                       "after `prune_start`"),
                      (dict(prune_schedule="gradual", block="2x2"), "between levels only"),
                      (dict(mask_from="somewhere", block="2x2"), "does not combine")]:
        with pytest.raises(SwampError, match=words):
            tiny(**kw).resolved()
    with pytest.raises(SwampError, match="SWA start"):
        LevelLoop(tiny(prune_schedule="gradual", prune_end=5, swa_start=0.5))
    with pytest.raises(SwampError, match="does not fit"):
        LevelLoop(tiny(prune_schedule="gradual", prune_end=1000, method="imp", particles=1))


# ---- distillation -----------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.act = nn.Tanh()
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def hand_squarehead(s_feats, t_feats):
    """Sum over layers of sum((s - t)^2)/n divided by sum(t^2)/n, written out elementwise."""
    total = 0.0
    for s, t in zip(s_feats, t_feats):
        s, t = s.flatten().tolist(), t.flatten().tolist()
        mse = sum((a - b) ** 2 for a, b in zip(s, t)) / len(s)
        norm = sum(b * b for b in t) / len(t)
        total += mse / norm
    return total


def hand_kd(s_logits, t_logits, T):
    total = 0.0
    for s, t in zip(s_logits.tolist(), t_logits.tolist()):
        ps = [math.exp(v / T) for v in s]
        pt = [math.exp(v / T) for v in t]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return total / len(s_logits) * T * T


@pytest.mark.parametrize("stacked", [False, True])
def test_squarehead_and_kd_equal_a_hand_computation(stacked):
    torch.manual_seed(1)
    student, teacher = Tiny(), Tiny()
    x = torch.randn(2 if stacked else 1, 5, 3)
    y = torch.randint(0, 2, (x.shape[0], 5))
    for kind in ("squarehead", "kd"):
        obj = Distill(kind, task_weight=0.3, distill_weight=0.7, temperature=3.0,
                      layers=("a", "b")).with_teacher(student, teacher.state_dict())
        n = x.shape[0]
        replicas = (StackedReplicas(student, student.state_dict(), n, obj.captures) if stacked
                    else SingleReplica(student, captures=obj.captures))
        losses = obj(replicas.forward(x), x, y)
        assert losses.shape == (n,)
        for i in range(n):
            with torch.no_grad():
                s_a, t_a = student.a(x[i]), teacher.a(x[i])
                s_out = student.b(torch.tanh(s_a))
                t_out = teacher.b(torch.tanh(t_a))
            ce = nn.functional.cross_entropy(s_out, y[i]).item()
            extra = (hand_squarehead([s_a, s_out], [t_a, t_out]) if kind == "squarehead"
                     else hand_kd(s_out, t_out, 3.0))
            assert losses[i].item() == pytest.approx(0.3 * ce + 0.7 * extra, rel=1e-5)


def test_the_teacher_is_frozen_in_eval_mode_and_absent_means_task_loss():
    torch.manual_seed(2)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    teacher_state = {k: v.clone() + 0.1 if v.is_floating_point() else v.clone()
                     for k, v in student.state_dict().items()}
    obj = Distill("kd")
    x, y = torch.randn(1, 6, 3), torch.randint(0, 2, (1, 6))
    replicas = SingleReplica(student)
    plain = CrossEntropy()(replicas.forward(x), x, y)
    assert torch.equal(obj(replicas.forward(x), x, y), plain)        # no teacher bound
    bound = obj.with_teacher(student, teacher_state)
    assert not bound.teacher.training
    assert all(not p.requires_grad for p in bound.teacher.parameters())
    loss = bound(replicas.forward(x), x, y)
    loss.sum().backward()
    for k, v in bound.teacher.state_dict().items():                 # BN stats do not move
        assert torch.equal(v, teacher_state[k]), k


@pytest.mark.parametrize("kind", ["squarehead", "kd"])
def test_distillation_trains_the_same_in_sequential_and_vectorised_engines(tiny, kind):
    a = run(tiny(distill=kind, engine="sequential", levels=1))
    b = run(tiny(distill=kind, engine="vectorised", levels=1,
                 out=str(a.run_dir.parent.parent / "v")))
    assert a.mask(1) == b.mask(1)
    sa, sb = a.solution(1), b.solution(1)
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-5), k
    # and the distillation changed level 1's training (level 0 has no teacher: the same)
    c = run(tiny(engine="sequential", levels=1, out=str(a.run_dir.parent.parent / "c")))
    assert torch.equal(c.solution(0)["1.weight"], a.solution(0)["1.weight"])
    assert not torch.allclose(c.solution(1)["1.weight"], a.solution(1)["1.weight"])


def test_distillation_settings_are_checked(tiny):
    for kw, words in [(dict(distill="mse"), "distill"), (dict(kd_temperature=0.0), "temperature"),
                      (dict(distill="kd", task_weight=0.0, distill_weight=0.0), "both 0"),
                      (dict(distill="kd", teacher="big"), "teacher"),
                      (dict(task_weight=0.5), "apply to `distill` squarehead or kd only"),
                      (dict(distill="kd", distill_layers=["1"]), "squarehead only"),
                      (dict(distill="squarehead", kd_temperature=4.0), "kd only")]:
        with pytest.raises(SwampError, match=words):
            tiny(**kw).resolved()
    with pytest.raises(SwampError, match="matches no module"):
        LevelLoop(tiny(distill="squarehead", distill_layers=["nope.*"]))


# ---- ticket transfer --------------------------------------------------------------------
def test_a_transferred_mask_is_kept_exactly_and_labelled_apart(tiny, tmp_path):
    from swamp.posthoc.runs import method_label
    from swamp.studies.report import build_report

    source = run(tiny(method="imp", particles=1, levels=2, seed=1))
    spec = f"{source.run_dir}:2"
    target = run(tiny(method="imp", particles=1, levels=2, mask_from=spec))
    assert target.mask(0) == source.mask(2)
    assert target.levels[0]["target_density"] == pytest.approx(source.mask(2).density)
    assert target.mask(1).nnz < target.mask(0).nnz
    assert set(target.mask(1).names) == set(source.mask(2).names)
    label = method_label(target.settings, {})
    assert label == f"imp / ticket {source.run_dir.name}:2"
    md = (build_report([source.run_dir, target.run_dir], tmp_path / "rep") /
          "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| sparsity"))
    assert " imp |" in header and f" {label} |" in header     # a column (row) of its own


def test_a_head_of_another_size_is_reinitialised_and_kept_dense(tiny):
    from swamp.data import from_tensors

    source = run(tiny(method="imp", particles=1, levels=1))
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(200, 1, 32, generator=g), torch.randint(0, 4, (200,), generator=g)
    bundle = from_tensors((x[:160], y[:160]), (x[160:], y[160:]))
    target = run(tiny(method="imp", particles=1, levels=0, mask_from=str(source.run_dir)),
                 data=bundle)
    src, got = source.mask(1), target.mask(0)
    head = src.names[-1]
    assert got[head].shape[0] == 4 and bool(got[head].all())
    for n in src.names[:-1]:
        assert torch.equal(got[n], src[n]), n


def test_mask_from_refuses_a_bad_source(tiny, tmp_path):
    source = run(tiny(method="imp", particles=1, levels=1))
    with pytest.raises(SwampError, match="no finished level 5"):
        LevelLoop(tiny(method="imp", particles=1, mask_from=f"{source.run_dir}:5"))
    with pytest.raises(SwampError, match="not a directory"):
        LevelLoop(tiny(method="imp", particles=1, mask_from=str(tmp_path / "nowhere")))
    # a damaged source file is refused by the source run's checksums
    from swamp.store import RunStore
    path = RunStore(source.run_dir).mask_path(1)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(SwampError):
        LevelLoop(tiny(method="imp", particles=1, mask_from=str(source.run_dir)))
    with pytest.raises(SwampError, match="same architecture"):
        other = run(tiny(method="imp", particles=1, levels=0, model="conv1d",
                         out=str(tmp_path / "o")))
        LevelLoop(tiny(method="imp", particles=1, mask_from=str(other.run_dir)))


def test_the_new_settings_are_flags():
    from swamp.app.flags import flag
    from swamp.config import field_owners

    owners = field_owners()
    for name in ("prune_schedule", "ramp", "prune_start", "prune_end", "prune_every",
                 "mask_from", "distill", "distill_weight", "task_weight", "kd_temperature",
                 "distill_layers", "teacher"):
        assert name in owners
    assert flag("mask_from") == "--mask-from"
    assert Settings().run_hash() == Settings.from_dict({"distill": "none"}).run_hash()


@pytest.mark.skipif(not torch.distributed.is_available(),
                    reason="torch.distributed is not available")
def test_gradual_pruning_and_distillation_through_the_distributed_engine(tiny):
    """Two gloo processes: the gradual step and the teacher travel to the other rank; the
    run equals the sequential one, and pruned weights are zero in every particle."""
    kw = dict(prune_schedule="gradual", distill="kd", levels=1, prune_fraction=0.6,
              swa_start=0.8, particles=2, threads=1)
    a = run(tiny(engine="sequential", **kw))
    b = run(tiny(engine="distributed", processes=2, out=str(a.run_dir.parent.parent / "d"),
                 **kw))
    assert a.mask(1) == b.mask(1)
    sa, sb = a.solution(1), b.solution(1)
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k
    from swamp.store import RunStore, load_state
    for i in range(2):
        pa = load_state(RunStore(a.run_dir).particle_path(1, i))
        pb = load_state(RunStore(b.run_dir).particle_path(1, i))
        for n in a.mask(1).names:
            assert torch.equal(pa[n] == 0, pb[n] == 0), n       # the same own mask


@pytest.mark.parametrize("method", ["imp", "imp-swa", "imp-wa", "swamp+", "sms"])
def test_gradual_pruning_works_for_every_averaging_method(tiny, method):
    single = method in ("imp", "imp-swa")
    result = run(tiny(method=method, particles=1 if single else 2, levels=1,
                      prune_fraction=0.7, prune_schedule="gradual", ramp="linear",
                      swa_start=0.8, engine="vectorised", swamp_plus_level=1
                      if method == "swamp+" else None))
    mask, sol = result.mask(1), result.solution(1)
    assert mask.nnz == math.floor(0.3 * mask.numel + 0.5)
    for n in mask.names:
        assert torch.all(sol[n][~mask[n]] == 0)
    assert result.levels[1]["density"] == pytest.approx(mask.density)
    if single:          # one particle: the level's mask is the particle's own final mask
        from swamp.store import RunStore, load_state
        particle = load_state(RunStore(result.run_dir).particle_path(1, 0))
        assert Mask({n: particle[n] != 0 for n in mask.names}) == mask


def test_teacher_init_distils_from_the_starting_weights_at_every_level(tiny):
    from swamp.models import build_model

    torch.manual_seed(5)
    pretrained = build_model("mlp", (1, 32), 10)
    a = run(tiny(levels=0, particles=1, method="imp"), model=pretrained)
    b = run(tiny(levels=0, particles=1, method="imp", distill="kd", teacher="init",
                 task_weight=0.0), model=pretrained)
    assert not torch.allclose(a.solution(0)["5.weight"], b.solution(0)["5.weight"])


class Block(nn.Module):
    """A transformer-style block: returns (hidden, attention-like extra)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, h):
        out = torch.tanh(self.fc(h))
        return out, out.sum(-1)


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.inp(x)
        for block in self.layers:
            h, _ = block(h)
        return self.head(h)


@pytest.mark.parametrize("stacked", [False, True])
def test_squarehead_matches_transformer_blocks_by_default(stacked):
    from swamp.core.masks import select_prunable
    from swamp.train.objective import default_distill_layers

    torch.manual_seed(4)
    student, teacher = Stack(), Stack()
    layers = default_distill_layers(student, select_prunable(student))
    assert layers == ("layers.0", "layers.1")
    obj = Distill("squarehead", task_weight=0.0, layers=layers).with_teacher(
        student, teacher.state_dict())
    n = 2 if stacked else 1
    x, y = torch.randn(n, 5, 3), torch.randint(0, 2, (n, 5))
    replicas = (StackedReplicas(student, student.state_dict(), n, obj.captures) if stacked
                else SingleReplica(student, captures=obj.captures))
    losses = obj(replicas.forward(x), x, y)
    for i in range(n):
        with torch.no_grad():
            hs, ht = student.inp(x[i]), teacher.inp(x[i])
            s_feats, t_feats = [], []
            for bs, bt in zip(student.layers, teacher.layers):
                hs, ht = bs(hs)[0], bt(ht)[0]
                s_feats.append(hs)
                t_feats.append(ht)
        assert losses[i].item() == pytest.approx(hand_squarehead(s_feats, t_feats), rel=1e-5)
