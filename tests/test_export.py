"""Sparse export: an exact round trip, a smaller file, level choice on validation only."""

import json

import pytest
import torch

import swamp
from swamp.app.cli import main
from swamp.export import _encode, choose_level, export_level, load_exported
from swamp.loop import run
from swamp.core.masks import Mask
from swamp.store import RunStore, load_state, read_json


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import tiny_settings

    tmp = tmp_path_factory.mktemp("export")
    # prune 60% per level: level 3 sits at 6.4% density, where some layers use indices
    return run(tiny_settings(tmp, levels=3, prune_fraction=0.6, epochs=1)).run_dir


@pytest.mark.parametrize("density,encoding", [(0.5, "bitmap"), (0.01, "indices")])
def test_encoding_round_trips_values_and_mask_exactly(density, encoding):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 50, generator=g)
    keep = torch.rand(64, 50, generator=g) < density
    weight[tuple(keep.nonzero()[0])] = 0.0      # a kept weight that is 0.0 stays kept
    tensors, stats = _encode("w", weight * keep, keep, torch.float32)
    assert stats.encoding == encoding and stats.nnz == int(keep.sum())

    class Reader:   # what safe_open hands `_decode`
        def get_tensor(self, key):
            return tensors[key]

    from swamp.export import _decode

    dense, kept = _decode("w", {"shape": [64, 50], "encoding": encoding}, Reader())
    assert torch.equal(kept, keep)
    assert torch.equal(dense, weight * keep)


def test_export_then_load_gives_the_solution_and_mask(finished_run, tmp_path):
    store = RunStore(finished_run)
    out = tmp_path / "w.safetensors"
    summary = export_level(finished_run, out, level=3)
    state, mask, source = swamp.load_exported(out)
    solution = load_state(store.solution_path(3))
    assert state.keys() == solution.keys()
    for name in solution:
        assert torch.equal(state[name], solution[name]), name
    assert mask == Mask.load(store.mask_path(3))
    assert source["level"] == 3 and source["method"] == "swamp"
    assert source["test_acc"] == read_json(store.level_metrics_path(3))["test_acc"]
    # at 6.4% density the file is well under the dense solution's size
    assert summary.file_bytes < 0.3 * summary.dense_bytes
    assert {layer.encoding for layer in summary.layers} <= {"bitmap", "indices"}
    assert summary.density == pytest.approx(mask.density)


def test_half_precision_export_halves_the_values(finished_run, tmp_path):
    full = export_level(finished_run, tmp_path / "f.safetensors", level=1)
    half = export_level(finished_run, tmp_path / "h.safetensors", level=1, dtype="float16")
    assert half.file_bytes < 0.6 * full.file_bytes
    state, _, _ = load_exported(tmp_path / "h.safetensors")
    ref, _, _ = load_exported(tmp_path / "f.safetensors")
    for name, t in ref.items():
        if t.is_floating_point():
            assert state[name].dtype == torch.float16
            assert torch.allclose(state[name].float(), t, atol=1e-2, rtol=1e-2)


def test_level_choice_reads_validation_accuracy_only(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    store = RunStore(copy)
    val = {0: 0.90, 1: 0.895, 2: 0.88, 3: 0.70}
    for level, acc in val.items():
        path = store.level_metrics_path(level)
        row = read_json(path)
        row["val_acc"], row["test_acc"] = acc, 1.0 - acc   # test says the opposite
        store.write_record(path, row)
    assert choose_level(store, max_val_drop=0.01) == 1
    assert choose_level(store, max_val_drop=0.025) == 2
    assert choose_level(store, max_val_drop=0.0) == 0
    assert choose_level(store) == 3                       # default: the last level
    assert choose_level(store, level=2) == 2


def test_cli_export_prints_the_table_and_refuses_bad_input(finished_run, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    assert main(["export", str(finished_run), "--level", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "density" in printed and str(out) in printed
    assert json.loads(json.dumps(load_exported(out)[2]))["level"] == 2

    assert main(["export", str(finished_run), "--level", "7"]) == 2
    assert "not finished" in capsys.readouterr().err
    assert main(["export", str(tmp_path)]) == 2
    assert "not a swamp run directory" in capsys.readouterr().err
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    assert main(["export", str(finished_run), "--out", str(other)]) == 2
    assert "not a swamp export" in capsys.readouterr().err
    assert other.read_text() == "keep me"

    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(out.read_bytes()[:-100])
    with pytest.raises(swamp.SwampError, match="corrupted"):
        load_exported(damaged)


def test_export_refuses_a_solution_changed_after_it_was_written(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    path = RunStore(copy).solution_path(2)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(swamp.SwampError, match="changed after it was written"):
        export_level(copy, tmp_path / "x.safetensors", level=2)
    assert not (tmp_path / "x.safetensors").exists()


def test_an_export_records_no_private_paths(tmp_path):
    import json

    from safetensors import safe_open

    from conftest import tiny_settings
    from swamp.export import export_level
    from swamp.loop import run

    settings = tiny_settings(tmp_path / "home" / "alice", levels=1)
    settings.data.data_dir = str(tmp_path / "home" / "alice" / "data")
    result = run(settings)
    summary = export_level(result.run_dir, tmp_path / "shared.safetensors")
    with safe_open(str(summary.path), framework="pt") as f:
        header = json.dumps(f.metadata())
    assert "alice" not in header and str(tmp_path) not in header
    source = json.loads(json.loads(header)["source"])
    assert source["run"] == result.run_dir.name
    assert source["settings"]["train"]["lr"] == settings.train.lr
