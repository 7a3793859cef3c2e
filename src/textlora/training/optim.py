"""Optimizer with layer-wise learning rates, and the warm-up schedule."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from textlora.config import OptimConfig, parse_layer_range
from textlora.model.build import layer_index, module_path

_SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def learning_rate_for(name: str, cfg: OptimConfig, trained_modules: list[str]) -> float:
    """LR of one trainable parameter: ``head_lr`` for the head and fresh modules, a ``layer_lrs`` range, else ``lr``."""
    path = module_path(name)
    if any(path.startswith(m + ".") for m in trained_modules):
        return cfg.head_lr if cfg.head_lr is not None else cfg.lr
    layer = layer_index(name)
    if layer is not None:
        for spec, lr in cfg.layer_lrs.items():
            if layer in parse_layer_range(spec, f"optim.layer_lrs.{spec}"):
                return lr
    return cfg.lr


def _decays(name: str, param: torch.Tensor) -> bool:
    # Biases and LayerNorm gains are not decayed (the usual BERT recipe).
    return param.ndim > 1 and "LayerNorm" not in name and "layer_norm" not in name


def param_groups(model: torch.nn.Module, cfg: OptimConfig, trained_modules: list[str]) -> list[dict]:
    """One group per (learning rate, decays) pair among the trainable parameters."""
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (learning_rate_for(name, cfg, trained_modules), _decays(name, param))
            groups.setdefault(key, []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": cfg.weight_decay if decays else 0.0}
            for (lr, decays), params in sorted(groups.items())]


def unused_layer_lrs_note(model: torch.nn.Module, cfg: OptimConfig, trained_modules: list[str]) -> str | None:
    """One train-log line naming the ``optim.layer_lrs`` ranges that set no parameter's LR, or None when all do.

    A range has no effect when none of its layers holds a trainable parameter (S2's ``0-3`` and ``4-7`` with LoRA
    on layers 8-11 only), or when an earlier range already covers those layers. Head and fresh modules take
    ``head_lr`` / ``lr`` and never a layer range.
    """
    if not cfg.layer_lrs:
        return None
    used, layers = set(), set()
    for name, param in model.named_parameters():
        path, layer = module_path(name), layer_index(name)
        if not param.requires_grad or layer is None or any(path.startswith(m + ".") for m in trained_modules):
            continue
        layers.add(layer)
        for spec in cfg.layer_lrs:
            if layer in parse_layer_range(spec, f"optim.layer_lrs.{spec}"):
                used.add(spec)
                break
    unused = [spec for spec in cfg.layer_lrs if spec not in used]
    if not unused:
        return None
    where = (f"trainable parameters are only in layers {_ranges(sorted(layers))}" if layers
             else "no encoder layer has trainable parameters")
    return (f"[optim] optim.layer_lrs {', '.join(unused)}: no effect, no trainable parameter takes these learning "
            f"rates ({where}; a layer takes the first range that contains it)")


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


# Devices where torch (>= 2.4) has a fused AdamW kernel for every version textlora supports.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, trained_modules: list[str],
                    device_type: str = "cpu") -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters, for training on ``device_type``.

    AdamW is torch's fused kernel where it exists: one kernel per parameter instead of about ten
    small operations, which a LoRA model (dozens of small tensors) pays at every step.
    """
    groups = param_groups(model, cfg, trained_modules)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=device_type in FUSED_ADAMW_DEVICES)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * total_steps)
    return get_scheduler(_SCHEDULERS[cfg.scheduler], optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)
