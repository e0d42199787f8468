"""The whole level loop on tiny settings: output contract, resume, reproducibility."""

import csv
import json
import time

import pytest
import torch
from safetensors.torch import load_file

from swamp.errors import SwampError
from swamp.loop import LevelLoop, run
from swamp.core.averaging import recompute_batchnorm
from swamp.models import build_model
from swamp.core.pruning import prune
from swamp.core.seeds import derive_seed
from conftest import RecordingEngine

LINEAR_WEIGHTS = {"1.weight", "3.weight", "5.weight"}


def prunable_weights(model):
    """Weights of the Linear/Conv modules of `model`, by state-dict name (no bias, no BN)."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, kinds)}


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def stable(rows):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def test_three_levels_write_the_output_contract_in_seconds(tiny):
    start = time.perf_counter()
    result = run(tiny())
    assert time.perf_counter() - start < 30
    root = result.run_dir
    assert root.name.startswith("swamp-")
    mlp = build_model("mlp", (1, 32), 10)
    settings = json.loads((root / "settings.json").read_text())
    assert settings["method"]["particles"] == 2 and settings["method"]["swa"] is True
    rows = read_csv(root / "metrics.csv")
    assert [int(r["level"]) for r in rows] == [0, 1, 2]
    for col in ["level", "density", "test_acc", "test_nll", "particle_acc_mean", "ensemble_acc"]:
        assert col in rows[0]
    densities = [float(r["density"]) for r in rows]
    assert densities[0] == 1.0 and densities[0] > densities[1] > densities[2]
    assert densities[2] == pytest.approx(0.64, abs=0.01)
    for level in range(3):
        d = root / f"level_{level}"
        mask = load_file(str(d / "mask.safetensors"))
        solution = load_file(str(d / "solution.safetensors"))
        # mlp = Flatten, Linear, ReLU, Linear, ReLU, Linear: exactly the three Linear weights
        assert set(mask) == LINEAR_WEIGHTS == prunable_weights(mlp)
        assert not any(name.endswith("bias") for name in mask)
        for name, m in mask.items():
            assert m.dtype == torch.bool and m.shape == solution[name].shape
            assert torch.all(solution[name][~m] == 0)
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["level"] == level and len(metrics["particle_test"]) == 2
        assert (d / "particle_0.safetensors").is_file()
    # the model learned something on the synthetic data (10 classes: chance is 0.1)
    assert float(rows[0]["test_acc"]) > 0.3


def test_same_seed_same_metrics_other_seed_other_metrics(tiny, tmp_path):
    a = read_csv(run(tiny(levels=1)).run_dir / "metrics.csv")
    b = read_csv(run(tiny(levels=1), run_dir=tmp_path / "again").run_dir / "metrics.csv")
    c = read_csv(run(tiny(levels=1, seed=1)).run_dir / "metrics.csv")
    assert stable(a) == stable(b)
    assert stable(a) != stable(c)


def loop_with(settings, engine, **kw):
    return LevelLoop(settings, engine=engine, **kw)


def test_interrupted_run_resumes_to_the_same_metrics(tiny, tmp_path):
    reference = read_csv(run(tiny(), run_dir=tmp_path / "ref").run_dir / "metrics.csv")
    interrupted = RecordingEngine(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        loop_with(tiny(), interrupted).run()
    resumed = RecordingEngine()
    result = loop_with(tiny(), resumed).run()
    assert [t.level for t in resumed.tasks] == [2]          # no finished level trained again
    assert stable(read_csv(result.run_dir / "metrics.csv")) == stable(reference)
    again = RecordingEngine()
    loop_with(tiny(), again).run()                            # a finished run does no work
    assert again.tasks == []


def test_every_level_restarts_exactly_from_the_rewind_point(tiny):
    engine = RecordingEngine()
    loop = loop_with(tiny(rewind_epochs=1.0), engine)
    loop.run()
    rewind = load_file(str(loop.store.rewind_path))
    init = load_file(str(loop.store.init_path))
    assert any(not torch.equal(rewind[k], init[k]) for k in rewind)   # T0 > 0 trained
    for task in engine.tasks:
        assert task.start_step == loop.schedule.steps_per_epoch     # schedule position T0
        for k, v in task.start_state.items():
            expected = rewind[k] * task.mask[k] if k in task.mask.names else rewind[k]
            assert torch.equal(v, expected)
    # particles of a level see different data orders, hence end in different places
    assert len({j.order_seed for j in engine.tasks[0].jobs}) == 2
    p0 = load_file(str(loop.store.particle_path(0, 0)))
    p1 = load_file(str(loop.store.particle_path(0, 1)))
    assert any(not torch.equal(p0[k], p1[k]) for k in p0)


def test_solution_batchnorm_statistics_are_recomputed(tiny):
    result = run(tiny(dataset="synthetic-image", model="resnet20", levels=0, epochs=1))
    loop = LevelLoop(tiny(dataset="synthetic-image", model="resnet20", levels=0, epochs=1))
    solution = result.solution(0)
    loop.model.load_state_dict(solution)
    stale = {k: v.clone() for k, v in loop.model.state_dict().items() if "running" in k}
    recompute_batchnorm(loop.model, loop.data.train)
    fresh = {k: v for k, v in loop.model.state_dict().items() if "running" in k}
    assert stale and all(torch.allclose(stale[k], fresh[k], atol=1e-5) for k in stale)


@pytest.mark.parametrize("method,particles,scorer,scope", [
    ("imp", 1, "magnitude", "global"),
    ("swamp", 2, "lamp", "layerwise"),
])
def test_pruning_follows_the_solution_masks(tiny, method, particles, scorer, scope):
    settings = tiny(method=method, particles=particles, scorer=scorer, scope=scope,
                    prune_fraction=0.3)
    result = run(settings)
    masks = [result.mask(level) for level in range(3)]
    for level, (earlier, later) in enumerate(zip(masks, masks[1:])):
        for name in earlier.names:
            assert not torch.any(later[name] & ~earlier[name])   # nothing revived
        if scope == "global":
            assert earlier.nnz - later.nnz == int(earlier.nnz * 0.3 + 0.5)
        else:
            for name in earlier.names:
                kept = int(earlier[name].sum())
                assert kept - int(later[name].sum()) == int(kept * 0.3 + 0.5)
        # the next mask is exactly `prune` of this level's saved solution under its mask
        solution = result.solution(level)
        generator = torch.Generator().manual_seed(derive_seed(settings.run.seed, "prune", level))
        expected = prune(solution, earlier, 0.3, scorer=scorer, scope=scope,
                         generator=generator)
        assert later == expected
        # ... and not what the other scorer/scope would give (the settings are honoured)
        other = prune(solution, earlier, 0.3,
                      scorer="magnitude" if scorer == "lamp" else "lamp",
                      scope="global" if scope == "layerwise" else "layerwise")
        assert later != other


def test_resume_with_other_settings_is_refused_and_changes_nothing(tiny, tmp_path):
    root = run(tiny(levels=0), run_dir=tmp_path / "r").run_dir
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name != "run.lock"}
    with pytest.raises(SwampError, match="different settings"):
        LevelLoop(tiny(levels=0, lr=0.3), run_dir=root).run()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name != "run.lock"} == before


def test_corrupted_checkpoint_is_a_clear_error(tiny, tmp_path):
    root = run(tiny(levels=1), run_dir=tmp_path / "r").run_dir
    (root / "level_1" / "metrics.json").unlink()           # level 1 unfinished
    (root / "level_0" / "solution.safetensors").write_bytes(b"garbage")
    with pytest.raises(SwampError, match="corrupted"):
        LevelLoop(tiny(levels=1), run_dir=root).run()


def test_a_run_of_an_older_model_layout_is_refused_in_one_line(tiny, tmp_path):
    """conv1d once stored (C_out, C_in, k) weights, now (C_out, C_in, 1, k): a run directory
    made before must give a clear error on resume, not a shape error, and stay untouched."""
    from swamp.store import RunStore, load_state, save_state

    settings = tiny(model="conv1d", levels=1, epochs=1)
    first = run(settings, run_dir=tmp_path / "r")
    root = first.run_dir
    store = RunStore(root)
    old = {k: v.squeeze(2) if v.dim() == 4 else v
           for k, v in load_state(store.init_path).items()}
    save_state(store.init_path, old)
    store.record_checksums(store.init_path)                 # consistent, as the old version left it
    # a finished run is only read: its results stay available
    again = LevelLoop(settings, run_dir=root).run().levels
    assert [(r["level"], r["test_acc"]) for r in again] == \
        [(r["level"], r["test_acc"]) for r in first.levels]
    (root / "level_1" / "metrics.json").unlink()           # level 1 unfinished: work left
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name != "run.lock"}
    with pytest.raises(SwampError, match=r"does not fit the model built now \(features\.0\."
                                         r"weight: \(32, 1, 5\) in the file, \(32, 1, 1, 5\)"):
        LevelLoop(settings, run_dir=root).run()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name != "run.lock"} == before


def test_python_api_with_a_users_module_and_tensors(tmp_path):
    import swamp
    from torch import nn

    torch.manual_seed(0)
    x = torch.randn(200, 5)
    y = (x.sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 2))
    data = swamp.from_tensors(train=(x[:160], y[:160]), test=(x[160:], y[160:]))
    settings = swamp.Settings.from_dict({"levels": 1, "epochs": 3, "batch_size": 32,
                                         "particles": 2, "device": "cpu",
                                         "out": str(tmp_path)})
    result = swamp.run(settings, model=model, data=data)
    assert [r["level"] for r in result.levels] == [0, 1]
    assert result.levels[0]["test_acc"] > 0.7
    assert result.settings.model.model == "custom"


def test_a_context_built_once_serves_several_loops_with_the_same_results(tiny, tmp_path):
    """The level loop takes its model, data and schedule ready-made (built once for several
    studies) and then computes exactly what it computes when it builds them itself."""
    from swamp.assemble import build_context

    settings = tiny(levels=1, epochs=1).resolved()
    built = LevelLoop(settings, run_dir=tmp_path / "a").run()
    ctx = build_context(settings, device="cpu")
    shared = [LevelLoop(settings, run_dir=tmp_path / name, context=ctx).run()
              for name in ("b", "c")]
    for result in shared:
        assert [r["test_acc"] for r in result.levels] == [r["test_acc"] for r in built.levels]
        assert (result.run_dir / "level_1" / "solution.safetensors").read_bytes() == \
            (built.run_dir / "level_1" / "solution.safetensors").read_bytes()
