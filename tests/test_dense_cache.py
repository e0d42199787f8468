"""Dense work done once (issue 14): the start (init + rewind point) and level 0 are shared by
runs that differ only in settings they do not depend on; checked, and invalidated by any
setting they do depend on."""

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


def test_a_run_that_prunes_differently_reuses_start_and_level_0(tiny, tmp_path, trained):
    base = dict(engine="sequential", rewind_epochs=0.5, epochs=2, levels=1)
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
    assert not (tmp_path / "alone" / ".dense").exists()
    for level in range(3):
        _same(fresh.solution(level), other.solution(level))
        assert fresh.mask(level) == other.mask(level)


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


def test_a_damaged_entry_is_not_used_and_is_replaced(tiny, tmp_path, trained):
    base = dict(engine="sequential", epochs=2, levels=0)
    first, _ = _run(tiny(**base))
    (entry,) = (tmp_path / "runs" / ".dense").glob("level0-*")
    (entry / "particle_0.safetensors").write_bytes(b"damaged")
    trained.update(levels=[], rewind=0)
    again, messages = _run(tiny(**base, prune_fraction=0.3))
    assert trained["levels"] == [0]                          # trained, not read
    assert any("checksum mismatch" in m for m in messages)
    _same(first.solution(0), again.solution(0))
    trained.update(levels=[])
    _run(tiny(**base, prune_fraction=0.4))                   # the replaced entry is used
    assert trained["levels"] == []


def test_no_share_dense_writes_and_reads_no_cache(tiny, tmp_path, trained):
    base = dict(engine="sequential", epochs=2, levels=0, share_dense=False)
    _run(tiny(**base))
    _run(tiny(**base, prune_fraction=0.3))
    assert trained["levels"] == [0, 0]
    assert not (tmp_path / "runs" / ".dense").exists()
    # the setting is not part of the run's identity
    assert tiny(share_dense=False).run_hash() == tiny().run_hash()
