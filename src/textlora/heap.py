"""Give freed heap memory back to the operating system during CPU training (glibc's ``malloc_trim``).

Every CPU training step allocates activations of a new shape (each batch has its own length), and
glibc keeps the freed blocks in its heap instead of returning them. The process then grows while
what it uses does not: all-MiniLM-L6 at batch 48 sat at 1.4 GB right after a trim, yet its RSS
climbed from 3.5 to 5.2 GB over 400 untrimmed steps. ``malloc_trim(0)`` returns the free blocks; it
costs a heap walk and the page faults of growing back: every 25 steps it slowed training by ~6%
(BENCHMARKS.md), so it runs every 100, to keep a long run from drifting upwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable, Optional

TRIM_EVERY_STEPS = 100
"""Optimizer steps between trims in CPU training."""


def heap_trimmer() -> Optional[Callable[[], None]]:
    """A call that runs glibc's ``malloc_trim(0)``, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)
