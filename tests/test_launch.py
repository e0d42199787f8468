"""Sweeps beyond one machine: `swamp compare --print-commands` and `--launcher submitit`."""

import builtins
import shlex
import shutil

import pytest

from swamp.app.cli import build_parser, main
from swamp.app.flags import settings_from_args
from swamp.config import Settings
from swamp.studies.compare import method_settings
from swamp.studies.launch import settings_flags

TINY = ["--dataset", "synthetic", "--data-size", "200", "--model", "mlp", "--epochs", "2",
        "--batch-size", "50", "--levels", "1", "--device", "cpu", "--rewind-epochs", "0",
        "--particles", "2"]


def _parse(line: str):
    words = shlex.split(line)
    assert words[:2] == ["swamp", "run"]
    return build_parser().parse_args(words[1:])


def test_print_commands_are_the_compare_runs_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "imp,swamp,lottery-pools", "--seeds", "0,1", *TINY,
            "--lr", "0.05", "--out", str(out)]
    assert main([*argv, "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert not out.exists()                       # nothing trained, nothing written
    base = settings_from_args(build_parser().parse_args(argv))
    expected = {(m, seed): method_settings(base, m, seed) for m in ("imp", "swamp")
                for seed in (0, 1)}
    assert len(lines) == len(expected)            # lottery-pools trains no run of its own
    seen = {}
    for line in lines:
        args = _parse(line)
        s = settings_from_args(args)
        key = (s.method.method, s.run.seed)
        seen[key] = s
        assert s.run_hash() == expected[key].run_hash()
        assert args.run_dir == str((out / "runs" / expected[key].run_name()).absolute())
    assert seen.keys() == expected.keys()


def test_printed_commands_run_and_compare_then_only_reports(tmp_path, capsys, trainings):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "imp,lottery-pools", "--seeds", "0", *TINY,
            "--out", str(out), "--quiet"]
    assert main([*argv, "--print-commands"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert main(shlex.split(line)[1:]) == 0        # what a scheduler would run
    assert main(shlex.split(line)[1:]) == 0        # run twice: idempotent, nothing retrained
    assert trainings == [("imp", 0), ("imp", 1)]
    trainings.clear()
    assert main(argv) == 0
    assert trainings == []                        # the compare finds its run finished
    assert (out / "report.md").is_file()
    assert "lottery-pools" in (out / "summary.csv").read_text()


@pytest.mark.parametrize("values", [
    {"lr": 0.0123456789, "augment": False, "include": ["0.weight", "3.*"], "swa_lr": 0.01,
     "clip_grad_norm": 1.5, "rewind_optimizer": True, "threads": 2},
    {"method": "mask-vote", "vote_share": 1 / 3, "scorer": "lamp", "seed": 7,
     "engine": "sequential", "data_dir": "/tmp/some dir"},
    {"model": "mlp", "hidden": [64, 32], "residual": True, "steps": 40},
])
def test_settings_flags_round_trip_through_the_run_parser(values):
    s = Settings.from_dict(values)
    args = build_parser().parse_args(["run", *settings_flags(s)])
    assert settings_from_args(args).to_dict() == s.to_dict()


def test_submitit_local_executor_runs_the_study(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "imp", "--seeds", "0", *TINY, "--out", str(out),
            "--launcher", "submitit", "--cluster", "local", "--time-min", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "submitted 1 job(s) through submitit (local)" in printed
    (run,) = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    assert (run / "level_1" / "metrics.json").is_file()   # trained by the job
    assert (out / "report.md").is_file()
    assert list((out / "submitit").glob("*_log.out"))       # submitit's job logs


def test_submitit_failed_job_is_one_line_naming_its_log(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "cmp"
    # the job's run directory already holds a run of other settings: `swamp run` refuses
    from swamp.studies.compare import planned_runs
    base = settings_from_args(build_parser().parse_args(["compare", "--methods", "imp",
                                                         *TINY, "--out", str(out)]))
    ((_, s),) = planned_runs(["imp"], [0], base).items()
    (out / "runs" / s.run_name()).mkdir(parents=True)
    (out / "runs" / s.run_name() / "stray.txt").write_text("not a run")
    argv = ["compare", "--methods", "imp", "--seeds", "0", *TINY, "--out", str(out),
            "--launcher", "submitit", "--cluster", "local"]
    assert main(argv) == 2
    (last,) = capsys.readouterr().err.strip().splitlines()
    assert last.startswith("swamp: error: 1 of 1 job(s) failed: imp seed 0")
    assert "is not a swamp run directory" in last and "_log.err" in last
    assert not (out / "report.md").exists()


def test_missing_submitit_is_one_line_before_anything_is_written(tmp_path, monkeypatch,
                                                                   capsys):
    real_import = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit" or name.startswith("submitit."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "imp", "--seeds", "0", *TINY, "--out", str(out),
                 "--launcher", "submitit"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "swamp: error: the submitit launcher needs the extra: pip install 'swamp[submitit]'"]
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--cluster", "kubernetes"], "unknown --cluster 'kubernetes'"),
    (["--time-min", "0"], "--time-min must be at least 1"),
    (["--gpus", "-1"], "--gpus must be 0 or more"),
])
def test_bad_launcher_settings_are_one_line(tmp_path, capsys, flags, message):
    pytest.importorskip("submitit")
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "imp", "--seeds", "0", *TINY, "--out", str(out),
                 "--launcher", "submitit", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


# ---- torchrun's elastic restarts (docs/distributed.md) ----------------------------------
RESTART_WRAPPER = '''
import os, sys
from swamp.app.cli import main

attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
if os.environ["RANK"] == "1" and attempt == "0":
    import swamp.engines.sequential as sequential

    original = sequential.train_group

    def dying(replicas, task, *args, **kwargs):
        if task.level == 1:
            os._exit(17)             # a rank lost in level 1 (killed, out of memory)
        return original(replicas, task, *args, **kwargs)

    sequential.train_group = dying
if os.environ["RANK"] == "0":
    from swamp.loop import LevelLoop

    run_level = LevelLoop.run_level

    def recording(self, level, start, mask):
        with open(os.environ["LEVELS_LOG"], "a") as log:
            log.write(f"{attempt} {level}\\n")
        return run_level(self, level, start, mask)

    LevelLoop.run_level = recording
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs a POSIX shell")
def test_torchrun_max_restarts_resumes_the_run_from_its_directory(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    from swamp.loop import RunResult

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    flags = ["run", *TINY, "--levels", "2", "--lr", "0.05", "--threads", "1"]
    reference = tmp_path / "sequential"
    assert main([*flags, "--engine", "sequential", "--run-dir", str(reference),
                 "--quiet"]) == 0
    script = tmp_path / "wrapper.py"
    script.write_text(RESTART_WRAPPER)
    log = tmp_path / "levels.log"
    env = {**os.environ, "LEVELS_LOG": str(log), "OMP_NUM_THREADS": "1",
           "SWAMP_DIST_TIMEOUT": "60"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--max-restarts=1", "--monitor-interval=0.2", str(script), *flags,
         "--engine", "distributed", "--run-dir", str(run_dir), "--quiet"],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # attempt 0 finished level 0 and lost a rank in level 1; attempt 1 resumed at level 1
    assert log.read_text().split("\n")[:-1] == ["0 0", "0 1", "1 1", "1 2"]
    a, b = RunResult(reference, None), RunResult(run_dir, None)
    for level in range(3):
        assert a.mask(level) == b.mask(level)
        sa, sb = a.solution(level), b.solution(level)
        for k in sa:
            assert torch.allclose(sa[k], sb[k], atol=1e-6), k


def test_printed_commands_keep_the_tracker(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "imp", "--seeds", "0", *TINY, "--out", str(out),
                 "--log", "tensorboard", "--print-commands"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    args = _parse(line)
    assert args.log == "tensorboard" and args.log_dir == str((out / "tensorboard").absolute())
