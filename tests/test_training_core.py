"""The one training core: every engine trains through the same step loop, so each feature
of training (precision, clipping, objectives, checkpoints, rewinding the optimiser) holds in
every engine. Tiny settings; each test runs in seconds."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swamp.engines import LevelTask, SequentialEngine, VectorisedEngine
from swamp.engines.base import train_group
from swamp.loop import LevelLoop, run
from swamp.store import RunStore, load_state
from swamp.train import CrossEntropy, SingleReplica, StackedReplicas, TrainPlan, fit
from swamp.train.fit import make_optimizer
from test_engines import assert_results_close, level_task


def masked_task(loop, density=0.5):
    return level_task(loop, density=density)


def assert_mask_holds(results, mask):
    for r in results:
        for name in mask:
            w = r.state[name]
            assert w.dtype == torch.float32               # weights stay fp32 under autocast
            assert torch.all(w[~mask[name]] == 0), name


# ---- precision -------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
def test_every_engine_and_precision_keeps_the_mask_exactly(tiny, engine, precision):
    loop = LevelLoop(tiny(model="conv1d", particles=2, epochs=2, precision=precision,
                          swa=False))
    task = masked_task(loop)
    lines = []
    chosen = (SequentialEngine() if engine == "sequential"
              else VectorisedEngine(info=lines.append))
    results = chosen.train_particles(task, loop.ctx)
    assert_mask_holds(results, task.mask)
    reference = LevelLoop(tiny(model="conv1d", particles=2, epochs=2, swa=False))
    plain = SequentialEngine().train_particles(masked_task(reference), reference.ctx)
    # the precision really changed the arithmetic
    name = task.mask.names[0]
    assert not torch.equal(results[0].state[name], plain[0].state[name])
    if engine == "vectorised":
        # CPU autocast does not reach vmapped ops: one line, then the sequential engine
        assert len(lines) == 1 and "does not reach every vmapped kernel" in lines[0]


def test_bf16_under_the_process_engine_keeps_the_mask(tiny):
    from swamp.engines.processes import start_processes

    loop = LevelLoop(tiny(particles=2, precision="bf16", engine="sequential"))
    task = masked_task(loop)
    engine = start_processes(2, loop.ctx, 1)
    try:
        results = engine.train_particles(task, loop.ctx)
    finally:
        engine.close()
    assert_mask_holds(results, task.mask)
    reference = SequentialEngine().train_particles(task, loop.ctx)
    assert_results_close(results, reference, atol=0)    # the same loop, the same bits


# ---- gradient clipping -----------------------------------------------------------------------
def test_clipping_is_per_particle_and_the_same_in_both_backends(tiny, monkeypatch):
    monkeypatch.setenv("SWAMP_NO_CHANNELS_LAST", "1")
    loop = LevelLoop(tiny(particles=3, clip_grad_norm=0.05, engine="sequential"))
    task = masked_task(loop)
    sequential = SequentialEngine().train_particles(task, loop.ctx)
    stacked = train_group(StackedReplicas(loop.model, task.start_state, 3), task, loop.ctx,
                          task.jobs)
    assert_results_close(sequential, stacked, atol=1e-5)
    unclipped = LevelLoop(tiny(particles=3, engine="sequential"))
    free = SequentialEngine().train_particles(masked_task(unclipped), unclipped.ctx)
    name = task.mask.names[0]
    moved = lambda r: (r.state[name] - task.start_state[name]).norm()   # noqa: E731
    assert moved(sequential[0]) < moved(free[0])       # clipping held the steps back


def test_clip_grad_norm_matches_torch_for_each_replica():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    stack = StackedReplicas(model, start, 2)
    x = torch.randn(2, 5, 4)
    stack.forward(x).logits.square().sum().backward()
    expected = []
    for i in range(2):
        single = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        single.load_state_dict(start)
        single(x[i]).square().sum().backward()
        torch.nn.utils.clip_grad_norm_(single.parameters(), 0.1)
        expected.append([p.grad for p in single.parameters()])
    stack.clip_grad_norm_(0.1)
    for k, p in enumerate(stack.parameters()):
        for i in range(2):
            assert torch.allclose(p.grad[i], expected[i][k], atol=1e-7)


# ---- the objective is pluggable --------------------------------------------------------------
class ActivationPenalty:
    """Cross-entropy plus an L2 penalty on a hidden layer's output: a second objective that
    reads an intermediate activation."""

    captures = ("2",)

    def __init__(self, weight=0.5):
        self.weight = weight
        self.ce = CrossEntropy()

    def __call__(self, outputs, x, y):
        hidden = outputs.features["2"]                     # (N, B, 64) after the ReLU
        return self.ce(outputs, x, y) + self.weight * hidden.square().flatten(1).mean(1)


def test_a_second_objective_trains_in_every_engine_and_changes_the_result(tiny):
    loop = LevelLoop(tiny(particles=2, engine="sequential"), objective=ActivationPenalty())
    task = masked_task(loop)
    sequential = SequentialEngine().train_particles(task, loop.ctx)
    stacked = VectorisedEngine().train_particles(task, loop.ctx)
    assert_results_close(sequential, stacked, atol=1e-5)
    plain = LevelLoop(tiny(particles=2, engine="sequential"))
    ce = SequentialEngine().train_particles(masked_task(plain), plain.ctx)
    name = task.mask.names[0]
    assert not torch.allclose(sequential[0].state[name], ce[0].state[name], atol=1e-4)
    # the penalty shrank the hidden activations
    x = loop.data.train.x[:64]

    def activation(state):
        loop.model.load_state_dict(state)
        return nn.Sequential(*list(loop.model)[:3])(x).square().mean()

    assert activation(sequential[0].state) < activation(ce[0].state)


def test_an_objective_naming_a_missing_module_is_one_line(tiny):
    from swamp.errors import SwampError

    class Wrong(ActivationPenalty):
        captures = ("no.such.module",)

    loop = LevelLoop(tiny(particles=1, method="imp", engine="sequential"), objective=Wrong())
    with pytest.raises(SwampError, match="no.such.module"):
        SequentialEngine().train_particles(masked_task(loop), loop.ctx)


# ---- rewinding with the optimiser state ------------------------------------------------------
def test_optimizer_state_given_to_fit_is_the_first_steps_momentum():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    from swamp.config import TrainSettings
    from swamp.data import Split
    from swamp.train import Schedule

    settings = TrainSettings(epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.0,
                             rewind_epochs=0)
    schedule = Schedule.build(settings, 8, swa=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = {"weight::momentum_buffer": torch.full((2, 3), 0.5),
                "bias::momentum_buffer": torch.full((2,), -0.5)}
    plan = TrainPlan(Split(x, y), schedule, settings, 0, 1, [0], [0], [None], ["p"])
    (result,), _ = fit(SingleReplica(model, start), plan, optimizer_state=momentum)
    # by hand: one SGD step whose momentum buffer held the given values
    ref = nn.Linear(3, 2)
    ref.load_state_dict(start)
    opt = make_optimizer(ref.parameters(), settings)
    for p, name in ((ref.weight, "weight"), (ref.bias, "bias")):
        opt.state[p]["momentum_buffer"] = momentum[f"{name}::momentum_buffer"].clone()
    for group in opt.param_groups:
        group["lr"] = schedule.lr_at(0)
    # the batch in fit's own seeded order: a sum in another order rounds differently
    from swamp.train.schedule import BatchOrder

    idx = BatchOrder(8, 8, 0, torch.device("cpu")).batch(0)
    F.cross_entropy(ref(x[idx]), y[idx]).backward()
    opt.step()
    assert torch.equal(result.state["weight"], ref.weight.detach())
    assert torch.equal(result.state["bias"], ref.bias.detach())


def test_rewind_optimizer_restores_the_momentum_of_the_rewind_point(tiny):
    base = dict(rewind_iters=3, levels=1, engine="sequential")
    plain = run(tiny(**base))
    kept = run(tiny(rewind_optimizer=True, **base))
    assert plain.run_dir != kept.run_dir                 # a setting of what is computed
    store = RunStore(kept.run_dir)
    saved = load_state(store.rewind_optimizer_path)
    assert saved and all(k.endswith("::momentum_buffer") for k in saved)
    assert any(t.abs().sum() > 0 for t in saved.values())
    assert not RunStore(plain.run_dir).rewind_optimizer_path.exists()
    for level in (0, 1):          # the rewind weights are the same; the momentum is not
        a, b = plain.solution(level), kept.solution(level)
        assert any(not torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(load_state(RunStore(plain.run_dir).rewind_path)["1.weight"],
                       load_state(store.rewind_path)["1.weight"])


# ---- checkpoints inside a particle -----------------------------------------------------------
def test_a_checkpoint_resumes_a_particle_bit_for_bit(tiny, tmp_path):
    from swamp.engines.base import checkpoint_file
    from swamp.train import stop as stops

    loop = LevelLoop(tiny(particles=1, method="imp-swa", epochs=4, swa_start=0.5,
                          engine="sequential"))
    task = masked_task(loop)
    task.checkpoint_dir, task.checkpoint_every = tmp_path, 3
    whole = SequentialEngine().train_particles(
        LevelTask(task.level, task.start_state, task.mask, task.start_step, task.jobs),
        loop.ctx)
    seen = []

    def stop_at_7(index, done):
        seen.append(done)
        if done == 7:
            stops._requested.append(15)          # as if SIGTERM arrived during step 7
    with pytest.raises(stops.Interrupted):
        SequentialEngine().train_particles(task, loop.ctx, stop_at_7)
    stops._requested.clear()
    file = checkpoint_file(task, loop.ctx, task.jobs)
    assert file.load("cpu")[1]["step"] == 7       # written at the stop, not at 6
    lines = []
    resumed = SequentialEngine(info=lines.append).train_particles(task, loop.ctx)
    assert "resuming from the checkpoint at iteration 7" in lines[0]
    assert_results_close(whole, resumed, atol=0)
    assert whole[0].averaged == resumed[0].averaged > 1
    # finished: the checkpoint now holds the end, and resuming it trains nothing
    assert file.load("cpu")[1]["step"] == loop.schedule.total
    again = SequentialEngine().train_particles(task, loop.ctx)
    assert_results_close(whole, again, atol=0)


def test_a_damaged_or_stale_checkpoint(tiny, tmp_path):
    from swamp.engines.base import checkpoint_file
    from swamp.errors import SwampError

    loop = LevelLoop(tiny(particles=1, method="imp", engine="sequential"))
    task = masked_task(loop)
    task.checkpoint_dir = tmp_path
    SequentialEngine().train_particles(task, loop.ctx)
    path = checkpoint_file(task, loop.ctx, task.jobs).path
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SwampError, match="damaged.*delete .*checkpoint_0"):
        SequentialEngine().train_particles(task, loop.ctx)
    # a checkpoint of another ticket is not resumed (it is trained again and replaced)
    path.unlink()
    SequentialEngine().train_particles(task, loop.ctx)
    other = masked_task(loop, density=0.3)
    other.checkpoint_dir = tmp_path
    assert checkpoint_file(other, loop.ctx, other.jobs).load("cpu") is None
