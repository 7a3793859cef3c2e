"""Dropout on CPU from cheap random bits: the same keep probability, a fraction of the time.

On CPU, ``torch.nn.functional.dropout`` draws one ``bernoulli_`` sample per element from the
Mersenne Twister, one element at a time. In LoRA training on a frozen encoder that is the largest
single cost of a step: a profile of all-MiniLM-L6 on a 2-core CPU (batch 48, bf16) put a third of
the step in ``bernoulli_`` (hidden-state, LoRA-input and attention-probability dropout: 32 masks per
step). And attention dropout keeps SDPA off its fused CPU kernel (it has no dropout), on its math
path: torch's dropout there, and a NaN guard over every ``[B, heads, T, T]`` score tensor.

Here each mask comes from 32-bit words of torch's own generator, split into two 15-bit integers and
compared with ``round(p * 32768)``: a keep probability exact to 1/32768, kept values scaled by
1/(1-p), as ``nn.Dropout`` does. In expectation the training is the same; the random stream is
another one (still seeded by ``train.seed``, still reproducible). Attention dropout runs in a small
attention function registered with transformers (``ATTENTION``): scores, softmax, this dropout,
values, in the dtype q/k/v arrive in (bf16 under autocast, as in SDPA); without dropout (eval,
inference, p = 0) it hands over to transformers' SDPA function. It is faster than SDPA's math path
(1.13x over 400 steps of all-MiniLM-L6, 1.32x in an alternating loop) but the process grows more:
glibc keeps the freed blocks of its ``[B, heads, T, T]`` tensors (5.2 GB after 400 steps where SDPA
stays at 3.6 GB; BENCHMARKS.md, ``cpu_step_loop``).

:func:`install` applies both to a model for CPU training (``train.fast_cpu_dropout``); outside
training, and on other devices, every module behaves as the stock one.
"""

from __future__ import annotations

import sys

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .prefix_cache import stock_classifier

ATTENTION = "textlora_cpu_dropout"
"""Attention implementation name registered with transformers: SDPA, except CPU training with dropout."""
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


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention interface: ``[B, heads, T, d]`` q/k/v -> ``([B, T, heads, d], None)``.

    With dropout on a CPU tensor it computes softmax(q k^T * scaling + mask) v itself, dropping
    attention probabilities with :func:`fast_dropout`; otherwise transformers' SDPA function runs.
    ``attention_mask`` is SDPA's: None, boolean (True = attend) or additive, broadcast to ``[B, 1, Tq, Tk]``.
    """
    if not dropout or query.device.type != "cpu" or key.shape[1] != query.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query * scaling, key.transpose(2, 3))  # scaling q: [B,h,T,d], not [B,h,T,T]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)  # matmul's backward needs no output
        else:
            scores += attention_mask.to(scores.dtype)
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets: attention() may hand them over


def install(model: torch.nn.Module) -> str:
    """Give ``model`` CPU-fast dropout in place: its ``nn.Dropout`` modules and, where it uses SDPA, its attention.

    Returns one line for the train log saying what changed.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = CPUDropout  # same instance, same p: only forward differs
            swapped += 1
    classifier = stock_classifier(model)
    config = classifier.config
    # Only models that look their attention up in transformers' registry can be switched; one that
    # calls SDPA itself would read an unknown name as "eager". BERT-style configs name the dropout so.
    uses_registry = hasattr(sys.modules[type(classifier).__module__], "ALL_ATTENTION_FUNCTIONS")
    switch = config._attn_implementation == "sdpa" and uses_registry and \
        getattr(config, "attention_probs_dropout_prob", 0.0) > 0
    if switch:
        config._attn_implementation = ATTENTION
    attention_note = " and attention dropout" if switch else ""
    return (f"dropout on CPU from 15-bit integer masks: {swapped} dropout modules{attention_note} "
            "(train.fast_cpu_dropout; false = torch's bernoulli dropout)")
