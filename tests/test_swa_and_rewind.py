"""SWA inside a particle and the rewind point: snapshot counts, the dense segment to T0,
the averaging-only and SWA-only members of the family."""

import dataclasses
import json

import torch
from safetensors.torch import load_file

from swamp.core.masks import Mask
from swamp.core.seeds import derive_seed
from swamp.loop import LevelLoop, run
from swamp.models import build_model
from swamp.train import train_steps
from conftest import RecordingEngine


def level_metrics(root, level):
    return json.loads((root / f"level_{level}" / "metrics.json").read_text())


def expected_snapshots(total, swa_start, freq, spe, start=0):
    """SWA snapshots of a particle trained from `start` to `total`, counted from the schedule
    written out: after iteration `done` (1-based) once past swa_start, every `freq`
    iterations from swa_start (freq 0: at each epoch end), and always at the end."""
    count = 0
    for done in range(start + 1, total + 1):
        if done <= swa_start:
            continue
        on_grid = (done - swa_start) % freq == 0 if freq > 0 else done % spe == 0
        count += on_grid or done == total
    return count


# ---- SWA frequency ----------------------------------------------------------------------------
def test_swa_freq_sets_the_number_of_snapshots(tiny, tmp_path):
    common = dict(levels=0, epochs=4, swa_start=0.25, batch_size=64)
    every2 = run(tiny(swa_freq=2, **common), run_dir=tmp_path / "f2")
    epochs = run(tiny(swa_freq=0, **common), run_dir=tmp_path / "f0")
    loop = LevelLoop(tiny(swa_freq=2, **common), run_dir=every2.run_dir)
    spe = len(loop.data.train) // 64
    total = 4 * spe
    swa_start = round(0.25 * total)
    want2 = expected_snapshots(total, swa_start, 2, spe)
    want0 = expected_snapshots(total, swa_start, 0, spe)
    assert want2 != want0 and want2 > 1 and want0 > 1
    assert level_metrics(every2.run_dir, 0)["swa_snapshots"] == [want2, want2]
    assert level_metrics(epochs.run_dir, 0)["swa_snapshots"] == [want0, want0]


# ---- rewinding to T0 > 0 ----------------------------------------------------------------------
def test_rewind_iters_trains_the_dense_network_then_every_particle_from_t0(tiny):
    t0 = 2
    settings = tiny(rewind_iters=t0, swa_start=0.0, swa_freq=1, levels=1, engine="sequential")
    engine = RecordingEngine()
    loop = LevelLoop(settings, engine=engine)
    loop.run()
    s, store, sched = loop.settings, loop.store, loop.schedule
    init = load_file(str(store.init_path))
    rewind = load_file(str(store.rewind_path))
    assert any(not torch.equal(rewind[k], init[k]) for k in rewind)

    # rewind.safetensors is the dense network trained t0 steps from init, without SWA, in the
    # rewind data order
    model = build_model("mlp", (1, 32), 10)
    model.load_state_dict(init)
    dense = dataclasses.replace(sched, swa=False)
    train_steps(model, None, loop.data.train, dense, s.train, start=0, stop=t0,
                order_seed=derive_seed(s.run.seed, "rewind-order"), augment=loop.data.augment,
                augment_seed=derive_seed(s.run.seed, "rewind-augment"))
    for k, v in model.state_dict().items():
        assert torch.allclose(v, rewind[k], rtol=1e-6, atol=1e-7), k

    # every particle of every level starts from rewind * mask at iteration t0 and trains to T:
    # with SWA from iteration 0 at every step, it keeps exactly T - t0 snapshots
    assert [t.level for t in engine.tasks] == [0, 1]
    for task in engine.tasks:
        mask = Mask.load(store.mask_path(task.level))
        assert task.start_step == t0
        for k, v in task.start_state.items():
            assert torch.equal(v, rewind[k] * mask[k] if k in mask.names else rewind[k])
        metrics = level_metrics(store.root, task.level)
        assert metrics["swa_snapshots"] == [sched.total - t0] * 2
        # and the saved particles are what training rewind * mask from t0 to T gives
        for job in task.jobs:
            model.load_state_dict(mask.apply_to_state_dict(rewind))
            expected = train_steps(model, mask, loop.data.train, sched, s.train, start=t0,
                                   stop=sched.total, order_seed=job.order_seed,
                                   augment=loop.data.augment, augment_seed=job.augment_seed)
            saved = load_file(str(store.particle_path(task.level, job.index)))
            assert expected.averaged == sched.total - t0
            for k, v in expected.state.items():
                assert torch.allclose(v, saved[k], rtol=1e-6, atol=1e-7), (task.level, k)


# ---- imp-wa and imp-swa -----------------------------------------------------------------------
def test_imp_wa_averages_its_particles_without_swa(tiny):
    result = run(tiny(method="imp-wa", particles=2, levels=1))
    root = result.run_dir
    assert json.loads((root / "settings.json").read_text())["method"]["swa"] is False
    for level in (0, 1):
        d = root / f"level_{level}"
        metrics = level_metrics(root, level)
        assert metrics["particles"] == 2 and metrics["swa_snapshots"] == [0, 0]
        assert sorted(p.name for p in d.glob("particle_*")) == ["particle_0.safetensors",
                                                               "particle_1.safetensors"]
        p0 = load_file(str(d / "particle_0.safetensors"))
        p1 = load_file(str(d / "particle_1.safetensors"))
        mask = load_file(str(d / "mask.safetensors"))
        solution = load_file(str(d / "solution.safetensors"))
        assert any(not torch.allclose(p0[k], p1[k]) for k in p0)   # a real average
        assert set(solution) == set(p0)
        for k in p0:
            mean = (p0[k] + p1[k]) / 2
            if k in mask:
                mean = mean * mask[k]
            assert torch.allclose(solution[k], mean, rtol=1e-6, atol=1e-8), (level, k)


def test_imp_swa_keeps_one_particle_with_an_swa_average(tiny):
    result = run(tiny(method="imp-swa", particles=1, levels=1, epochs=4, swa_start=0.5))
    root = result.run_dir
    loop = LevelLoop(tiny(method="imp-swa", particles=1, levels=1, epochs=4, swa_start=0.5),
                     run_dir=root)
    spe = len(loop.data.train) // 64
    want = expected_snapshots(4 * spe, round(0.5 * 4 * spe), 0, spe)
    assert want >= 2
    for level in (0, 1):
        d = root / f"level_{level}"
        metrics = level_metrics(root, level)
        assert metrics["particles"] == 1 and metrics["swa_snapshots"] == [want]
        assert [p.name for p in d.glob("particle_*")] == ["particle_0.safetensors"]
        p0 = load_file(str(d / "particle_0.safetensors"))
        solution = load_file(str(d / "solution.safetensors"))
        assert all(torch.equal(solution[k], p0[k]) for k in p0)
