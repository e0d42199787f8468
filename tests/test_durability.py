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
