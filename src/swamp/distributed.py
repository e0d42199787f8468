"""Process groups for the distributed engine: joined from torchrun, or started here.

Two ways to get K ranks:

- `torchrun --nproc_per_node=K -m swamp run ...` (one or more machines): every rank runs
  the `swamp` command; `join_from_env` joins the group torchrun's environment describes.
- `swamp run --processes K` (one machine), or `--engine auto` on a CPU with free cores:
  this process becomes rank 0 and `local_ranks.start_local` spawns ranks 1..K-1, which receive the
  training context by pickling and never touch the run directory.

Either way rank 0 runs the level loop and the other ranks serve it (engines/distributed.py).
Control messages travel on a gloo group even when tensors go over NCCL: gloo notices a peer
that died (its sockets close) at once, where a collective would otherwise wait for its
timeout.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

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

        owned = self.owns_default and dist.is_initialized()
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
            deadline = time.monotonic() + 30
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


def make_subgroups(group: Group) -> None:
    """The control (gloo) and data (gloo or NCCL) groups of a joined rank."""
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
            dist.init_process_group("gloo", init_method="env://", timeout=timeout())
        except Exception as exc:
            raise SwampError(f"could not join the other ranks ({first_line(exc)}); check "
                             f"torchrun's --rdzv-endpoint / --master-addr and the network") from None
        owns = True
    group = Group(dist.get_rank(), dist.get_world_size(), device, owns_default=owns)
    make_subgroups(group)
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
