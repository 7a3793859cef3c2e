"""Heap trimming: glibc's malloc_trim gives freed heap blocks back, and CPU training calls it."""

import platform

import pytest

from textlora import heap, loop
from textlora.cli import main

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@glibc
def test_trim_returns_freed_heap_blocks():
    trim = heap.heap_trimmer()
    assert trim is not None
    # 64 KB blocks stay below glibc's mmap threshold: they live in the heap. The last one is kept so
    # that the freed blocks are not at the heap's top, where free() would trim them by itself.
    blocks = [bytearray(b"x" * 65_536) for _ in range(4_000)]  # 262 MB, every page touched
    keep = blocks.pop()
    del blocks
    before = _rss_bytes()
    trim()
    assert before - _rss_bytes() > 150e6, "malloc_trim gave back less than 150 of 262 MB freed"
    assert keep[-1] == ord("x")


def test_cpu_training_trims_every_few_steps(tiny_config_yaml, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "heap_trimmer", lambda: lambda: calls.append(1))
    monkeypatch.setattr(loop, "TRIM_EVERY_STEPS", 2)
    assert main(["train", "--config", str(tiny_config_yaml), "train.max_steps=5", "train.run_name=trim"]) == 0
    assert len(calls) == 2  # after steps 2 and 4
