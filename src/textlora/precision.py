"""Which floating-point precision a run computes in, for training and inference alike.

``auto`` picks bf16 autocast where it was measured to pay: GPUs with bf16 (fp16 with loss scaling
on older GPUs) and CPUs with AMX tiles. On a CPU without AMX, bf16 trained 1.51x slower than fp32
(BENCHMARKS.md), so ``auto`` is fp32 there. Inference follows the run's own setting, resolved on the
machine it runs on, so that ``evaluate`` reproduces the numbers validation logged during training.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True on CPUs with AMX bf16 tiles (Sapphire Rapids and later), where bf16 matmuls beat fp32."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_precision(requested: str, device_type: str) -> str:
    """``auto`` / ``bf16`` / ``fp16`` / ``no`` -> what runs on ``device_type``: ``bf16``, ``fp16`` or ``no`` (fp32)."""
    if requested == "auto":
        # bf16 keeps fp32's range (no loss scaling); fp16 only where bf16 is missing (V100, T4).
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device_type == "cpu" and cpu_has_amx() else "no"
    if requested == "fp16" and device_type == "cpu":
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    return requested


def inference_precision(asked: str, run_setting: str, device_type: str) -> str:
    """What inference computes in on ``device_type``: ``bf16``, ``fp16`` or ``no`` (fp32).

    ``asked`` is the ``--precision`` flag: ``run`` (the run's ``train.mixed_precision``, ``run_setting``),
    ``fp32`` or ``bf16``. A run trained in fp16 on a GPU runs in fp32 where fp16 cannot (a CPU).
    """
    requested = {"run": run_setting, "fp32": "no"}.get(asked, asked)
    if requested == "fp16" and device_type != "cuda":
        return "no"
    return resolve_precision(requested, device_type)


def precision_name(precision: str) -> str:
    return {"no": "fp32"}.get(precision, precision)


def autocast_factory(device: torch.device, precision: str):
    """A zero-argument context factory: autocast to ``precision`` on ``device``, or nothing for fp32."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=AUTOCAST_DTYPES[precision])
