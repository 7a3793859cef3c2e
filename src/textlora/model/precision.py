"""Which floating-point precision a run computes in, for training and inference alike.

Two settings, resolved here and nowhere else:

- ``train.mixed_precision`` is autocast: the precision matmuls run in. ``auto`` picks bf16 where it was
  measured to pay: GPUs with native bf16 (compute capability 8 and up), fp16 with loss scaling on older
  GPUs (V100, T4), and CPUs with AMX tiles. On a CPU without AMX, bf16 *autocast* trained slower than
  fp32 (BENCHMARKS.md, "Quickstart time-to-accuracy, and the first-token last layer and bf16 on CPU"):
  it re-casts every fp32 weight on every step.
- ``model.base_dtype`` is storage: the dtype the frozen pretrained weights are loaded in. A frozen base
  needs no fp32 master copy, and weights stored in bf16 are never re-cast, so ``auto`` keeps the base
  in bf16 wherever the hardware multiplies bf16 natively (CUDA compute capability 8 and up, CPUs with
  ``avx512_bf16`` or AMX), in fp16 on older GPUs where fp16 autocast computes in fp16 anyway (the same
  arithmetic, half the memory), and in fp32 elsewhere or when ``train.mixed_precision`` is ``no``.
  LoRA, the head and every other trained module, the optimizer state and the loss stay fp32
  (:func:`textlora.model.build.keep_trained_in_fp32`); without autocast the frozen layers then compute in
  the base dtype and the trained modules in fp32.

Inference follows the run's own settings, resolved on the machine it runs on, so that ``evaluate``
reproduces the numbers validation logged during training.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch

from textlora.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True on CPUs with AMX bf16 tiles (Sapphire Rapids and later), where bf16 matmuls beat fp32."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def cpu_name() -> str:
    """The CPU's model name, and whether it has AMX (which decides whether bf16 pays, and so what auto picks)."""
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} {'with' if cpu_has_amx() else 'without'} AMX"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs that multiply bf16 in hardware (``avx512_bf16`` or AMX): a bf16-stored base pays there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_native_bf16() -> bool:
    """True on GPUs of compute capability 8 and up (A100, RTX 30xx, H100, L4...).

    ``torch.cuda.is_bf16_supported()`` also counts bf16 that is emulated in fp32 and so says yes on a
    V100 or a T4 (capability 7.x), where bf16 runs slower than fp16 with loss scaling.
    """
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def resolve_precision(requested: str, device_type: str) -> str:
    """``auto`` / ``bf16`` / ``fp16`` / ``no`` -> what runs on ``device_type``: ``bf16``, ``fp16`` or ``no`` (fp32)."""
    if requested == "auto":
        # bf16 keeps fp32's range (no loss scaling); fp16 only where bf16 is not native (V100, T4).
        if device_type == "cuda":
            return "bf16" if cuda_has_native_bf16() else "fp16"
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


BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_base_dtype(requested: str, device_type: str, precision: str, mixed_precision: str = "auto") -> str:
    """``model.base_dtype`` -> the dtype the frozen base is stored in on ``device_type``: ``fp32``, ``bf16`` or ``fp16``.

    Args:
        requested: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device_type: ``cpu``, ``cuda`` or ``mps``.
        precision: what ``train.mixed_precision`` resolved to there (``bf16``, ``fp16`` or ``no``).
        mixed_precision: ``train.mixed_precision`` as asked: ``no`` asks for fp32 throughout, so ``auto``
            keeps the base in fp32 too.
    """
    if requested != "auto":
        if requested == "fp16" and device_type == "cpu":
            raise ConfigError("model.base_dtype=fp16 needs a GPU (CPUs have no fast fp16 matmul); use bf16 or fp32")
        return requested
    if mixed_precision == "no":
        return "fp32"
    if device_type == "cuda":
        return "bf16" if precision == "bf16" and cuda_has_native_bf16() else "fp16" if precision == "fp16" else "fp32"
    if device_type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def inference_base_dtype(asked: str, run_base_dtype: str, run_mixed_precision: str, device_type: str,
                         precision: str) -> str:
    """The base dtype inference loads a run's base in: as training did on this device, unless ``--precision`` says.

    ``asked`` is the ``--precision`` flag (``run``, ``fp32`` or ``bf16``); ``precision`` what inference computes in.
    A run whose base was fp16 on a GPU loads in fp32 on a CPU.
    """
    if asked != "run":
        return {"no": "fp32", "fp32": "fp32"}.get(asked, asked)
    if run_base_dtype == "fp16" and device_type != "cuda":
        return "fp32"
    return resolve_base_dtype(run_base_dtype, device_type, precision, run_mixed_precision)


def precision_name(precision: str) -> str:
    return {"no": "fp32"}.get(precision, precision)


def autocast_factory(device: torch.device, precision: str):
    """A zero-argument context factory: autocast to ``precision`` on ``device``, or nothing for fp32."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=AUTOCAST_DTYPES[precision])
