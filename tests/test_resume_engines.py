"""Resuming keeps the run as it began: the engine record, multi-process resume, progress
counts, and the files a resume repairs or refuses."""

import shutil
import stat

import pytest
import torch
from rich.console import Console

from swamp.app.cli import main
from swamp.app.display import RunDisplay
from swamp.events import Events
from swamp.loop import LevelLoop, run
from swamp.store import RunStore, read_json

FLAGS = ["run", "--dataset", "synthetic", "--data-size", "320", "--model", "mlp", "--epochs",
         "2", "--batch-size", "64", "--levels", "2", "--particles", "3", "--device", "cpu",
         "--lr", "0.05"]


def same_levels(a, b):
    ra, rb = RunStore(a).level_metrics(), RunStore(b).level_metrics()
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert x["test_acc"] == y["test_acc"] and x["test_nll"] == y["test_nll"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_a_multi_process_run_resumes_after_an_interruption(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*FLAGS, "--processes", "2", "--run-dir", str(whole), "--quiet"]) == 0
    assert main([*FLAGS, "--processes", "2", "--run-dir", str(cut), "--quiet"]) == 0
    shutil.rmtree(cut / "level_2")                 # as if stopped during level 2
    (cut / "level_1" / "metrics.json").unlink()    # ... or while writing level 1
    # loaded states come back with sorted keys: the ranks must still agree on the model
    assert main([*FLAGS, "--processes", "2", "--run-dir", str(cut), "--quiet"]) == 0
    same_levels(whole, cut)


def test_auto_records_its_choice_and_a_resume_follows_it(tiny, tmp_path, monkeypatch):
    import swamp.engines.auto as auto

    # what auto picks is a timing; on a loaded machine processes can win even a tiny run
    monkeypatch.setattr(auto, "step_seconds", lambda ctx, threads: 1e-6)
    settings = tiny(engine="auto", levels=1)
    first = run(settings)
    store = RunStore(first.run_dir)
    record = read_json(store.engine_path)
    assert record == {"2": {"engine": "sequential", "threads": 0}}   # a tiny run: sequential
    metrics = read_json(store.level_metrics_path(1))
    assert metrics["engine"].startswith("auto -> sequential")

    # a record from an earlier invocation is followed, not decided again
    store.write_record(store.engine_path, {"2": {"engine": "sequential", "threads": 1}})
    shutil.rmtree(store.level_dir(1))
    loop = LevelLoop(settings)
    loop.run()
    assert loop.engine.description == "auto -> sequential, 1 thread(s)"
    # explicit threads win over the record
    shutil.rmtree(store.level_dir(1))
    loop = LevelLoop(tiny(engine="auto", levels=1, threads=2))
    loop.run()
    assert loop.engine.description == "auto -> sequential, 2 thread(s)"


def test_progress_counts_the_steps_of_the_level_from_the_rewind_point(tiny):
    seen = []

    class Recorder(RunDisplay):
        def particle_progress(self, index, iteration):
            seen.append((index, iteration - self._first, self._last - self._first))
            super().particle_progress(index, iteration)

    console = Console(record=True, force_terminal=False, width=120)
    events = Events()
    events.subscribe(Recorder(console))
    loop = LevelLoop(tiny(levels=1, rewind_epochs=1.0, epochs=3), events=events)
    loop.run()
    assert loop.schedule.rewind > 0
    (total,) = {total for _, _, total in seen}
    assert total == loop.schedule.total - loop.schedule.rewind
    assert min(done for _, done, _ in seen) >= 0 and max(done for _, done, _ in seen) == total
    # without a terminal, one line per trained particle and level
    assert console.export_text().count("trained (") == 2 * 2


def test_resume_rebuilds_a_missing_metrics_csv_and_files_are_readable(tiny):
    result = run(tiny(levels=1))
    store = RunStore(result.run_dir)
    before = store.metrics_csv.read_text()
    store.metrics_csv.unlink()
    run(tiny(levels=1))                               # nothing left to train
    assert store.metrics_csv.read_text() == before
    mode = stat.S_IMODE(store.solution_path(0).stat().st_mode)
    assert mode & stat.S_IRGRP                        # not private like a mkstemp file


def test_a_corrupted_settings_file_is_not_recomputable(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main([*FLAGS, "--levels", "0", "--run-dir", str(run_dir), "--quiet"]) == 0
    (run_dir / "settings.json").write_text("{ broken")
    assert main([*FLAGS, "--levels", "0", "--run-dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot be resumed" in err and "another --out" in err and err.count("\n") == 1


def _api_inputs(shift=0, hidden=16):
    import swamp

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 3))
    return model, swamp.from_tensors(train=(x[:250], (y[:250] + shift) % 3), test=(x[250:], y[250:]))


def test_the_python_api_never_reuses_a_run_of_another_model_or_data(tmp_path):
    from swamp.config import Settings
    from swamp.errors import SwampError
    from swamp.reader import load_run

    settings = Settings.from_dict({"levels": 1, "epochs": 2, "particles": 2, "batch_size": 50,
                                   "device": "cpu", "rewind_epochs": 0, "out": str(tmp_path)})
    model, data = _api_inputs()
    first = run(settings, model=model, data=data)
    assert run(settings, model=model, data=data).run_dir == first.run_dir   # same inputs: resume
    other_data = run(settings, model=model, data=_api_inputs(shift=1)[1])
    other_model = run(settings, model=_api_inputs(hidden=32)[0], data=data)
    assert len({first.run_dir, other_data.run_dir, other_model.run_dir}) == 3
    # an explicit run directory with other inputs is refused, and nothing is written
    before = sorted(p.name for p in first.run_dir.rglob("*"))
    with pytest.raises(SwampError, match="another data"):
        run(settings, model=model, data=_api_inputs(shift=1)[1], run_dir=first.run_dir)
    with pytest.raises(SwampError, match="another model"):
        run(settings, model=_api_inputs(hidden=32)[0], data=data, run_dir=first.run_dir)
    assert sorted(p.name for p in first.run_dir.rglob("*")) == before
    # post-hoc tools need the architecture only: a fresh instance (other weights) loads it
    fresh = _api_inputs()[0]
    torch.nn.init.zeros_(fresh[0].weight)
    loaded = load_run(first.run_dir, model=fresh, data=data)
    assert loaded.levels == [0, 1]


def test_a_file_damaged_after_it_was_written_is_found_on_resume(tiny):
    from swamp.errors import SwampError
    from swamp.reader import load_run

    settings = tiny(levels=2)
    store = RunStore(run(settings).run_dir)
    recorded = read_json(store.checksums_path)
    assert {"init.safetensors", "rewind.safetensors", "level_1/mask.safetensors",
            "level_1/solution.safetensors", "level_1/particle_0.safetensors"} <= set(recorded)
    # (all but checksums.json's own digest and metrics.csv, which a resume rewrites)
    assert store.verify_checksums() == len(set(recorded) - {"__self__", "metrics.csv"})
    store.particle_path(0, 1).unlink()            # optional files may be deleted
    run(settings)

    path = store.solution_path(1)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01                              # one flipped bit in a weight: still loads
    path.write_bytes(bytes(data))
    before = {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.name != "run.lock"}
    with pytest.raises(SwampError, match="level_1.solution.safetensors changed after it was "
                                         "written.*delete .*level_1 and every later level"):
        run(settings)
    with pytest.raises(SwampError, match="changed after it was written"):
        load_run(store.root)
    assert {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.name != "run.lock"} == before


def test_a_stop_inside_a_level_keeps_the_particles_already_trained(tiny, tmp_path,
                                                                   monkeypatch):
    import swamp.engines.sequential as sequential

    settings = tiny(levels=2, particles=3, engine="sequential")
    reference = run(settings, run_dir=tmp_path / "whole")

    trained, stops = [], [True]
    real = sequential.train_group

    def stop_at_level_1_particle_2(replicas, task, ctx, jobs, progress=None, info=None):
        (job,) = jobs
        if (task.level, job.index) == (1, 2) and stops:
            stops.pop()
            raise KeyboardInterrupt                  # as a Ctrl-C during that particle, once
        results = real(replicas, task, ctx, jobs, progress, info)
        trained.append((task.level, job.index))
        return results

    monkeypatch.setattr(sequential, "train_group", stop_at_level_1_particle_2)
    with pytest.raises(KeyboardInterrupt):
        run(settings, run_dir=tmp_path / "cut")
    store = RunStore(tmp_path / "cut")
    # the finished particles of the level in progress are kept as finished checkpoints
    assert [p.name for p in store.checkpoint_paths(1)] == ["checkpoint_0.safetensors",
                                                           "checkpoint_1.safetensors"]
    result = run(settings, run_dir=tmp_path / "cut")
    same_levels(reference.run_dir, result.run_dir)
    for level in range(3):                          # the same weights, bit for bit
        for name, t in reference.solution(level).items():
            assert torch.equal(t, result.solution(level)[name]), (level, name)
    assert store.checkpoint_paths(1) == []          # cleaned up once the level finished
