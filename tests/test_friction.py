"""What a new user meets first (issue 14): a default model per dataset, "did you mean",
`swamp show`, shell completion, help texts, progress from Python."""

import io
import json
import shutil
import subprocess

import pytest

import swamp
from swamp.app.cli import build_parser, main
from swamp.config import Settings
from swamp.errors import SwampError, did_you_mean
from swamp.events import Events
from swamp.progress import HEADER, TextProgress, level_row

TINY = ["--dataset", "synthetic", "--data-size", "200", "--model", "mlp", "--epochs", "2",
        "--batch-size", "50", "--levels", "1", "--device", "cpu", "--rewind-epochs", "0",
        "--particles", "2"]


# ---- a default model per dataset ------------------------------------------------------
@pytest.mark.parametrize("dataset, model", [("mnist1d", "conv1d"), ("synthetic", "conv1d"),
                                            ("digits", "mlp"), ("mnist", "mlp"),
                                            ("cifar10", "resnet20"), ("CIFAR-100", "resnet20"),
                                            ("my-tensors", "conv1d"),
                                            ("tiny-imagenet", "resnet18"),
                                            ("imagenet", "resnet18")])
def test_the_default_model_is_the_datasets(dataset, model):
    assert Settings.from_dict({"dataset": dataset}).resolved().model.model == model
    # a model given is kept
    assert Settings.from_dict({"dataset": dataset, "model": "vgg11"}).resolved().model.model \
        == "vgg11"


def test_default_model_keeps_run_names():
    """Run names made when the model default was conv1d are found again: the default model
    is in no hash, and a dataset's default equals naming that model."""
    assert Settings().run_hash() == Settings.from_dict({"model": "conv1d"}).run_hash()
    assert Settings.from_dict({"dataset": "digits"}).run_hash() == \
        Settings.from_dict({"dataset": "digits", "model": "mlp"}).run_hash()
    assert Settings.from_dict({"dataset": "digits"}).run_hash() != \
        Settings.from_dict({"dataset": "digits", "model": "conv1d"}).run_hash()


def test_digits_runs_with_default_settings_but_size(tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "--dataset", "digits", "--epochs", "2", "--levels", "0",
                 "--particles", "1", "--method", "imp", "--device", "cpu", "--out", str(out),
                 "--quiet"]) == 0
    (run,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    saved = json.loads((run / "settings.json").read_text())
    assert saved["model"]["model"] == "mlp"


# ---- did you mean ---------------------------------------------------------------------
def test_did_you_mean_picks_the_close_name_or_none():
    assert did_you_mean("swmp", ["imp", "swamp", "sms"]) == " did you mean 'swamp'?"
    assert did_you_mean("SWAMP", ["imp", "swamp"]) == " did you mean 'swamp'?"
    assert did_you_mean("resnet", ["mlp", "conv1d"]) == ""


@pytest.mark.parametrize("argv, expected", [
    (["run", "--prune-fracton", "0.3"],
     "unrecognized arguments: --prune-fracton 0.3; did you mean '--prune-fraction'? "
     "see `swamp run --help`"),
    (["rn"], "did you mean 'run'? see `swamp --help`"),
    (["run", "--method", "swmp"], "unknown method 'swmp'; did you mean 'swamp'? known: imp"),
    (["run", "--dataset", "digts"], "unknown dataset 'digts'; did you mean 'digits'?"),
    (["run", "--model", "mpl"], "unknown model 'mpl'; did you mean 'mlp'?"),
    (["compare", "--methods", "imp,lotery-pools"], "did you mean 'lottery-pools'?"),
    (["compare", "--methods", "imp", "--launcher", "submitt"], "did you mean 'submitit'?"),
    (["run", "--bogus", "1"], "unrecognized arguments: --bogus 1 (see `swamp run --help`)"),
])
def test_a_misspelt_name_gets_one_line_with_the_closest_name(tmp_path, capsys, argv,
                                                               expected):
    argv = [*argv, "--out", str(tmp_path / "out")] if argv[0] != "rn" else argv
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("swamp: error: ") and expected in line
    assert not (tmp_path / "out").exists()


def test_a_misspelt_setting_in_a_file_gets_the_closest_name(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[train]\nmomentun = 0.5\n")
    with pytest.raises(SwampError, match="did you mean 'train.momentum'"):
        Settings.from_file(path)
    path.write_text("prune_fracton = 0.3\n")
    with pytest.raises(SwampError, match="did you mean 'prune_fraction'"):
        Settings.from_file(path)


# ---- help texts -----------------------------------------------------------------------
def _help(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices
               and command in a.choices).choices[command]
    return sub.format_help()


def test_compare_help_lists_no_flag_that_does_nothing_there():
    text = _help("compare")
    assert "--methods" in text and "--seeds" in text and "--print-commands" in text
    assert "--method " not in text and "--method\n" not in text
    assert "--seed " not in text and "--seed\n" not in text
    assert "--swa " not in text and "--no-swa" not in text     # each method's own


def test_compare_names_its_own_flags_for_method_and_seed(tmp_path, capsys):
    assert main(["compare", "--methods", "imp", "--method", "imp", "--out",
                 str(tmp_path)]) == 2
    assert "compare takes --methods (a list), not --method" in capsys.readouterr().err


def test_threads_help_says_what_the_count_follows():
    text = " ".join(_help("run").split())
    start = text.rindex("--threads THREADS")   # the help, not the usage line
    threads = text[start:start + 400]
    assert "free cores" not in threads and "not following the load" in threads


# ---- swamp show -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("show") / "runs"
    assert main(["run", *TINY, "--lr", "0.05", "--out", str(out), "--quiet"]) == 0
    (run,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return run


def test_show_prints_settings_table_files_and_integrity(finished_run, capsys, tmp_path):
    from swamp.store import RunStore

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    rows = RunStore(run).level_metrics()
    assert HEADER in out
    for row in rows:
        assert level_row(row) in out                 # the table `swamp run` printed
    assert "lr=0.05" in out and "status: finished: levels 0..1" in out
    assert "integrity: ok:" in out
    assert "level_0/" in out and "settings.json" in out
    # a damaged file: named, and the exit status says so
    (run / "level_1" / "solution.safetensors").write_bytes(b"broken")
    assert main(["show", str(run)]) == 1
    out = capsys.readouterr().out
    assert "integrity: DAMAGED:" in out and "solution.safetensors" in out


def test_show_json_and_a_stopped_run(finished_run, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "level_1")
    assert main(["show", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["level"] for r in info["levels"]] == [0]
    assert info["status"].startswith("stopped after level 0 of 1")
    assert info["changed"]["train.lr"] == 0.05 and not info["damaged"]


def test_show_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 2
    assert "is not a swamp run directory" in capsys.readouterr().err


# ---- shell completion -----------------------------------------------------------------
def _complete(script, words, tmp_path):
    """COMPREPLY of the script for the command line `words` (the last is being typed)."""
    program = (f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n_swamp\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    path = tmp_path / "complete.sh"
    path.write_text(program)
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    return out.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_knows_commands_flags_and_names(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "show" in _complete(script, ["swamp", "sh"], tmp_path)
    assert _complete(script, ["swamp", "run", "--prune-f"], tmp_path) == ["--prune-fraction"]
    assert set(_complete(script, ["swamp", "run", "--method", "swamp"], tmp_path)) == \
        {"swamp", "swamp+"}
    assert "digits" in _complete(script, ["swamp", "run", "--dataset", ""], tmp_path)
    assert _complete(script, ["swamp", "compare", "--print-c"], tmp_path) == \
        ["--print-commands"]
    assert _complete(script, ["swamp", "completion", "z"], tmp_path) == ["zsh"]
    (tmp_path / "run-a").mkdir()
    assert _complete(script, ["swamp", "show", "run-"], tmp_path) == ["run-a"]


def test_zsh_completion_is_the_bash_script_through_bashcompinit(capsys):
    assert main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert main(["completion", "bash"]) == 0
    bash = capsys.readouterr().out
    assert "bashcompinit" in zsh and zsh.endswith(bash)
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-c", zsh], check=True)


# ---- progress from Python -------------------------------------------------------------
def test_python_run_prints_progress_when_asked(tiny, capsys):
    events = Events()
    seen = []
    events.subscribe(seen.append)
    result = swamp.run(tiny(levels=1, particles=2), events=events, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines.count(HEADER) == 1
    for row in result.levels:
        assert level_row(row) in lines
    assert sum("trained (" in line for line in lines) == 2 * 2   # particles x levels
    assert lines[-1].startswith("done: level 1 at 20.00% sparsity")
    # the caller's bus is handed back as it was: one subscriber, its own
    n = len(seen)
    events.info("after")
    assert len(seen) == n + 1 and len(events._subscribers) == 1


def test_python_run_is_silent_by_default_off_a_terminal(tiny, capsys):
    swamp.run(tiny(levels=0, particles=1, method="imp"))
    assert capsys.readouterr() == ("", "")


def test_python_run_shows_progress_by_default_on_a_terminal(tiny, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    swamp.run(tiny(levels=0, particles=1, method="imp"))
    assert HEADER in capsys.readouterr().err


def test_text_progress_reports_a_long_level_on_the_way():
    from swamp.events import LevelStarted, ParticleProgress

    stream = io.StringIO()
    progress = TextProgress(stream, every_s=0.0)
    progress(LevelStarted(3, 2, 10, 110))
    progress(ParticleProgress(3, 0, 60))
    progress(ParticleProgress(3, 1, 60))        # only the first particle is followed
    progress(ParticleProgress(3, 0, 110))
    assert stream.getvalue().splitlines()[0] == "  level 3 · particle 1/2: 50/100 iterations (50%)"
    assert "level 3 · particle 1/2 trained" in stream.getvalue().splitlines()[1]


# ---- --steps: a budget in iterations ----------------------------------------------------
def test_steps_replace_epochs_as_the_training_length(tiny):
    from swamp.events import LevelStarted
    from swamp.train.schedule import Schedule

    s = tiny(steps=7, epochs=2).resolved()          # 320 * 0.9 // 64 = 4 iterations/epoch
    schedule = Schedule.build(s.train, 288, True)
    assert schedule.total == 7 and schedule.steps_per_epoch == 4
    # SWA from 75% of the budget, averaged at epoch ends and at the last iteration
    assert schedule.swa_start == 5
    assert [t for t in range(7) if schedule.averages_after(t)] == [6]
    events = Events()
    seen = []
    events.subscribe(seen.append)
    from swamp.loop import LevelLoop

    loop = LevelLoop(tiny(steps=7, levels=1, particles=2), events=events)
    result = loop.run()
    assert loop.schedule.total == 7
    assert {e.last_iteration for e in seen if isinstance(e, LevelStarted)} == {7}
    details = json.loads((result.run_dir / "level_0" / "metrics.json").read_text())
    averaged = sum(loop.schedule.averages_after(t) for t in range(7))
    assert details["swa_snapshots"] == [averaged, averaged] and averaged >= 1
    # a different budget is a different run
    assert tiny(steps=7).run_hash() != tiny(steps=8).run_hash() != tiny().run_hash()


@pytest.mark.parametrize("values, message", [
    ({"steps": 0}, "`steps` must be at least 1"),
    ({"steps": 3, "rewind_iters": 3}, "the rewind point (3 iterations) is not before"),
])
def test_bad_steps_are_one_line(tiny, values, message):
    from swamp.loop import LevelLoop

    with pytest.raises(SwampError) as err:
        LevelLoop(tiny(**values))
    assert message in str(err.value)


def test_steps_flag_and_short_budget_with_rewind_in_iterations(tmp_path):
    out = tmp_path / "runs"
    assert main(["run", *TINY, "--steps", "5", "--rewind-iters", "1", "--out", str(out),
                 "--quiet"]) == 0
    (run,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert json.loads((run / "settings.json").read_text())["train"]["steps"] == 5


# ---- a short run works with the default rewind point -------------------------------------
def test_epochs_1_adapts_the_default_rewind_point_and_says_so(tiny):
    from swamp.loop import LevelLoop

    events = Events()
    lines = []
    events.subscribe(lambda e: lines.append(getattr(e, "message", None)))
    loop = LevelLoop(tiny(epochs=1, rewind_epochs=1.0, levels=0, particles=1, method="imp",
                          steps=None), events=events)
    assert loop.schedule.rewind == int(loop.schedule.total * 0.1) < loop.schedule.total
    loop.run()
    assert any(m and "default rewind point" in m and "short training" in m for m in lines)


def test_an_explicit_rewind_point_after_training_is_still_refused(tiny):
    from swamp.loop import LevelLoop

    with pytest.raises(SwampError, match="`rewind_epochs` 2.0 is not before the end"):
        LevelLoop(tiny(epochs=2, rewind_epochs=2.0))
    with pytest.raises(SwampError, match="not before the end of training"):
        LevelLoop(tiny(epochs=1, rewind_iters=100))


def test_steps_alone_work_with_the_default_rewind_point(tmp_path):
    out = tmp_path / "runs"
    flags = [f for f in TINY if f not in ("--rewind-epochs", "0")]
    assert main(["run", *flags, "--steps", "3", "--out", str(out), "--quiet"]) == 0
