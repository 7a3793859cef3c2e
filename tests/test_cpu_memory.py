"""cpu_memory: after reuse_freed_memory(), a freed block is reused without faulting in fresh pages.

The settings are process-wide, so each check runs in its own Python process.
"""

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="malloc settings apply to glibc only")

# Rounds like training steps: tensors of 8, 40, 12, 3 and 16 MB allocated, touched and freed. Prints
# the page faults per round once warm (rounds 10-19). glibc's default serves the 40 MB one (above
# its largest dynamic mmap threshold, 32 MB) with fresh pages every round.
_ROUNDS = """
import json, resource, sys
import torch
from textlora import cpu_memory
line = cpu_memory.reuse_freed_memory() if sys.argv[1] == "reuse" else ""
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(20):
    if round == 10:
        start = faults()
    blocks = [torch.empty(mb << 18, dtype=torch.float32).fill_(1.0) for mb in (8, 40, 12, 3, 16)]
    del blocks
print(json.dumps({"faults_per_round": (faults() - start) / 10, "line": line}))
"""


def _rounds(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    pages_of_40_mb = (40 << 20) // 4096
    default = _rounds("default")
    reused = _rounds("reuse")
    assert default["faults_per_round"] > pages_of_40_mb / 2
    assert reused["faults_per_round"] < pages_of_40_mb / 100
    assert "reuses freed blocks below 256 MB" in reused["line"]


def test_release_freed_memory_runs():
    from textlora import cpu_memory

    cpu_memory.release_freed_memory()  # malloc_trim: nothing to check but that it is callable here
