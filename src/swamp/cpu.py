"""CPU hygiene the `swamp` command applies itself, so users need not tune their shell.

glibc returns large freed blocks to the OS with munmap and trims the heap eagerly, so every
training step pays page faults for its activation buffers. Raising the mmap and trim
thresholds (the same effect as starting Python with MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824) keeps those pages mapped; results are bit-identical.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1   # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def tune_allocator() -> bool:
    """Apply the glibc allocator thresholds in this process; True if applied."""
    if not sys.platform.startswith("linux") or os.environ.get("SWAMP_NO_MALLOC_TUNING"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    return ok
