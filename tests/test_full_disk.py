"""A full disk is one line, leaves nothing half-written, and the run resumes once there is
space, to the same weights as a run that never stopped (issue 11, item 5)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from swamp.app.cli import main
from swamp.errors import SwampError
from swamp.loop import run
from swamp.store import file_sha256

FLAGS = ["run", "--dataset", "synthetic", "--data-size", "320", "--model", "mlp", "--epochs",
         "2", "--batch-size", "64", "--levels", "2", "--particles", "2", "--device", "cpu",
         "--lr", "0.05", "--rewind-epochs", "0", "--engine", "sequential", "--quiet"]


def weights(root: Path) -> dict[str, str]:
    """SHA-256 of every weight and mask file a finished run keeps."""
    return {p.relative_to(root).as_posix(): file_sha256(p)
            for p in sorted(root.rglob("*.safetensors"))}


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def test_a_full_disk_at_any_write_is_one_line_and_the_run_resumes_identically(
        tiny, tmp_path, monkeypatch):
    # every run here trains all it writes (the runs beside each other share no dense work)
    settings = tiny(levels=2, engine="sequential", share_dense=False)
    real_fsync = os.fsync
    writes = []

    def counting(fd):
        writes.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    reference = weights(run(settings, run_dir=tmp_path / "ref").run_dir)
    monkeypatch.undo()
    total = len(writes)
    assert total > 10
    for k in (1, total // 3, (2 * total) // 3, total - 1):   # early, mid-level, late
        root = tmp_path / f"full-{k}"
        count = [0]

        def full(fd, k=k):
            count[0] += 1
            if count[0] == k:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(SwampError, match="no space left on the device while writing"):
            run(settings, run_dir=root)
        monkeypatch.undo()
        assert not leftovers(root), k                    # nothing half-written
        assert weights(run(settings, run_dir=root).run_dir) == reference, k


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0,
                    reason="mounting a small tmpfs needs root")
def test_a_real_full_disk_through_the_command_line(tmp_path, capsys):
    ref = tmp_path / "ref"
    assert main([*FLAGS, "--run-dir", str(ref)]) == 0
    used = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, f"{max(used // 2, 8192)}"):
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        capsys.readouterr()
        assert main([*FLAGS, "--run-dir", str(disk / "r")]) == 2
        err = capsys.readouterr().err
        assert "no space left on the device" in err and err.count("\n") == 1, err
        assert "Traceback" not in err and not leftovers(disk)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert main([*FLAGS, "--run-dir", str(disk / "r")]) == 0
        assert weights(disk / "r") == weights(ref)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
