"""The command line: bad input gives one clear line, a non-zero exit, and writes nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

from swamp.app.cli import main

TINY = ["--dataset", "synthetic", "--data-size", "200", "--model", "mlp", "--epochs", "1",
        "--batch-size", "50", "--levels", "1", "--particles", "2", "--device", "cpu", "--rewind-epochs", "0"]


@pytest.mark.parametrize("flags,fragment", [
    (["--model", "resnet99"], "unknown model"),
    (["--dataset", "svhn"], "unknown dataset"),
    (["--method", "magic"], "unknown method"),
    (["--particles", "0"], "--particles"),
    (["--prune-fraction", "1.5"], "--prune-fraction"),
    (["--swa-start", "1.2"], "after the end of training"),
    (["--levels", "-1"], "--levels"),
    (["--epochs", "ten"], "invalid int"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--swa-start", "nan"], "--swa-start must be a finite number"),
    (["--rewind-epochs", "nan"], "--rewind-epochs must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["--seed", "-1"], "--seed must be 0 or more"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, fragment):
    out = tmp_path / "runs"
    code = main(["run", *TINY, "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code != 0
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_run_then_resume_with_other_settings(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main(["run", *TINY, "--run-dir", str(run_dir), "--quiet"]) == 0
    assert (run_dir / "metrics.csv").is_file()
    assert main(["run", *TINY, "--run-dir", str(run_dir), "--lr", "0.3"]) == 2
    assert "different settings" in capsys.readouterr().err


def test_run_prints_a_row_per_level(tmp_path, capsys):
    assert main(["run", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "level" in out and "density" in out
    assert sum(1 for line in out.splitlines() if line.strip().startswith(("0 ", "1 "))) == 2


def test_config_file_with_flag_override(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[data]\ndataset = "synthetic"\ndata_size = 200\n[model]\nmodel = "mlp"\n'
                   '[train]\nepochs = 1\nbatch_size = 50\nrewind_epochs = 0\n[prune]\nlevels = 0\n')
    assert main(["run", "--config", str(cfg), "--particles", "1", "--method", "imp-swa",
                 "--device", "cpu", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "o").iterdir()
    assert run_dir.name.startswith("imp-swa-")


def test_list_and_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "swamp", "list"], capture_output=True,
                          text=True, check=True)
    assert "mnist1d" in proc.stdout and "conv1d" in proc.stdout and "swamp" in proc.stdout
    help_text = subprocess.run([sys.executable, "-m", "swamp", "run", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for flag in ["--method", "--dataset", "--model", "--levels", "--particles", "--epochs",
                 "--rewind-epochs", "--prune-fraction", "--scorer", "--scope", "--optimizer",
                 "--lr", "--momentum", "--weight-decay", "--batch-size", "--swa-start",
                 "--swa-lr", "--seed", "--device", "--out"]:
        assert flag in help_text


def test_an_unwritable_output_path_is_one_line_and_keeps_the_file(tmp_path, capsys):
    blocker = tmp_path / "results.txt"        # a regular file where a directory is needed
    blocker.write_text("keep me")
    code = main(["run", *TINY, "--out", str(blocker), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(blocker) in err
    assert blocker.read_text() == "keep me"


def test_version_flag_names_the_installed_version(capsys):
    import tomllib

    import swamp
    from swamp.app.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"swamp {swamp.__version__}"
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == swamp.__version__     # one version, not two


def test_a_closed_pipe_ends_quietly():
    """`swamp list | head -1`: the reader is gone before swamp writes; no error message."""
    import os

    read, write = os.pipe()
    os.close(read)                     # the reader went away before the first write
    try:
        done = subprocess.run([sys.executable, "-m", "swamp", "list"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode == 141


def test_output_into_a_pipe_keeps_long_lines_whole_and_names_the_method(tmp_path):
    out = tmp_path / ("a-rather-long-directory-name-so-that-the-path-is-wider-than-80-columns-" * 2)
    done = subprocess.run([sys.executable, "-m", "swamp", "run", *TINY, "--levels", "0",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("run directory: ") and str(out) in line for line in lines)
    assert lines[0].startswith("method swamp: mlp on synthetic")      # not "swamp swamp:"


def test_help_does_not_import_torch():
    """`swamp --help` is read before anything runs: it must not pay torch's import."""
    import subprocess
    import sys

    code = ("import sys\nfrom swamp.app.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
