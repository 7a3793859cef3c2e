"""Dropout on CPU from cheap random bits: the same keep probability, a fraction of the time.

On CPU, ``torch.nn.functional.dropout`` draws one ``bernoulli_`` sample per element from the
Mersenne Twister, one element at a time. In LoRA training on a frozen encoder that is the largest
single cost of a step: a profile of all-MiniLM-L6 on a 2-core CPU (batch 48, bf16) put a third of
the step in ``bernoulli_`` (hidden-state, LoRA-input and attention-probability dropout: 32 masks per
step).

Here each mask comes from 32-bit words of torch's own generator, split into two 15-bit integers and
compared with ``round(p * 32768)``: a keep probability exact to 1/32768, kept values scaled by
1/(1-p), as ``nn.Dropout`` does. In expectation the training is the same; the random stream is
another one (still seeded by ``train.seed``, still reproducible).

:func:`install` gives a model's ``nn.Dropout`` modules these masks for CPU training
(``train.fast_cpu_dropout``); outside training, and on other devices, they are the stock modules.
Attention-probability dropout stays SDPA's own: computing attention outside SDPA with these masks
(tried twice; BENCHMARKS.md) was 1.13x faster over 400 steps of all-MiniLM-L6, but the freed
``[B, heads, T, T]`` blocks glibc keeps grew the process to 6.1 GB by step 1,000 (SDPA's: flat at
3.6 GB) while its lead faded.
"""

from __future__ import annotations

import torch

_LEVELS = 1 << 15  # the keep probability's resolution: 15 random bits per element


def keep_scale(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """``[*shape]`` of 0 (dropped, probability ``p``) and ``1 / (1 - p)`` (kept), on CPU in ``dtype``."""
    count = shape.numel()
    # random_() on int32 fills [0, 2^31): 31 random bits; the sign bit of each 16-bit half is cleared
    # so that both halves are uniform on [0, 2^15).
    words = torch.empty((count + 1) // 2, dtype=torch.int32).random_()
    words &= 0x7FFF7FFF
    keep = words.view(torch.int16)[:count].view(shape) >= round(p * _LEVELS)
    return keep.to(dtype).mul_(1.0 / (1.0 - p))


class _Dropout(torch.autograd.Function):
    """``x * mask``; the mask (already scaled) is what the backward pass multiplies by too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask = keep_scale(x.shape, p, x.dtype)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with masks from :func:`keep_scale` for CPU tensors."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0:
        return torch.nn.functional.dropout(x, p, training)
    return _Dropout.apply(x, p)


class CPUDropout(torch.nn.Dropout):
    """``nn.Dropout`` (same ``p``, no state) whose CPU masks come from :func:`keep_scale`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:  # an in-place request is honoured by the stock module
            return super().forward(x)
        return fast_dropout(x, self.p, self.training)


def install(model: torch.nn.Module) -> str:
    """Give ``model``'s ``nn.Dropout`` modules CPU-fast masks, in place; returns one line for the train log."""
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = CPUDropout  # same instance, same p: only forward differs
            swapped += 1
    return (f"dropout on CPU from 15-bit integer masks in {swapped} dropout modules "
            "(train.fast_cpu_dropout; false = torch's bernoulli dropout)")
