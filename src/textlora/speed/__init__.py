"""Optional speedups: the same computation, faster. Nothing here is needed for a correct result.

Each lives in its own module and is applied only through :func:`apply`, which core code reaches through its
one door, ``textlora.model.speedups.apply_speedups``. Importing this package changes nothing: the CPU
attention function is registered with transformers inside :func:`apply`, when it is used.

- ``first_token``: the last encoder layer runs for the first token only (``model.first_token_last_layer``).
- ``cpu_dropout``: dropout from integer masks on CPU (``train.fast_cpu_dropout``).
- ``prefix_cache``: frozen bottom layers run once per text (``train.prefix_cache``).
- ``allocator``: tcmalloc/jemalloc preloaded at the command line's start (``TEXTLORA_ALLOCATOR``).
- ``train.compile``: torch.compile through accelerate (see ``textlora.model.speedups.compile_backend``).

What each gains is measured in BENCHMARKS.md, not asserted here.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from textlora.model.speedups import Applied

COMPILE_ON_CPU_NOTE = ("train.compile=true on CPU: the graph breaks at textlora's CPU dropout masks, and inductor's "
                       "CPU dropout is slower than the masks; compile is meant for GPUs (BENCHMARKS.md, "
                       "train_speed-cpu-compile)")


def apply(model: torch.nn.Module, config, device: torch.device, *, training: bool, tokens: Sequence = (),
          pad_id: int = 0, autocast=contextlib.nullcontext, log: bool = True) -> Applied:
    """Apply the speedups ``config`` switches on to ``model`` in place (see the module docstring)."""
    from textlora.speed import allocator, first_token

    applied = Applied(caches=tuple(None for _ in tokens))
    if config.model.first_token_last_layer and first_token.restrict_last_layer(model, config.model.head):
        applied.names.append("first_token")
    if training:
        applied.notes.append(first_token.first_token_note(model, config.model))
    if training and device.type == "cpu":
        if config.train.fast_cpu_dropout:
            from textlora.speed import cpu_dropout

            applied.notes.append(cpu_dropout.install(model))
            applied.names.append("cpu_dropout")
        applied.allocator = allocator.loaded()
        applied.notes.append(allocator.note())
        if applied.allocator:
            applied.names.append("allocator")
        if config.train.compile:
            applied.notes.append(COMPILE_ON_CPU_NOTE)
    if config.train.compile and training:
        applied.names.append("compile")
    if training and tokens:
        from textlora.speed.prefix_cache import build_prefix_caches

        applied.caches = build_prefix_caches(config.train, model, tuple(tokens), pad_id, device, autocast, log=log)
        if applied.caches[0] is not None:
            applied.names.append("prefix_cache")
    return applied
