"""Dense work done once (issue 14): the start (init + rewind point) and level 0 are shared by
runs in one folder that differ only in settings they do not depend on; checked, and not
shared when any setting they depend on differs."""

import pytest
import torch

import swamp.loop as loop_module
from swamp.engines import SequentialEngine
from swamp.events import Events, Info
from swamp.loop import LevelLoop


@pytest.fixture
def trained(monkeypatch):
    """Levels whose particles are trained, and dense rewind segments trained."""
    calls = {"levels": [], "rewind": 0}
    train = SequentialEngine.train_particles
    fit = loop_module.fit

    def counting(self, task, ctx, progress=None):
        calls["levels"].append(task.level)
        return train(self, task, ctx, progress)

    def counting_fit(*args, **kwargs):
        calls["rewind"] += 1
        return fit(*args, **kwargs)

    monkeypatch.setattr(SequentialEngine, "train_particles", counting)
    monkeypatch.setattr(loop_module, "fit", counting_fit)
    return calls


def _run(settings):
    events = Events()
    messages = []
    events.subscribe(lambda e: messages.append(e.message) if isinstance(e, Info) else None)
    result = LevelLoop(settings, events=events).run()
    return result, messages


def _same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("model", ["mlp", "conv1d"])      # conv1d: BatchNorm recomputed
def test_a_run_that_prunes_differently_reuses_start_and_level_0(tiny, tmp_path, trained,
                                                                 model):
    base = dict(engine="sequential", rewind_epochs=0.5, epochs=2, levels=1, model=model)
    first, _ = _run(tiny(**base))
    assert trained == {"levels": [0, 1], "rewind": 1}
    trained.update(levels=[], rewind=0)
    other, messages = _run(tiny(**{**base, "levels": 2}, prune_fraction=0.5, scorer="lamp"))
    assert trained == {"levels": [1, 2], "rewind": 0}        # level 0 and T0 reused
    assert any("reusing the initial weights and rewind point" in m for m in messages)
    assert any("level 0: reusing the particles" in m for m in messages)
    _same(first.solution(0), other.solution(0))
    assert first.levels[0]["test_acc"] == other.levels[0]["test_acc"]
    # and the run is the one it would have been without sharing
    alone = tiny(**{**base, "levels": 2}, prune_fraction=0.5, scorer="lamp", share_dense=False,
                 out=str(tmp_path / "alone"))
    fresh, _ = _run(alone)
    for level in range(3):
        _same(fresh.solution(level), other.solution(level))
        assert fresh.mask(level) == other.mask(level)
    # nothing but run directories is written
    assert all((p / "settings.json").is_file() for p in (tmp_path / "runs").iterdir())


def test_methods_share_the_start_but_not_a_level_0_they_train_otherwise(tiny, trained):
    base = dict(engine="sequential", rewind_epochs=0.5, epochs=2, levels=0, particles=1)
    _run(tiny(**base, method="imp"))
    trained.update(levels=[], rewind=0)
    _run(tiny(**base, method="imp-swa"))
    assert trained == {"levels": [0], "rewind": 0}


@pytest.mark.parametrize("change", [{"lr": 0.07}, {"seed": 1}, {"batch_size": 32},
                                    {"particles": 3}])
def test_a_setting_level_0_depends_on_trains_it_anew(tiny, trained, change):
    base = dict(engine="sequential", rewind_epochs=0.5, epochs=2, levels=0)
    _run(tiny(**base))
    trained.update(levels=[], rewind=0)
    _run(tiny(**base, **change))
    assert trained["levels"] == [0]
    assert trained["rewind"] == (0 if "particles" in change else 1)


def test_a_damaged_source_is_not_used(tiny, tmp_path, trained):
    base = dict(engine="sequential", epochs=2, levels=0)
    first, _ = _run(tiny(**base))
    (first.run_dir / "level_0" / "particle_0.safetensors").write_bytes(b"damaged")
    trained.update(levels=[], rewind=0)
    again, messages = _run(tiny(**base, prune_fraction=0.3))
    assert trained["levels"] == [0]                          # trained, not read
    assert any("checksum mismatch" in m for m in messages)
    assert first.levels[0]["test_acc"] == again.levels[0]["test_acc"]
    trained.update(levels=[])
    _run(tiny(**base, prune_fraction=0.4))                   # the good run beside it serves
    assert trained["levels"] == []


def test_level_0_needs_the_saved_particles(tiny, trained):
    base = dict(engine="sequential", epochs=2, levels=0)
    _run(tiny(**base, save_particles=False))
    trained.update(levels=[], rewind=0)
    _run(tiny(**base, prune_fraction=0.3))
    assert trained["levels"] == [0]


def test_no_share_dense_reads_no_other_run(tiny, tmp_path, trained):
    base = dict(engine="sequential", epochs=2, levels=0, share_dense=False)
    _run(tiny(**base))
    _run(tiny(**base, prune_fraction=0.3))
    assert trained["levels"] == [0, 0]
    # the setting is not part of the run's identity
    assert tiny(share_dense=False).run_hash() == tiny().run_hash()


def test_the_same_run_in_another_directory_is_no_source(tiny, tmp_path, trained):
    """Runs that differ only in how they train (engine, threads) are kept apart: they are
    there to be compared with each other."""
    _run(tiny(engine="sequential", epochs=2, levels=0))
    trained.update(levels=[], rewind=0)
    other = tiny(engine="sequential", epochs=2, levels=0, threads=1)
    LevelLoop(other, run_dir=tmp_path / "runs" / "copy").run()
    assert trained["levels"] == [0]
