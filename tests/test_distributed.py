"""The distributed engine with 2 gloo processes on CPU (one thread each): the same level
solutions and masks as `sequential`, only rank 0 writes, and a failing rank stops the others
with a clear message instead of hanging."""

import os
import signal
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from swamp.cli import main
from swamp.config import Settings
from swamp.distributed import start_local
from swamp.engines import LevelTask, ParticleJob, SequentialEngine
from swamp.engines.distributed import DistributedEngine
from swamp.errors import SwampError
from swamp.loop import LevelLoop, run
from swamp.core.masks import Mask

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")

TINY = dict(dataset="synthetic", data_size=320, model="mlp", epochs=2, batch_size=64, levels=2,
            method="swamp", particles=3, device="cpu", lr=0.05)


def settings(tmp_path, **kw):
    return Settings.from_dict({**TINY, "out": str(tmp_path / "runs"), **kw})


def assert_same_run(a_dir, b_dir, levels=3):
    from swamp.loop import RunResult

    a, b = RunResult(a_dir, None), RunResult(b_dir, None)
    for level in range(levels):
        assert a.mask(level) == b.mask(level)
        sa, sb = a.solution(level), b.solution(level)
        assert list(sa) == list(sb)
        for k in sa:
            assert torch.allclose(sa[k], sb[k], atol=1e-6), k


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_rank(index, port, tmp_path, world):
    """One rank as torchrun would start it: the environment names its place."""
    os.environ.update(RANK=str(index), WORLD_SIZE=str(world), LOCAL_RANK=str(index),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    seen = []
    original = DistributedEngine._train_and_gather

    def record(self, task, ctx, progress):          # the mask every rank trains with
        seen.append({n: t.clone() for n, t in task.mask.items()})
        return original(self, task, ctx, progress)

    DistributedEngine._train_and_gather = record
    # rank 1 is pointed at a directory of its own: it must never be created
    run_dir = tmp_path / ("run" if index == 0 else f"rank{index}-must-not-exist")
    result = run(settings(tmp_path, engine="distributed", threads=1), run_dir=run_dir)
    torch.save({"masks": seen, "levels": [r["level"] for r in result.levels]},
               tmp_path / f"rank{index}.pt")


def join_all(context, seconds=120):
    deadline = time.monotonic() + seconds
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the ranks did not finish in time")


def test_torchrun_ranks_match_sequential_and_only_rank_0_writes(tmp_path):
    reference = run(settings(tmp_path, engine="sequential"), run_dir=tmp_path / "seq")
    context = mp.start_processes(_torchrun_rank, args=(free_port(), tmp_path, 2), nprocs=2,
                                 join=False, start_method="spawn")
    join_all(context)
    assert_same_run(reference.run_dir, tmp_path / "run")
    assert not (tmp_path / "rank1-must-not-exist").exists()
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0["levels"] == rank1["levels"] == [0, 1, 2]     # rank 0's rows reach rank 1
    assert len(rank0["masks"]) == len(rank1["masks"]) == 3
    for level, (m0, m1) in enumerate(zip(rank0["masks"], rank1["masks"])):
        assert Mask(m0) == Mask(m1) == reference.mask(level)


def test_processes_flag_matches_sequential(tmp_path, capsys):
    flags = ["run", "--dataset", "synthetic", "--data-size", "320", "--model", "mlp",
             "--epochs", "2", "--batch-size", "64", "--levels", "2", "--particles", "3",
             "--device", "cpu", "--lr", "0.05"]
    assert main([*flags, "--engine", "sequential", "--run-dir", str(tmp_path / "s"),
                 "--quiet"]) == 0
    assert main([*flags, "--processes", "2", "--run-dir", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "2 processes" in out
    assert_same_run(tmp_path / "s", tmp_path / "p")


def test_a_failing_rank_stops_the_others_with_a_clear_message(tiny):
    loop = LevelLoop(tiny(engine="sequential", particles=2))
    ctx = loop.ctx
    ctx.data.train.x[200:] = float("nan")          # only particle 1's subset reaches these
    state = {k: v.clone() for k, v in loop.model.state_dict().items()}
    mask = Mask.ones(loop.model, loop.prunable)
    jobs = [ParticleJob(0, 0, 1, 2, torch.arange(0, 100)),
            ParticleJob(0, 1, 3, 4, torch.arange(100, 230))]
    task = LevelTask(0, state, mask, 0, jobs)
    engine = DistributedEngine(start_local(2, ctx, torch.device("cpu"), 1), threads=1)
    try:
        # a training error on rank 1 is raised on rank 0, as one line
        with pytest.raises(SwampError, match="level 0, particle 1: the training loss became nan"):
            engine.train_particles(task, ctx)
        # the ranks are still in step: the next level trains
        good = LevelTask(0, state, mask, 0, [ParticleJob(0, 0, 1, 2, torch.arange(0, 100)),
                                             ParticleJob(0, 1, 3, 4, torch.arange(0, 100))])
        results = engine.train_particles(good, ctx)
        reference = SequentialEngine().train_particles(good, ctx)
        for a, b in zip(results, reference):
            for k in a.state:
                assert torch.equal(a.state[k], b.state[k])
        # a rank that dies is noticed at once, not after a timeout
        os.kill(engine.group.workers.processes[0].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(SwampError, match="another rank stopped"):
            engine.train_particles(good, ctx)
        assert time.monotonic() - start < 20
    finally:
        engine.close()
    assert not any(p.is_alive() for p in engine.group.workers.processes)
