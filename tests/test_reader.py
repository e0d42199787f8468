"""RunReader: a finished run read back without a level loop, an engine or a process group."""

import pytest
import torch

from swamp import loop as loop_module
from swamp.errors import SwampError
from swamp.loop import run
from swamp.reader import RunReader
from swamp.store import RunStore


def test_a_finished_run_is_read_without_training_machinery(tiny, monkeypatch):
    result = run(tiny(levels=1, particles=2))

    def refuse(*args, **kwargs):
        raise AssertionError("a reader must not build training machinery")

    monkeypatch.setattr(loop_module.LevelLoop, "__init__", refuse)
    monkeypatch.setattr("swamp.engines.make_engine", refuse)
    reader = RunReader(result.run_dir)
    assert reader.levels == [0, 1] and reader.posthoc == {}
    assert reader.settings.method.particles == 2 and reader.label == "swamp"
    assert reader.metrics(1)["level"] == 1
    for level in reader.levels:
        assert reader.mask(level).density == pytest.approx(result.levels[level]["density"])
    # the model and data are those of the run: its solution scores what the run reported
    from swamp.evaluation import evaluate

    reader.model.load_state_dict(reader.solution(1))
    assert evaluate(reader.model, reader.data.test).acc == pytest.approx(
        result.levels[1]["test_acc"])
    assert set(reader.particle(1, 0)) == set(reader.solution(1))


def test_a_damaged_file_is_found_when_the_run_is_opened(tiny):
    result = run(tiny(levels=0, particles=1, method="imp"))
    path = RunStore(result.run_dir).solution_path(0)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SwampError, match="checksum mismatch"):
        RunReader(result.run_dir)


def test_a_run_without_a_finished_level_is_refused(tmp_path):
    with pytest.raises(SwampError, match="not a swamp run directory"):
        RunReader(tmp_path)


def test_a_python_api_model_is_needed_only_to_evaluate(tiny):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 10))
    from swamp.data import load_dataset

    data = load_dataset("synthetic", size=320)
    result = run(tiny(levels=0, particles=1, method="imp", model="conv1d"), model=model,
                 data=data)
    reader = RunReader(result.run_dir)
    assert set(reader.solution(0)) == set(model.state_dict())   # read without the model
    with pytest.raises(SwampError, match="pass the same model= and data="):
        reader.model
    assert RunReader(result.run_dir, model=model, data=data).model is not model
