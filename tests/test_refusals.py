"""A damaged or mismatched run directory is refused in one line and left untouched."""

import pytest
import torch

from swamp.app.cli import main
from swamp.errors import SwampError
from swamp.loop import LevelLoop
from conftest import RecordingEngine


def snapshot(root):
    """Every path under `root`: (bytes, mtime) of files, mtime of folders."""
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.name != "run.lock"}   # the lock is not data


# ---- damaged or mismatched run directories ----------------------------------------------------
def test_truncated_rewind_checkpoint_is_a_clear_error_and_touches_nothing(tiny, tmp_path):
    root = tmp_path / "r"
    loop = LevelLoop(tiny(rewind_iters=2, levels=1), run_dir=root,
                     engine=RecordingEngine(fail_at=0))
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    rewind = root / "rewind.safetensors"
    assert rewind.is_file() and not (root / "level_0" / "metrics.json").exists()
    data = rewind.read_bytes()
    rewind.write_bytes(data[:len(data) // 2])
    before = snapshot(root)
    damaged = r"rewind\.safetensors (is corrupted|changed after it was written)"
    with pytest.raises(SwampError, match=damaged) as err:
        LevelLoop(tiny(rewind_iters=2, levels=1), run_dir=root).run()
    assert "rewind.safetensors" in str(err.value)
    assert snapshot(root) == before      # nothing deleted, overwritten or added


def test_cli_resume_with_other_settings_exits_2_and_changes_nothing(tmp_path, capsys):
    flags = ["--dataset", "synthetic", "--data-size", "200", "--model", "mlp", "--epochs", "1",
             "--batch-size", "50", "--levels", "1", "--particles", "2", "--device", "cpu",
             "--rewind-epochs", "0", "--engine", "sequential"]
    root = tmp_path / "r"
    threads = torch.get_num_threads()
    try:
        assert main(["run", *flags, "--run-dir", str(root), "--quiet"]) == 0
        capsys.readouterr()
        before = snapshot(root)
        assert len(before) > 5
        code = main(["run", *flags, "--run-dir", str(root), "--lr", "0.3"])
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("swamp: error:")
    assert "different settings" in err and "Traceback" not in err
    assert out == ""
    assert snapshot(root) == before
