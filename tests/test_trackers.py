"""`--log tensorboard|wandb|mlflow`: the tracker subscriber, read back from what it wrote."""

import builtins
import json

import pytest

from swamp.app.cli import main
from swamp.store import RunStore

TINY = ["--dataset", "synthetic", "--data-size", "200", "--model", "mlp", "--epochs", "2",
        "--batch-size", "50", "--levels", "1", "--device", "cpu", "--rewind-epochs", "0",
        "--particles", "2", "--quiet"]


def settings_of(run):
    from swamp.config import Settings

    return Settings.from_dict(json.loads((run / "settings.json").read_text()))


def _run_dir(out):
    (run,) = [p for p in out.iterdir() if p.name.startswith("swamp-")]
    return run


def test_tensorboard_event_file_holds_every_level_and_layer(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    assert main(["run", *TINY, "--out", str(out), "--log", "tensorboard"]) == 0
    run = _run_dir(out)
    rows = RunStore(run).level_metrics()
    (logdir,) = (out / "tensorboard").iterdir()
    assert logdir.name == run.name                    # one tracked run per run directory
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    test_acc = acc.Scalars("level/test_acc")
    assert [e.step for e in test_acc] == [r["level"] for r in rows]
    assert [e.value for e in test_acc] == pytest.approx([r["test_acc"] for r in rows])
    density = acc.Scalars("level/density")
    assert [e.value for e in density] == pytest.approx([r["density"] for r in rows])
    details = json.loads((run / "level_1" / "metrics.json").read_text())
    for name, layer in details["layers"].items():
        (last,) = [e for e in acc.Scalars(f"layer_density/{name}") if e.step == 1]
        assert last.value == pytest.approx(layer["density"])
    assert "level/particle_train_loss_mean" in tags
    # progress reaches the last iteration of each level
    from swamp.loop import LevelLoop

    schedule = LevelLoop(settings_of(run)).schedule
    for level in (0, 1):
        events = acc.Scalars(f"progress/level_{level}")
        assert events[-1].step == events[-1].value == schedule.total   # the last iteration
        for e in acc.Scalars(f"progress/lr_level_{level}"):
            assert e.value == pytest.approx(schedule.lr_at(e.step - 1))
    assert "engine" in acc.Tags()["tensors"] or "engine/text_summary" in acc.Tags()["tensors"]


def test_wandb_offline_run_logs_levels(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    out = tmp_path / "runs"
    logs = tmp_path / "wb"
    assert main(["run", *TINY, "--out", str(out), "--log", "wandb", "--log-dir",
                 str(logs)]) == 0
    wandb.teardown()          # waits for W&B's service to write the run out
    rows = RunStore(_run_dir(out)).level_metrics()
    (offline,) = (logs / "wandb").glob("offline-run-*")
    # The offline run's transaction log (protobuf records, uncompressed) holds each logged
    # key and value as JSON text; wandb 0.31 ships no reader for it.
    (log,) = offline.glob("*.wandb")
    data = log.read_bytes()
    assert b"level/test_acc" in data and b"layer_density/" in data
    for row in rows:
        assert json.dumps(row["test_acc"]).encode() in data
    assert b"method.method" in data                 # the settings are the run's config


def test_mlflow_file_store_logs_levels(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "runs"
    logs = tmp_path / "mlruns"
    assert main(["run", *TINY, "--out", str(out), "--log", "mlflow", "--log-dir",
                 str(logs)]) == 0
    rows = RunStore(_run_dir(out)).level_metrics()
    client = mlflow.MlflowClient(tracking_uri=logs.absolute().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("swamp").experiment_id])
    history = client.get_metric_history(run.info.run_id, "level.test_acc")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [r["test_acc"] for r in rows])
    assert run.data.params["method.method"] == "swamp"


@pytest.mark.parametrize("tracker, module", [("tensorboard", "torch.utils.tensorboard"),
                                             ("wandb", "wandb"), ("mlflow", "mlflow")])
def test_missing_tracker_is_one_line_before_anything_is_written(tmp_path, monkeypatch,
                                                                 capsys, tracker, module):
    real_import = builtins.__import__

    def no_tracker(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tracker)
    out = tmp_path / "runs"
    assert main(["run", *TINY, "--out", str(out), "--log", tracker]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"swamp: error: --log {tracker} needs the extra: pip install "
                   f"'swamp[{tracker}]'"]
    assert not out.exists()


def test_tracker_follows_each_run_of_a_compare(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "imp,swamp", "--seeds", "0", *TINY,
                 "--out", str(out), "--log", "tensorboard"]) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith("."))
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == runs
