"""A real process killed mid-particle (SIGKILL) or stopped (SIGTERM) resumes from its last
checkpoint and ends bit-identical to a run that was never interrupted (CPU, sequential)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from swamp.store import RunStore

EVERY = 25
FLAGS = ["run", "--dataset", "synthetic", "--data-size", "4000", "--model", "mlp",
         "--epochs", "20", "--batch-size", "16", "--levels", "1", "--particles", "2",
         "--method", "swamp", "--device", "cpu", "--engine", "sequential", "--threads", "1",
         "--rewind-epochs", "0", "--lr", "0.02", "--checkpoint-every", str(EVERY)]


def swamp(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "swamp", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_process_resumes_from_its_checkpoint_bit_for_bit(tmp_path, how):
    reference = swamp(*FLAGS, "--run-dir", str(tmp_path / "whole"), "--quiet")
    cut = tmp_path / "cut"
    proc = swamp(*FLAGS, "--run-dir", str(cut), "--quiet")
    target = cut / "level_0" / "checkpoint_0.safetensors"
    deadline = time.monotonic() + 120
    while not target.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    os.kill(proc.pid, how)
    _, err = proc.communicate(timeout=60)
    if how == signal.SIGTERM:       # a clean stop: one line, and a checkpoint at that step
        assert proc.returncode in (130, 143), err
        assert "interrupted" in err and "resume" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (cut / "level_0" / "metrics.json").exists()      # stopped inside level 0

    resumed = swamp(*FLAGS, "--run-dir", str(cut))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    line = next(t for t in out.splitlines() if "resuming from the checkpoint at iteration" in t)
    step = int(line.rsplit(" ", 1)[1])
    assert step >= EVERY and (how == signal.SIGTERM or step % EVERY == 0)
    assert reference.wait(timeout=300) == 0
    # bit for bit: the same level files as the run that was never stopped
    for level in (0, 1):
        a, b = RunStore(tmp_path / "whole"), RunStore(cut)
        assert a.solution_path(level).read_bytes() == b.solution_path(level).read_bytes()
        assert a.mask_path(level).read_bytes() == b.mask_path(level).read_bytes()
    assert RunStore(cut).checkpoint_paths(0) == []


def test_sigterm_stops_a_multi_process_run_and_its_workers_at_once(tmp_path):
    flags = [f for f in FLAGS if f not in ("--engine", "sequential")]
    proc = swamp(*flags, "--processes", "2", "--run-dir", str(tmp_path / "r"), "--quiet")
    target = tmp_path / "r" / "level_0"
    deadline = time.monotonic() + 120
    while not list(target.glob("checkpoint_*.safetensors")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert children                                   # the training process of rank 1
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted" in err
    time.sleep(0.5)
    alive = [c for c in children if os.path.exists(f"/proc/{c}")
             and "zombie" not in open(f"/proc/{c}/status").read().lower()]
    assert not alive
    resumed = swamp(*flags, "--processes", "2", "--run-dir", str(tmp_path / "r"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from the checkpoint" in out or "trained before the stop" in out
