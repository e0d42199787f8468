"""The process topology: which rank this process is, of how many, on which device, and the
process groups to talk over (joined from torchrun, or started here).

Two ways to get K ranks:

- `torchrun --nproc_per_node=K -m swamp run ...` (one or more machines): every rank runs
  the `swamp` command; `join_from_env` joins the group torchrun's environment describes.
- `swamp run --processes K` (one machine), or `--engine auto` on a CPU with free cores:
  this process becomes rank 0 and `start_local` spawns ranks 1..K-1, which receive the
  training context by pickling and never touch the run directory.

Either way rank 0 runs the level loop and the other ranks serve it (engines/processes.py).
This module knows nothing of engines: `start_local` is given the entry point of the ranks
it spawns.
Control messages travel on a gloo group even when tensors go over NCCL: gloo notices a peer
that died (its sockets close) at once, where a collective would otherwise wait for its
timeout.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from swamp.errors import SwampError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
            "MASTER_PORT")


def launched() -> bool:
    """Whether this process is one rank of several started by torchrun (or compatible)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_leader() -> bool:
    """Rank 0 (or not distributed at all): the process that writes and prints."""
    return env_rank() == 0


def local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun, `cuda` means this rank's GPU: cuda:LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and launched():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def timeout() -> datetime.timedelta:
    """How long a rank waits for the others before giving up (SWAMP_DIST_TIMEOUT seconds).

    Ranks wait for each other legitimately while rank 0 evaluates, prunes and writes, and
    while the slowest rank trains its particles; a rank that *dies* is noticed at once.
    """
    seconds = float(os.environ.get("SWAMP_DIST_TIMEOUT", 6 * 3600))
    return datetime.timedelta(seconds=seconds)


@dataclass
class Group:
    """This process's place among the ranks, and the process groups to talk over."""

    rank: int
    world: int
    device: torch.device
    control: Any = None                  # gloo group: headers, flags, metadata
    data: Any = None                     # group for state tensors (NCCL on GPU)
    workers: Any = None                  # torch.multiprocessing context of spawned ranks
    owns_default: bool = False           # whether we created the default process group
    store: Any = None                    # the rendezvous store this process hosts
    closed: bool = field(default=False)
    connected: bool = True               # False: spawned ranks still starting (`connect`)

    def connect(self) -> "Group":
        """Wait for spawned ranks to start and join them (a no-op once joined). Starting
        them is asynchronous, so rank 0 can train its rewind segment meanwhile."""
        if self.connected:
            return self
        import torch.distributed as dist

        keys = [f"swamp/ready/{r}" for r in range(1, self.world)]
        # importing torch and unpickling the data takes seconds, even on a busy machine
        deadline = time.monotonic() + float(os.environ.get("SWAMP_START_TIMEOUT", 300))
        while not self.store.check(keys):
            failure = self.worker_failure(wait=0.05)
            if failure is not None:
                self.close(kill=True)
                raise SwampError(f"a training process failed to start ({failure}); from a "
                                 f"Python script, call swamp under `if __name__ == "
                                 f"'__main__':` and define your model at module level "
                                 f"(processes use spawn)")
            if time.monotonic() > deadline:
                self.close(kill=True)
                raise SwampError("the training processes did not start in time; use "
                                 "`processes` 1")
        dist.init_process_group("gloo", store=self.store, rank=0, world_size=self.world,
                                timeout=timeout())
        open_groups(self)
        self.connected = True
        return self

    def worker_failure(self, wait: float = 5.0) -> str | None:
        """One line about a spawned rank that stopped with an error, if any."""
        if self.workers is None:
            return None
        try:
            self.workers.join(timeout=wait)
        except Exception as exc:  # ProcessRaisedException / ProcessExitedException
            text = str(exc).strip().splitlines()
            last = [line for line in text if line.strip()]
            return last[-1].strip() if last else type(exc).__name__
        return None

    def close(self, kill: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        import torch.distributed as dist

        owned = self.owns_default and self.connected and dist.is_initialized()
        if owned and not kill:
            # Every rank reaches this point before any tears its group down: a rank that
            # destroys gloo while a peer still talks to it can abort the peer at its exit.
            try:
                dist.monitored_barrier(group=self.control,
                                       timeout=datetime.timedelta(seconds=60))
            except Exception:  # a peer already gone: nothing left to wait for
                pass
        if self.workers is not None:
            if kill:
                for proc in self.workers.processes:
                    if proc.is_alive():
                        proc.terminate()
            # a training rank answers SIGTERM with a checkpoint within a step; 10 s at most
            deadline = time.monotonic() + (10 if kill else 30)
            for proc in self.workers.processes:
                proc.join(timeout=max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
        if owned:
            try:
                dist.destroy_process_group()
            except Exception:  # a broken group cannot always be torn down cleanly
                pass
        self.store = None        # the store goes last, after every client has left


def open_groups(group: Group) -> None:
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        group.control = None   # the default group
    else:
        group.control = dist.new_group(backend="gloo", timeout=timeout())
    if group.device.type == "cuda":
        group.data = dist.new_group(backend="nccl", timeout=timeout())
    else:
        group.data = group.control


def join_from_env(device: torch.device) -> Group:
    """Join (or reuse) the process group of a torchrun launch."""
    import torch.distributed as dist

    if not dist.is_available():
        raise SwampError("this PyTorch build has no torch.distributed; use `engine` sequential")
    owns = False
    if not dist.is_initialized():
        try:
            # torchrun's elastic restarts (--max-restarts) keep the agent's store, which
            # still holds the addresses the ranks of the attempt before published: each
            # attempt joins under a prefix of its own, or a rank may dial a dead peer.
            store, rank, world = next(dist.rendezvous("env://", timeout=timeout()))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group("gloo", store=dist.PrefixStore(f"swamp/{attempt}", store),
                                    rank=rank, world_size=world, timeout=timeout())
        except Exception as exc:
            raise SwampError(f"could not join the other ranks ({_first_line(exc)}); check "
                             f"torchrun's --rdzv-endpoint / --master-addr and the network") from None
        owns = True
    group = Group(dist.get_rank(), dist.get_world_size(), device, owns_default=owns)
    open_groups(group)
    return group


def check_not_bootstrapping() -> None:
    """Refuse to run in a spawned process that is still importing its parent's script.

    Without `if __name__ == "__main__":`, a script that calls swamp would run its whole
    study again inside every training process that swamp starts.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SwampError("swamp was called while a training process was starting; put the "
                         "script's call to swamp under `if __name__ == '__main__':` "
                         "(processes are started with spawn)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ---- ranks started by this process ---------------------------------------------------------

def start_local(processes: int, payload: Any, device: torch.device, threads: int,
                target: Callable[..., None], wait: bool = True) -> Group:
    """Become rank 0 of `processes` ranks on this machine; spawn ranks 1..K-1.

    Each spawned rank runs `target(index, port, processes, payload, device_name, threads,
    parent_pid)` (a module-level function: processes are started with spawn); `payload` is
    pickled to it once (its tensors travel through shared memory). With `wait=False` the
    ranks go on starting in the background until `Group.connect()`.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from swamp import cpu

    if dist.is_initialized():
        raise SwampError("a torch.distributed process group already exists in this process; "
                         "start the ranks with torchrun instead of --processes")
    store = dist.TCPStore("127.0.0.1", 0, processes, is_master=True, wait_for_workers=False,
                          timeout=timeout())
    # Children inherit the environment: the allocator thresholds take effect at their start.
    saved = {k: os.environ.get(k) for k in (*cpu.ALLOCATOR_ENV, "OMP_NUM_THREADS")}
    os.environ.update(cpu.allocator_env())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        workers = mp.start_processes(
            target, args=(store.port, processes, payload, str(device), threads,
                                os.getpid()),
            nprocs=processes - 1, join=False, daemon=True, start_method="spawn")
    except Exception as exc:
        raise SwampError(f"could not start {processes - 1} training process(es) "
                         f"({_first_line(exc)}); use `processes` 1") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    group = Group(0, processes, device, workers=workers, owns_default=True, store=store,
                  connected=False)
    return group.connect() if wait else group


def watch_parent(parent: int) -> None:
    """Exit if the process that started us goes away (never leave orphans behind)."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="swamp-parent-watch").start()


