"""glibc malloc settings for CPU training: reuse freed blocks instead of faulting in fresh pages.

A CPU training step allocates and frees a few hundred tensors, many of them megabytes (activations,
attention scores, dropout masks). glibc serves blocks above its mmap threshold (128 KB, rising
with use to at most 32 MB) with fresh ``mmap`` pages and unmaps them on ``free``; the kernel
zero-fills every page again on first touch. On all-MiniLM-L6 (batch 48, bf16, 2 cores) that
page-faulting was ~15% of a step: a 7 MB fp32 softmax took 4.7 ms on fresh pages and 1.2 ms on
reused ones. :func:`reuse_freed_memory` raises the mmap threshold and the heap's trim threshold, so
that freed blocks stay in the heap for the next step. The process keeps what it freed (peak
memory is what the step needs, as with the default; BENCHMARKS.md has RSS over 400 steps) and
:func:`release_freed_memory` hands the free part back after training.

Settings are process-wide and stay for the life of the process (``train.reuse_freed_memory``;
false leaves malloc alone). Other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Optional

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20  # blocks below this come from the heap (a step's largest are tens of MB)
TRIM_THRESHOLD_BYTES = 1 << 30  # free memory at the heap's top kept, up to this, for the next step


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)  # the process's own C library
    except OSError:
        return None


def reuse_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds for CPU training; returns one line for the train log."""
    libc = _glibc()
    if libc is None:
        return f"malloc left as it is: {platform.libc_ver()[0] or platform.system()} is not glibc"
    done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    if not done:
        return "malloc left as it is: glibc refused the thresholds"
    return (f"malloc reuses freed blocks below {MMAP_THRESHOLD_BYTES >> 20} MB instead of fresh pages "
            f"(train.reuse_freed_memory; false = glibc's defaults)")


def release_freed_memory() -> None:
    """Return the heap's free blocks to the system (``malloc_trim``), e.g. once training is over."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
