"""Ranks started by this process (`--processes K`): rank 0 spawns ranks 1..K-1 on this
machine, which serve its levels with the distributed engine.

Apart from `swamp.distributed` (process groups, which the distributed engine itself builds
on) so that the group code and the engine do not import each other.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

import torch

from swamp.distributed import Group, first_line, make_subgroups, timeout
from swamp.errors import SwampError

def start_local(processes: int, ctx: Any, device: torch.device, threads: int) -> Group:
    """Become rank 0 of `processes` ranks on this machine; spawn ranks 1..K-1.

    The spawned ranks get `ctx` (model template, data, schedule, training settings) by
    pickling, set `threads` intra-op threads and the allocator thresholds, then serve
    rank 0's levels until it says stop (or dies).
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from swamp import cpu

    if dist.is_initialized():
        raise SwampError("a torch.distributed process group already exists in this process; "
                         "start the ranks with torchrun instead of `processes`")
    store = dist.TCPStore("127.0.0.1", 0, processes, is_master=True, wait_for_workers=False,
                          timeout=timeout())
    # Children inherit the environment: the allocator thresholds take effect at their start.
    saved = {k: os.environ.get(k) for k in (*cpu.ALLOCATOR_ENV, "OMP_NUM_THREADS")}
    os.environ.update(cpu.allocator_env())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    cpu_ctx = _to_cpu(ctx)
    try:
        workers = mp.start_processes(
            _worker_main, args=(store.port, processes, cpu_ctx, str(device), threads,
                                os.getpid()),
            nprocs=processes - 1, join=False, daemon=True, start_method="spawn")
    except Exception as exc:
        raise SwampError(f"could not start {processes - 1} training process(es) "
                         f"({first_line(exc)}); use `processes` 1") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    group = Group(0, processes, device, workers=workers, owns_default=True, store=store)
    keys = [f"swamp/ready/{r}" for r in range(1, processes)]
    # importing torch and unpickling the data takes seconds, even on a busy machine
    deadline = time.monotonic() + float(os.environ.get("SWAMP_START_TIMEOUT", 300))
    while not store.check(keys):
        failure = group.worker_failure(wait=0.05)
        if failure is not None:
            group.close(kill=True)
            raise SwampError(f"a training process failed to start ({failure}); from a Python "
                             f"script, call swamp under `if __name__ == '__main__':` and "
                             f"define your model at module level (processes use spawn)")
        if time.monotonic() > deadline:
            group.close(kill=True)
            raise SwampError("the training processes did not start in time; use `processes` 1")
    dist.init_process_group("gloo", store=store, rank=0, world_size=processes,
                            timeout=timeout())
    make_subgroups(group)
    return group


def _to_cpu(ctx: Any) -> Any:
    """The training context to pickle to other processes: CPU tensors, a copy of the model.

    Pickling moves tensors to shared memory, so the data is shared read-only; the model
    template must not be: each rank trains in its own copy (see `_own_model`).
    """
    import copy

    from swamp.engines.base import TrainContext

    return TrainContext(copy.deepcopy(ctx.model).cpu(), ctx.data.to("cpu"), ctx.schedule,
                        ctx.settings)


def _watch_parent(parent: int) -> None:
    """Exit if the process that started us goes away (never leave orphans behind)."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="swamp-parent-watch").start()


def _worker_main(index: int, port: int, processes: int, ctx: Any, device_name: str,
                 threads: int, parent: int) -> None:
    """Entry point of a spawned rank (index 0 is rank 1)."""
    import torch.distributed as dist

    from swamp import cpu
    from swamp.engines.distributed import DistributedEngine

    rank = index + 1
    _watch_parent(parent)
    cpu.tune_allocator()
    torch.set_num_threads(max(1, threads))
    device = torch.device(device_name)
    if device.type == "cuda":
        count = max(1, torch.cuda.device_count())
        device = torch.device("cuda", ((device.index or 0) + rank) % count)
        torch.cuda.set_device(device)
    # The unpickled model lives in memory shared with the other ranks: train in a copy.
    import copy

    from swamp.engines.base import TrainContext

    ctx = TrainContext(copy.deepcopy(ctx.model).to(device), ctx.data.to(device), ctx.schedule,
                       ctx.settings)
    try:
        store = dist.TCPStore("127.0.0.1", port, processes, is_master=False, timeout=timeout())
        store.set(f"swamp/ready/{rank}", "1")
        dist.init_process_group("gloo", store=store, rank=rank, world_size=processes,
                                timeout=timeout())
        group = Group(rank, processes, device, owns_default=True)
        make_subgroups(group)
        engine = DistributedEngine(group, threads=threads)
        engine.serve(ctx)
        group.close()
        # Nothing is left to do: skip interpreter teardown (and the C++ destructors of the
        # process group's threads, which can race at exit).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except KeyboardInterrupt:
        os._exit(130)
    except SwampError as exc:
        from swamp.engines.distributed import RunStopped

        if isinstance(exc, RunStopped):     # rank 0 reports the error itself
            raise SystemExit(1) from None
        print(f"swamp: rank {rank}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except Exception:
        traceback.print_exc()
        raise
