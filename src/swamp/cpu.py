"""CPU hygiene the product applies itself, so users need not tune their shell.

Three settings decide CPU throughput here, each measured by `benchmarks/particles.py`:

- **Allocator.** glibc returns large freed blocks to the OS with munmap and trims the heap
  eagerly, so every training step pays page faults for its activation buffers. Raising the
  mmap and trim thresholds (what starting Python with MALLOC_MMAP_THRESHOLD_=33554432
  MALLOC_TRIM_THRESHOLD_=1073741824 does) keeps those pages mapped; results are
  bit-identical. It is opt-in (SWAMP_MALLOC_TUNING=1, or call `tune_allocator()` from
  Python): end to end it showed no clear difference (benchmarks/results/allocator.md), so the
  product keeps only the settings below by default. With it on, the
  `swamp` command applies it first thing and processes it starts get the variables.
- **Threads.** Each of K processes on one machine gets cores // K intra-op threads (the
  cores this process may use: affinity and cgroup quota), never more than torch's current
  setting (so OMP_NUM_THREADS or `torch.set_num_threads` still cap them): processes never
  oversubscribe the cores, where two OpenMP threads sharing a core with other work can be
  many times slower. The count depends on the machine, not on its momentary load, because
  floating-point results depend on the thread count: the same command on the same machine
  must give the same numbers. `free_cores` (a load sample) only reports, e.g. in benchmarks.
- **Memory format.** 2-D convolutions and BatchNorm run faster in channels_last on CPU
  (ResNet-20 1.2x; the built-in MNIST-1D CNN, written with 2-D convolutions for this
  reason, 1.3-1.4x). Same function; results differ at floating-point precision.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # torch is imported lazily: `swamp --help` stays fast
    import torch
    from torch import nn

M_TRIM_THRESHOLD = -1   # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024
# The same setting as environment variables, for processes this one starts.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
                 "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

_tuned = False


def tune_allocator() -> bool:
    """Apply the glibc allocator thresholds in this process; True if applied.

    The `swamp` command calls it only where `allocator_wanted()` (see the module docstring).
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _tuned = ok
    return ok


def allocator_wanted() -> bool:
    """Whether the user opted in to the allocator thresholds (SWAMP_MALLOC_TUNING=1)."""
    return os.environ.get("SWAMP_MALLOC_TUNING", "") == "1"


def allocator_env() -> dict[str, str]:
    """Environment for a child process: the allocator thresholds where opted in."""
    if not allocator_wanted():
        return {}
    return {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()}


# ---- cores and threads ------------------------------------------------------------------

def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:  # cgroup v2 quota, e.g. "200000 100000" = 2 cores; "max 100000" = no limit
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies summed over all CPUs, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            values = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)   # idle + iowait
    total = sum(values[:8])                                       # guest time is in user
    return total - idle, total


_free_cache: tuple[float, int] | None = None


def free_cores(sample_seconds: float = 0.25, max_age: float = 30.0) -> int:
    """Cores not busy with other work, from a short sample of /proc/stat (at least 1).

    A diagnostic for reports and benchmarks; the thread policy does not use it (see above).

    This process sleeps while it samples, so its own threads do not count. Where /proc/stat
    is missing, the 1-minute load average stands in. Cached for `max_age` seconds.
    """
    global _free_cache
    now = time.monotonic()
    if _free_cache is not None and now - _free_cache[0] < max_age:
        return _free_cache[1]
    cores = usable_cores()
    if cores == 1:
        return 1
    first = _cpu_times()
    if first is not None:
        time.sleep(sample_seconds)
        second = _cpu_times()
    if first is not None and second is not None and second[1] > first[1]:
        busy_fraction = (second[0] - first[0]) / (second[1] - first[1])
        busy = busy_fraction * (os.cpu_count() or cores)
    else:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, min(cores, int(cores - busy + 0.5)))
    _free_cache = (now, free)
    return free


def run_threads(requested: int = 0, ranks_here: int = 1) -> int:
    """Intra-op threads for one process of a run.

    `requested` > 0 is used as given. Otherwise: the usable cores divided among the
    `ranks_here` processes of this machine, never more than torch's current setting
    (OMP_NUM_THREADS or an earlier `torch.set_num_threads` keep their say).
    """
    import torch

    if requested > 0:
        return requested
    current = torch.get_num_threads()
    if current <= 1:
        return 1
    return max(1, min(current, usable_cores() // max(1, ranks_here)))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    if n <= 0 or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_process_threads(requested: int = 0) -> int:
    """Set this process's intra-op threads by `run_threads` (the `swamp` command's policy)."""
    import torch

    threads = run_threads(requested)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


# ---- memory format ------------------------------------------------------------------------

def wants_channels_last(model: nn.Module, device: torch.device) -> bool:
    """channels_last pays off for 2-D convolutions on CPU (the benchmark's channels_last rows)."""
    from torch import nn

    if os.environ.get("SWAMP_NO_CHANNELS_LAST") or device.type != "cpu":
        return False
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def use_channels_last(model: nn.Module) -> None:
    """Convert the 4-D parameters and buffers of `model` to channels_last, in place.

    Values are unchanged; state dicts keep their shapes (saving makes them contiguous).
    """
    import torch

    model.to(memory_format=torch.channels_last)
