"""Records (settings.json, level metrics.json, metrics.csv, engine.json, posthoc.json) carry
the same integrity check as weights, in every command that reads them (issue 11, item 3),
and a run directory's own paths are not read without the user's say-so."""

from __future__ import annotations

import json
import shutil

import pytest

from swamp.app.cli import main
from swamp.errors import SwampError
from swamp.loop import run
from swamp.posthoc.ensemble import ensemble_runs
from swamp.reader import RunReader
from swamp.store import RunStore, read_json, write_json
from swamp.studies.report import read_result


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run (2 particles, levels 0..1), copied fresh for each test."""
    from conftest import tiny_settings

    root = tmp_path_factory.mktemp("records")
    settings = tiny_settings(root, levels=1, epochs=1)
    return settings, run(settings).run_dir


@pytest.fixture
def copy(finished, tmp_path):
    settings, source = finished
    target = tmp_path / "run"
    shutil.copytree(source, target)
    settings = settings.resolved()
    settings.run.out = str(tmp_path)
    return settings, target


def commands(run_dir, tmp_path):
    return {
        "report": ["report", str(run_dir), "--out", str(tmp_path / "report")],
        "export": ["export", str(run_dir), "--out", str(tmp_path / "e.safetensors")],
        "lottery-pools": ["lottery-pools", str(run_dir), "--out", str(tmp_path / "pools")],
        "connectivity": ["connectivity", str(run_dir), "--points", "2",
                         "--out", str(tmp_path / "lmc")],
    }


def refused_everywhere(run_dir, tmp_path, capsys, fragment):
    """Every reading command exits 2 with one line holding `fragment`, writing nothing."""
    for name, argv in commands(run_dir, tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, (name, err)
    for out in ("report", "e.safetensors", "pools", "lmc"):
        assert not (tmp_path / out).exists(), out


def resume(settings, run_dir):
    from swamp.loop import LevelLoop

    return LevelLoop(settings, run_dir=run_dir).run()


def test_a_changed_level_record_is_refused_by_every_command(copy, tmp_path, capsys):
    settings, root = copy
    path = root / "level_1" / "metrics.json"
    row = read_json(path)
    row["test_acc"] = 0.999                       # valid JSON, a better-looking number
    write_json(path, row)
    refused_everywhere(root, tmp_path, capsys, f"{path} changed after it was written")
    with pytest.raises(SwampError, match="level_1 and every later level folder"):
        resume(settings, root)


def test_a_changed_settings_file_is_refused_by_every_command(copy, tmp_path, capsys):
    settings, root = copy
    saved = read_json(root / "settings.json")
    saved["train"]["momentum"] = 0.5              # one value flipped, still valid settings
    write_json(root / "settings.json", saved)
    refused_everywhere(root, tmp_path, capsys, "settings.json changed after it was written")
    with pytest.raises(SwampError, match="cannot be resumed"):
        resume(settings, root)


def test_a_deleted_checksums_file_is_damage_until_the_run_records_it_anew(copy, tmp_path,
                                                                          capsys):
    settings, root = copy
    (root / "checksums.json").unlink()
    refused_everywhere(root, tmp_path, capsys, "checksums.json is missing")
    messages = []
    from swamp.events import Events, Info

    events = Events()
    events.subscribe(lambda e: messages.append(e.message) if isinstance(e, Info) else None)
    from swamp.loop import LevelLoop

    LevelLoop(settings, run_dir=root, events=events).run()   # the writer rebuilds it
    assert any("was missing" in m and "as they are now" in m for m in messages)
    assert main(commands(root, tmp_path)["report"]) == 0
    # and the rebuilt record checks again: a later change is found
    row = read_json(root / "level_0" / "metrics.json")
    row["test_acc"] = 0.5
    write_json(root / "level_0" / "metrics.json", row)
    with pytest.raises(SwampError, match="changed after it was written"):
        RunReader(root)


def test_a_damaged_checksums_file_is_named_as_such(copy, tmp_path, capsys):
    _, root = copy
    sums = read_json(root / "checksums.json")
    key = "level_1/solution.safetensors"
    sums[key] = sums[key][:-1] + ("0" if sums[key][-1] != "0" else "1")
    write_json(root / "checksums.json", sums)
    refused_everywhere(root, tmp_path, capsys, "checksums.json is damaged")


def test_a_changed_or_truncated_metrics_csv_changes_no_report_and_is_rewritten(copy):
    settings, root = copy
    csv_path = root / "metrics.csv"
    original, before = csv_path.read_bytes(), read_result(root).rows
    lines = original.decode().splitlines(keepends=True)
    csv_path.write_text(lines[0] + lines[1].replace("0.", "0.9", 1))   # changed, and level 1 cut
    assert read_result(root).rows == before       # summarised from the checked level records
    resume(settings, root)                         # a finished run: nothing trained
    assert csv_path.read_bytes() == original


def test_a_changed_ensemble_table_is_refused(finished, tmp_path, capsys):
    settings, source = finished
    out = tmp_path / "ens"
    second = tmp_path / "second"
    shutil.copytree(source, second)
    ensemble_runs([source, second], out)
    assert main(["report", str(out), "--out", str(tmp_path / "r1")]) == 0
    capsys.readouterr()
    table = out / "metrics.csv"
    table.write_text(table.read_text().replace("0.", "0.9", 1))
    assert main(["report", str(out), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "metrics.csv changed after it was written" in err and err.count("\n") == 1
    assert "post-hoc command" in err


def test_a_stop_between_recording_and_publishing_a_record_is_not_damage(copy, monkeypatch):
    _, root = copy
    store = RunStore(root)
    old = store.metrics_csv.read_bytes()

    def stopped(path, data):
        raise KeyboardInterrupt                    # the checksum is recorded, the file not

    monkeypatch.setattr("swamp.store.atomic_write_bytes", stopped)
    with pytest.raises(KeyboardInterrupt):
        store.write_record(store.metrics_csv, old + b"9,0.1,0.9,0.1,0.5,1.0\n")
    monkeypatch.undo()
    assert store.metrics_csv.read_bytes() == old
    store.verify_record(store.metrics_csv)         # the old bytes are still accepted
    store.write_record(store.metrics_csv, old + b"x\n")
    store.metrics_csv.write_bytes(old)             # ... but no longer once the new are out
    with pytest.raises(SwampError, match="changed after it was written"):
        store.verify_record(store.metrics_csv)


def test_a_record_the_run_did_not_write_is_refused(copy):
    _, root = copy
    store = RunStore(root)
    (root / "engine.json").unlink()
    sums = store._checksums()
    store._write_checksums({k: v for k, v in sums.items() if k != "engine.json"})
    write_json(root / "engine.json", {"1": {"engine": "sequential"}})
    with pytest.raises(SwampError, match="no recorded checksum"):
        store.read_record(root / "engine.json")


def test_post_hoc_commands_do_not_read_a_data_directory_a_run_names(copy, tmp_path, capsys):
    """A run directory from someone else may name any path as its data; post-hoc commands
    read data files only from a directory the user gives."""
    _, root = copy
    store = RunStore(root)
    saved = read_json(store.settings_path)
    saved["data"]["dataset"], saved["data"]["data_dir"] = "cifar10", str(tmp_path / "evil")
    (tmp_path / "evil").mkdir()
    store.write_record(store.settings_path, saved)   # as if that run had been made so
    for argv in (commands(root, tmp_path)["lottery-pools"],
                 commands(root, tmp_path)["connectivity"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--data-dir" in err and "say-so" in err and err.count("\n") == 1, err
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main([*commands(root, tmp_path)["connectivity"], "--data-dir", str(mine)]) == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "evil" not in err      # the directory the user named
    assert json.loads(store.settings_path.read_text())["data"]["data_dir"].endswith("evil")


def test_a_level_record_without_its_weights_is_damage_not_a_shorter_run(copy, tmp_path,
                                                                       capsys):
    """A stop never leaves a level's record without its weights, nor a finished level
    after an unfinished one: readers refuse both instead of summarising fewer levels."""
    settings, root = copy
    (root / "level_0" / "solution.safetensors").unlink()
    refused_everywhere(root, tmp_path, capsys, "level_0 is incomplete")
    resume(settings, root)                         # the writer recomputes it
    assert (root / "level_0" / "solution.safetensors").is_file()
    assert RunReader(root).levels == [0, 1]
