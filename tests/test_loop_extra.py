"""More properties of the level loop, read back from the run directory (tiny settings)."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from swamp.cli import main
from swamp.errors import SwampError
from swamp.loop import LevelLoop, run
from swamp.core.masks import Mask
from swamp.models import build_model
from swamp.training import derive_seed, train_steps
from conftest import RecordingEngine


def level_metrics(root, level):
    return json.loads((root / f"level_{level}" / "metrics.json").read_text())


def snapshot(root):
    """Every path under `root`: (bytes, mtime) of files, mtime of folders."""
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


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


# ---- prunable tensors -------------------------------------------------------------------------
@pytest.mark.parametrize("model,names", [
    ("mlp", {"1.weight", "3.weight", "5.weight"}),
    ("conv1d", {"features.0.weight", "features.3.weight", "features.6.weight",
                "classifier.weight"}),
])
def test_masks_cover_exactly_the_linear_and_conv_weights(tiny, model, names):
    result = run(tiny(model=model, method="imp", particles=1, levels=1, epochs=1))
    net = build_model(model, (1, 32), 10)
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    assert names == {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, kinds)}
    bn = {n for n, m in net.named_modules()
          if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))}
    solution = result.solution(1)
    for level in (0, 1):
        assert set(result.mask(level).names) == names
    # everything else (biases, BatchNorm weights and statistics) is in the solution, unmasked
    rest = set(solution) - names
    assert rest and all(k.endswith(".bias") or k.rsplit(".", 1)[0] in bn for k in rest)
    if model == "conv1d":
        bn_weights = {"features.1.weight", "features.4.weight", "features.7.weight"}
        assert bn_weights <= set(solution) and not bn_weights & names
        assert all(torch.count_nonzero(solution[k]) == solution[k].numel() for k in bn_weights)


# ---- per-layer densities ----------------------------------------------------------------------
def test_per_layer_densities_in_metrics_match_the_mask_files(tiny):
    result = run(tiny(method="imp", particles=1, levels=2))
    root = result.run_dir
    seen = set()
    for level in range(3):
        metrics = level_metrics(root, level)
        mask = load_file(str(root / f"level_{level}" / "mask.safetensors"))
        assert set(metrics["layers"]) == set(mask)
        for name, m in mask.items():
            layer = metrics["layers"][name]
            nnz, numel = int(m.sum()), m.numel()
            assert layer["nnz"] == nnz and layer["numel"] == numel
            assert layer["density"] == pytest.approx(nnz / numel, abs=1e-12)
            seen.add(round(nnz / numel, 6))
        total = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        assert metrics["density"] == pytest.approx(total, abs=1e-12)
    assert len(seen) > 3    # global pruning left the layers at different densities


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
    loop = LevelLoop(settings)
    loop.engine = engine
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


# ---- damaged or mismatched run directories ----------------------------------------------------
def test_truncated_rewind_checkpoint_is_a_clear_error_and_touches_nothing(tiny, tmp_path):
    root = tmp_path / "r"
    loop = LevelLoop(tiny(rewind_iters=2, levels=1), run_dir=root)
    loop.engine = RecordingEngine(fail_at=0)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    rewind = root / "rewind.safetensors"
    assert rewind.is_file() and not (root / "level_0" / "metrics.json").exists()
    data = rewind.read_bytes()
    rewind.write_bytes(data[:len(data) // 2])
    before = snapshot(root)
    damaged = r"rewind\.safetensors (is corrupted|changed after it was written)"
    with pytest.raises(SwampError, match=damaged) as err:
        LevelLoop(tiny(rewind_iters=2, levels=1), run_dir=root).run()
    assert "rewind.safetensors" in str(err.value)
    assert snapshot(root) == before      # nothing deleted, overwritten or added


def test_cli_resume_with_other_settings_exits_2_and_changes_nothing(tmp_path, capsys):
    flags = ["--dataset", "synthetic", "--data-size", "200", "--model", "mlp", "--epochs", "1",
             "--batch-size", "50", "--levels", "1", "--particles", "2", "--device", "cpu",
             "--rewind-epochs", "0", "--engine", "sequential"]
    root = tmp_path / "r"
    threads = torch.get_num_threads()
    try:
        assert main(["run", *flags, "--run-dir", str(root), "--quiet"]) == 0
        capsys.readouterr()
        before = snapshot(root)
        assert len(before) > 5
        code = main(["run", *flags, "--run-dir", str(root), "--lr", "0.3"])
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("swamp: error:")
    assert "different settings" in err and "Traceback" not in err
    assert out == ""
    assert snapshot(root) == before
