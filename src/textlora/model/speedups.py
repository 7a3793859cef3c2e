"""The one door to the optional speedups in ``textlora.speed``.

Core code never imports ``textlora.speed`` itself: where a model is built (training) or loaded (inference) it
calls :func:`apply_speedups`, and the command line calls :func:`prepare_process` once at start. With
``train.speedups: false``, or with the ``speed`` package deleted, both do nothing and textlora runs the stock
(slower) computation.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # the command line imports this module at start: torch is loaded only when a model is
    import torch


@dataclass
class Applied:
    """What :func:`apply_speedups` did to one model."""

    names: list[str] = field(default_factory=list)
    """The speedups now in effect, e.g. ``["first_token", "cpu_dropout", "prefix_cache"]``."""
    notes: list[str] = field(default_factory=list)
    """One line each for the train log: what applied, or why not."""
    caches: tuple = ()
    """One prefix cache per token set given (``None`` where not cached); the data path passes them on."""
    allocator: Optional[str] = None
    """The faster malloc this process runs on (tcmalloc, jemalloc), or None for the system's."""

    def close(self) -> None:
        """Free the prefix caches (memory or their memory-mapped files)."""
        for cache in self.caches:
            if cache is not None:
                cache.close()


def available() -> bool:
    """Whether the optional ``textlora.speed`` package is installed beside the core."""
    return importlib.util.find_spec("textlora.speed") is not None


def apply_speedups(model: torch.nn.Module, config, device: torch.device, *, training: bool,
                   tokens: Sequence = (), pad_id: int = 0, autocast=contextlib.nullcontext,
                   log: bool = True) -> Applied:
    """Apply every speedup the run's config allows to ``model`` in place; the logits stay the same computation.

    Args:
        model: the (peft-wrapped) classifier, on ``device``.
        config: the run's RunConfig; ``train.speedups=false`` turns every speedup off.
        training: True while training (dropout, the prefix cache), False when a run is loaded for inference.
        tokens: training only: the tokenized sets a prefix cache would hold (train, validation, eval sets).
        log: print the prefix cache's progress lines (the main process of a distributed run).
    Returns:
        what applied, with one prefix cache (or None) per ``tokens`` entry.
    """
    if not config.train.speedups:
        # The malloc was chosen when the process started (TEXTLORA_ALLOCATOR), before any config: report it as is.
        return Applied(notes=["speedups off (train.speedups=false): the stock computation"],
                       caches=tuple(None for _ in tokens), allocator=_loaded_allocator())
    if not available():
        return Applied(notes=["speedups not installed (no textlora.speed): the stock computation"],
                       caches=tuple(None for _ in tokens))
    from textlora import speed

    return speed.apply(model, config, device, training=training, tokens=tokens, pad_id=pad_id,
                       autocast=autocast, log=log)


def compile_backend(config) -> Optional[str]:
    """accelerate's dynamo backend: ``inductor`` for ``train.compile`` (a speedup, off with the others)."""
    return "inductor" if config.train.compile and config.train.speedups else None


def _loaded_allocator() -> Optional[str]:
    if not available():
        return None
    from textlora.speed import allocator

    return allocator.loaded()


def prepare_process() -> None:
    """At the command line's start: re-execute on a faster malloc where one is installed (see speed.allocator)."""
    if available():
        from textlora.speed import allocator

        allocator.reexec_with_fast_allocator()
