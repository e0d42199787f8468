"""Shared tiny settings: every whole-pipeline test runs in seconds on 2 cores."""

from __future__ import annotations

import pytest
import torch

from swamp.config import Settings
from swamp.engines import SequentialEngine

torch.set_num_threads(1)


def tiny_settings(tmp_path, **overrides) -> Settings:
    values = dict(dataset="synthetic", data_size=320, model="mlp", epochs=2, batch_size=64,
                  levels=2, method="swamp", particles=2, out=str(tmp_path / "runs"),
                  device="cpu", lr=0.05, rewind_epochs=0.0)
    values.update(overrides)
    return Settings.from_dict(values)


@pytest.fixture
def tiny(tmp_path):
    return lambda **kw: tiny_settings(tmp_path, **kw)


class RecordingEngine(SequentialEngine):
    """The sequential engine, recording each level's task; raises KeyboardInterrupt (as a
    Ctrl-C would) when asked to train level `fail_at`."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.tasks = []
        self.fail_at = fail_at

    def train_particles(self, task, ctx, progress=None):
        if task.level == self.fail_at:
            raise KeyboardInterrupt
        self.tasks.append(task)
        return super().train_particles(task, ctx, progress)


@pytest.fixture
def trainings(monkeypatch):
    """(method, level) of every level trained, whatever the engine (every level goes
    through LevelLoop.run_level)."""
    from swamp.loop import LevelLoop

    calls = []
    original = LevelLoop.run_level

    def counting(self, level, start, mask):
        calls.append((self.settings.method.method, level))
        return original(self, level, start, mask)

    monkeypatch.setattr(LevelLoop, "run_level", counting)
    return calls
