"""What an interrupted write or a damaged start file leaves behind never blocks a run, and
the advice for damage is the smallest deletion that recovers."""

import pytest

from swamp.errors import SwampError
from swamp.loop import run
from swamp.store import RunStore


def test_a_kill_while_the_settings_are_written_leaves_a_resumable_directory(tiny, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    # what atomic_write_bytes leaves when the process dies mid-write of settings.json
    (root / ".settings.json.k2j4h1.tmp").write_text('{"data": {"datas')
    result = run(tiny(levels=0), run_dir=root)
    assert [r["level"] for r in result.levels] == [0]
    assert not list(root.glob(".*.tmp"))


def test_stale_temporary_files_are_cleaned_up_by_the_next_run(tiny, tmp_path):
    root = run(tiny(levels=1), run_dir=tmp_path / "r").run_dir
    for stale in (root / ".checksums.json.a1b2.tmp", root / "level_1" / ".mask.safetensors.x.tmp"):
        stale.write_bytes(b"half")
    run(tiny(levels=1), run_dir=root)
    assert not list(root.rglob(".*.tmp"))


@pytest.mark.parametrize("name", ["init.safetensors", "rewind.safetensors"])
def test_a_damaged_start_file_names_only_that_file_and_deleting_it_recovers(tiny, tmp_path,
                                                                            name):
    settings = tiny(levels=1, rewind_iters=2)
    first = run(settings, run_dir=tmp_path / "r")
    store = RunStore(first.run_dir)
    path = first.run_dir / name
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[-2] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(SwampError, match=f"delete {path}") as err:
        run(settings, run_dir=first.run_dir)
    assert "run directory" not in str(err.value)
    path.unlink()
    again = run(settings, run_dir=first.run_dir)         # recomputed, identically
    assert path.read_bytes() == original
    assert [r["test_acc"] for r in again.levels] == [r["test_acc"] for r in first.levels]
    assert store.verify_checksums() > 0


def test_a_run_directory_is_held_by_one_process_and_taken_over_when_it_dies(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    flags = ["run", "--dataset", "synthetic", "--data-size", "4000", "--model", "mlp",
             "--epochs", "30", "--batch-size", "16", "--levels", "0", "--particles", "1",
             "--method", "imp", "--device", "cpu", "--engine", "sequential", "--threads", "1",
             "--rewind-epochs", "0", "--run-dir", str(tmp_path / "r"), "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "swamp", *flags],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = tmp_path / "r" / "run.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().startswith("pid")):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    second = subprocess.run([sys.executable, "-m", "swamp", *flags], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2
    assert f"is in use by pid {first.pid} on " in second.stderr
    assert second.stderr.count("\n") == 1
    os.kill(first.pid, signal.SIGKILL)               # a dead holder's lock is taken over
    first.wait()
    third = subprocess.run([sys.executable, "-m", "swamp", *flags], capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert RunStore(tmp_path / "r").finished_levels() == [0]


def test_bad_data_and_a_model_that_does_not_fit_are_refused_before_any_file(tmp_path):
    import torch
    from torch import nn

    import swamp
    from swamp.config import Settings

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 6, generator=g), torch.randint(0, 3, (120,), generator=g)
    settings = Settings.from_dict({"levels": 0, "epochs": 1, "batch_size": 20, "device": "cpu",
                                   "rewind_epochs": 0, "out": str(tmp_path / "runs")})
    good = nn.Sequential(nn.Linear(6, 3))
    cases = [
        (good, (x[:100], y[:100]), (torch.where(torch.arange(20)[:, None] == 7,
                                                 float("nan"), x[100:]), y[100:]),
         "test split .* NaN or infinite inputs .*first at index 7"),
        (nn.Sequential(nn.Linear(6, 5)), (x[:100], y[:100]), (x[100:], y[100:]),
         r"outputs of shape \(2, 5\).*3 classes"),
        (nn.Sequential(nn.Linear(4, 3)), (x[:100], y[:100]), (x[100:], y[100:]),
         r"cannot take the data's inputs \(shape \(6,\)\)"),
    ]
    for model, train, test, message in cases:
        data = swamp.from_tensors(train=train, test=test)
        with pytest.raises(SwampError, match=message):
            swamp.run(settings, model=model, data=data)
    assert not (tmp_path / "runs").exists()


def test_a_settings_file_that_is_not_utf8_is_one_line(tmp_path):
    from swamp.config import Settings

    path = tmp_path / "s.toml"
    path.write_bytes(b"lr = 0.1\n\xff\xfe epochs = 3\n")
    with pytest.raises(SwampError, match="not UTF-8 text"):
        Settings.from_file(path)


def test_a_second_compare_on_one_out_is_refused_at_once(tiny, tmp_path):
    import os

    from swamp.store import hold
    from swamp.studies.compare import compare

    out = tmp_path / "study"
    held = hold(out / "compare.lock", str(out), "that compare")      # a compare running
    try:
        with pytest.raises(SwampError, match=f"in use by pid {os.getpid()} on "):
            compare(["imp"], [0], tiny(levels=0), out)
        assert not (out / "runs").exists()                          # nothing was trained
    finally:
        held.close()
    compare(["imp"], [0], tiny(levels=0), out)                      # free again
    assert (out / "report.md").is_file()
