"""Engines: vectorised == sequential (BatchNorm and augmentation included), fallbacks, auto,
engine settings, and the CPU hygiene helpers. Every test runs in a second or two."""

import copy

import pytest
import torch
from torch import nn

from swamp import cpu
from swamp.engines import (LevelTask, ParticleJob, SequentialEngine, TrainContext,
                           VectorisedEngine, make_engine)
from swamp.engines.base import train_group
from swamp.train import StackedReplicas
from swamp.errors import SwampError
from swamp.loop import LevelLoop, run
from swamp.core.masks import Mask


def level_task(loop, level=0, particles=None, density=0.5, seed=0):
    """A realistic ticket: the loop's start weights with a random mask of `density`."""
    g = torch.Generator().manual_seed(seed)
    state = loop.model.state_dict()
    mask = Mask({n: torch.rand(state[n].shape, generator=g) < density for n in loop.prunable})
    jobs = loop._jobs(level)
    jobs = jobs[:particles] if particles else jobs
    start = mask.apply_to_state_dict({k: v.clone() for k, v in state.items()})
    return LevelTask(level, start, mask, loop.schedule.rewind, jobs)


def train_stacked(task, ctx):
    """Every particle of `task` stacked, through the one training loop."""
    replicas = StackedReplicas(ctx.model, task.start_state, len(task.jobs))
    return train_group(replicas, task, ctx, task.jobs)


def assert_results_close(a, b, atol=1e-5):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.averaged == rb.averaged
        assert ra.train_loss == pytest.approx(rb.train_loss, abs=1e-5)
        assert list(ra.state) == list(rb.state)
        for k in ra.state:
            x, y = ra.state[k], rb.state[k]
            assert x.dtype == y.dtype and x.shape == y.shape, k
            if x.is_floating_point():
                assert torch.allclose(x, y, atol=atol, rtol=1e-4), (k, (x - y).abs().max())
            else:
                assert torch.equal(x, y), k


@pytest.fixture
def no_channels_last(monkeypatch):
    # channels_last convs sum in another order than the stacked (vmap) convs; compare
    # the engines on one memory format
    monkeypatch.setenv("SWAMP_NO_CHANNELS_LAST", "1")


@pytest.mark.parametrize("dataset,model,swa,atol", [
    # BatchNorm2d over (C, 1, L) signals; batched convs sum in another order (seen: 1.5e-5)
    ("synthetic", "conv1d", True, 5e-5),
    # BatchNorm2d + crop/flip augmentation; 20 layers amplify rounding a little more
    ("synthetic-image", "resnet20", False, 2e-4),
])
def test_vectorised_equals_sequential_with_batchnorm(tiny, no_channels_last, dataset, model,
                                                     swa, atol):
    loop = LevelLoop(tiny(dataset=dataset, model=model, particles=3, epochs=2, swa=swa,
                          engine="sequential"))
    if dataset == "synthetic-image":
        assert loop.data.augment is not None
    task = level_task(loop)
    reference = SequentialEngine().train_particles(task, loop.ctx)
    stacked = train_stacked(task, loop.ctx)
    assert_results_close(reference, stacked, atol)
    # the BatchNorm statistics really moved, separately per particle
    key = next(k for k in reference[0].state if k.endswith("running_mean"))
    assert not torch.equal(reference[0].state[key], reference[1].state[key])
    assert int(stacked[0].state[key.replace("running_mean", "num_batches_tracked")]) > 0
    # pruned weights stay exactly zero (the mask also zeroes the stacked momentum)
    for r in stacked:
        for name in task.mask:
            assert torch.all(r.state[name][~task.mask[name]] == 0)


def test_vectorised_equals_sequential_with_batchnorm1d(tiny):
    """A model of the user's own with BatchNorm1d (on features) in training mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 24), nn.BatchNorm1d(24), nn.ReLU(),
                          nn.Linear(24, 10))
    loop = LevelLoop(tiny(particles=3, epochs=2, engine="sequential"), model=model)
    task = level_task(loop)
    reference = SequentialEngine().train_particles(task, loop.ctx)
    stacked = train_stacked(task, loop.ctx)
    assert_results_close(reference, stacked, 1e-5)
    assert not torch.equal(reference[0].state["2.running_var"], reference[1].state["2.running_var"])


def test_vectorised_and_sequential_give_the_same_level_solutions_and_masks(tiny):
    a = run(tiny(engine="sequential", levels=2))
    b = run(tiny(engine="vectorised", levels=2, out=str(a.run_dir.parent.parent / "v")))
    assert a.run_dir.name == b.run_dir.name          # the engine is not part of the run hash
    for level in range(3):
        assert a.mask(level) == b.mask(level)
        sa, sb = a.solution(level), b.solution(level)
        for k in sa:
            assert torch.allclose(sa[k], sb[k], atol=1e-5), k
    for ra, rb in zip(a.levels, b.levels):
        assert ra["test_acc"] == pytest.approx(rb["test_acc"], abs=1e-6)


class Unstackable(nn.Module):
    """Data-dependent Python control flow: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:          # a Python bool of a batched tensor
            x = x * 1.0
        return self.fc(x)


def test_vectorised_falls_back_with_one_line(tiny):
    lines = []
    torch.manual_seed(0)
    loop = LevelLoop(tiny(engine="vectorised"), model=Unstackable())
    engine = VectorisedEngine(info=lines.append)
    task = level_task(loop)
    results = engine.train_particles(task, loop.ctx)
    assert len(lines) == 1 and "cannot be stacked" in lines[0] and "sequentially" in lines[0]
    assert_results_close(results, SequentialEngine().train_particles(task, loop.ctx), 0)
    # particles on training subsets of different sizes cannot share one stacked step
    loop2 = LevelLoop(tiny(engine="vectorised"))
    task2 = level_task(loop2)
    jobs = [ParticleJob(0, 0, 1, 2, torch.arange(0, 100)),
            ParticleJob(0, 1, 3, 4, torch.arange(100, 230))]
    VectorisedEngine(info=lines.append).train_particles(
        LevelTask(0, task2.start_state, task2.mask, 0, jobs), loop2.ctx)
    assert "different sizes" in lines[-1]


def test_vectorised_nan_names_the_particle(tiny):
    loop = LevelLoop(tiny(engine="vectorised", lr=1e6))
    task = level_task(loop)
    with pytest.raises(SwampError, match="particle .*loss became"):
        train_stacked(task, loop.ctx)


def test_auto_says_what_it_chose_and_keeps_small_runs_in_process(tiny):
    lines = []
    loop = LevelLoop(tiny())
    assert loop.settings.run.engine == "auto"
    engine = make_engine("auto", loop.ctx, loop.settings, info=lines.append)
    results = engine.train_particles(level_task(loop), loop.ctx)
    assert len(results) == 2
    assert len(lines) == 1 and lines[0].startswith("engine auto: sequential")
    assert "against" in lines[0] and "processes with their start" in lines[0]
    assert "sequential" in engine.description


def test_the_timed_step_leaves_out_the_processes_one_time_costs(monkeypatch):
    """A process's first training loop imports torch._dynamo (torch.optim does, seconds):
    counted as a step, it would make this process look many times slower than it is."""
    import swamp.engines.auto as auto

    times = iter([1.3, 0.011, 0.041, 0.011])     # first loop, warm-up again, 4 steps, 1 step
    monkeypatch.setattr(auto, "_fit_seconds", lambda replicas, ctx, n, steps: next(times))
    assert auto._step_time(lambda: None, None, 1) == pytest.approx(0.01)
    slow = iter([2.0, 0.9])                       # a slow step stays one measured step
    monkeypatch.setattr(auto, "_fit_seconds", lambda replicas, ctx, n, steps: next(slow))
    assert auto._step_time(lambda: None, None, 1) == 0.9


@pytest.mark.parametrize("processes_win", [False, True])
def test_a_long_run_starts_processes_at_once_and_keeps_them_only_if_they_win(
        tiny, monkeypatch, processes_win):
    """A long CPU run starts its processes before the rewind segment, as `--processes K`
    does; the timing that decides whether to keep them runs at the first level (timed
    before, it delayed their start by seconds), and stops them if they lose."""
    import swamp.engines.auto as auto
    import swamp.engines.processes as processes

    events = []

    class Started:
        description = "distributed (stand-in)"
        record = {"engine": "distributed", "processes": 2, "threads": 1}

        def close(self, rows=()):
            events.append("closed")

    def start(k, ctx, threads, info=None, wait=True):
        events.append(("started", k, threads, wait))
        return Started()

    def step(ctx, threads):
        events.append(("timed", threads))
        if threads == 1:      # a process's share of 2 cores
            return 1e-3 if processes_win else 1.0
        return 0.5

    monkeypatch.setattr(processes, "start_processes", start)
    monkeypatch.setattr(auto, "step_seconds", step)
    monkeypatch.setattr(auto.cpu, "usable_cores", lambda: 2)
    monkeypatch.setattr(auto, "EARLY_START_STEPS", 1)
    loop = LevelLoop(tiny(particles=2))
    before = torch.get_num_threads()
    with cpu.torch_threads(2):
        engine = make_engine("auto", loop.ctx, loop.settings, particles=[2, 2])
        assert events == [("started", 2, 1, False)]         # nothing timed yet
        assert torch.get_num_threads() == 1     # the rewind segment takes a process's share
        chosen = engine.choose(2, loop.ctx, loop.ctx.model.state_dict())   # the first level
        # "here" is this process's own thread count, read before the processes started
        assert events[1:3] == [("timed", 2), ("timed", 1)]
        if processes_win:
            assert isinstance(chosen, Started) and "closed" not in events
            assert engine.record == {"2": Started.record}
            engine.close()
            assert events[-1] == "closed"
        else:
            assert events[3:] == ["closed"]          # started at once, stopped at once
            assert isinstance(chosen, SequentialEngine)
            assert torch.get_num_threads() == 2
        assert engine.choose(2, loop.ctx, {}) is chosen     # decided once
    assert torch.get_num_threads() == before
    # a short run decides first and starts nothing it does not use
    events.clear()
    monkeypatch.setattr(auto, "EARLY_START_STEPS", 10**9)
    with cpu.torch_threads(2):
        engine = make_engine("auto", loop.ctx, loop.settings, particles=[2, 2])
        assert events[:2] == [("timed", 2), ("timed", 1)]
        assert events[2:] == ([("started", 2, 1, False)] if processes_win else [])
        engine.close()


def test_engine_settings_are_checked_and_not_hashed(tiny):
    base = tiny()
    for kw in [dict(engine="sequential"), dict(engine="vectorised"), dict(processes=2),
               dict(threads=1), dict(engine="distributed", processes=3)]:
        assert tiny(**kw).run_hash() == base.run_hash()
    with pytest.raises(SwampError, match="unknown engine"):
        tiny(engine="magic").resolved()
    with pytest.raises(SwampError, match="`processes` 2 trains in several processes"):
        tiny(engine="sequential", processes=2).resolved()
    with pytest.raises(SwampError, match="`threads`"):
        tiny(threads=-1).resolved()
    with pytest.raises(SwampError, match="unknown engine"):
        make_engine("magic")


def test_thread_policy_never_exceeds_torch_setting_and_restores():
    before = torch.get_num_threads()
    assert cpu.run_threads(3) == 3
    with cpu.torch_threads(1):
        assert torch.get_num_threads() == 1
        assert cpu.run_threads() == 1          # never more than the current setting
    assert torch.get_num_threads() == before
    assert 1 <= cpu.free_cores() <= cpu.usable_cores()


def test_cpu_hygiene_helpers(monkeypatch):
    assert cpu.tune_allocator() in (True, False)
    assert cpu.tune_allocator() == cpu.tune_allocator()        # idempotent
    env = cpu.allocator_env()
    assert env in ({}, cpu.ALLOCATOR_ENV)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert cpu.wants_channels_last(conv, torch.device("cpu"))
    assert not cpu.wants_channels_last(nn.Linear(3, 4), torch.device("cpu"))
    cpu.use_channels_last(conv)
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("SWAMP_NO_CHANNELS_LAST", "1")
    assert not cpu.wants_channels_last(conv, torch.device("cpu"))


def test_channels_last_leaves_results_equivalent(tiny, monkeypatch):
    settings = tiny(dataset="synthetic-image", model="resnet20", particles=1, epochs=1)
    loop = LevelLoop(settings)
    assert loop.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    task = level_task(loop)
    fast = SequentialEngine().train_particles(task, loop.ctx)
    plain = copy.deepcopy(loop.model).to(memory_format=torch.contiguous_format)
    ctx = TrainContext(plain, loop.data, loop.schedule, loop.settings.train)
    slow = SequentialEngine().train_particles(task, ctx)
    assert_results_close(fast, slow, atol=1e-2)   # the same network, summed in another order


def test_gpu_probe_measures_and_leaves_the_model_alone(tiny):
    # auto's GPU decision times stacked vs single steps; run the same code on CPU here
    from swamp.engines.auto import vectorised_speedup

    loop = LevelLoop(tiny(model="conv1d"))
    before = {k: v.clone() for k, v in loop.model.state_dict().items()}
    task = level_task(loop)
    speedup = vectorised_speedup(len(task.jobs), task.start_state, loop.ctx)
    assert 0 < speedup < 100
    for k, v in loop.model.state_dict().items():
        assert torch.equal(v, before[k]), k
