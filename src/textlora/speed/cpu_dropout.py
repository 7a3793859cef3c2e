"""Dropout on CPU from cheap random bits: the same keep probability, a fraction of the time.

On CPU, ``torch.nn.functional.dropout`` draws one ``bernoulli_`` sample per element from the
Mersenne Twister, one element at a time, for every mask of a step (hidden-state, LoRA-input and
attention-probability dropout). In LoRA training on a frozen encoder that is a large part of a step
(BENCHMARKS.md: ``textlora-torch-dropout`` is the same training with torch's dropout). And attention dropout keeps SDPA off its fused CPU kernel (it has no dropout), on its math
path: torch's dropout there, and a NaN guard over every ``[B, heads, T, T]`` score tensor.

Here each mask comes from 32-bit words of torch's own generator, split into two 15-bit integers and
compared with ``round(p * 32768)``: a keep probability exact to 1/32768, kept values scaled by
1/(1-p), as ``nn.Dropout`` does. In expectation the training is the same; the random stream is
another one (still seeded by ``train.seed``, still reproducible). Attention dropout runs in a small
attention function registered with transformers (``ATTENTION``): scores, softmax, this dropout,
values, in the dtype SDPA would compute in (bf16 under autocast); without dropout (eval, inference,
p = 0) it hands over to transformers' SDPA function. Its backward pass recomputes the softmax
instead of keeping it, so the process stays as flat over a long run as with SDPA, and smaller
(BENCHMARKS.md, ``cpu_step_loop``: steps and RSS over a long run against SDPA, and an earlier version that
kept the probabilities).

:func:`install` applies both to a model for CPU training (``train.fast_cpu_dropout``); outside
training, and on other devices, every module behaves as the stock one. A model that computes attention
in its own code instead of through transformers' registry (MPNet) keeps it, and gets the masks where it
drops attention probabilities with an ``nn.Dropout`` module, like every other dropout module.
"""

from __future__ import annotations

import functools
import sys

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from textlora.model.parts import stock_classifier

ATTENTION = "textlora_cpu_dropout"
"""Attention implementation name registered with transformers: SDPA, except CPU training with dropout."""
_LEVELS = 1 << 15  # the keep probability's resolution: 15 random bits per element


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Boolean ``[*shape]`` on CPU, each element False (dropped) with probability ``p`` (to 1/32768)."""
    count = shape.numel()
    # random_() on int32 fills [0, 2^31): 31 random bits; the sign bit of each 16-bit half is cleared
    # so that both halves are uniform on [0, 2^15).
    words = torch.empty((count + 1) // 2, dtype=torch.int32).random_()
    words &= 0x7FFF7FFF
    return words.view(torch.int16)[:count].view(shape) >= round(p * _LEVELS)


def keep_scale(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """``[*shape]`` of 0 (dropped, probability ``p``) and ``1 / (1 - p)`` (kept), on CPU in ``dtype``."""
    return keep_mask(shape, p).to(dtype).mul_(1.0 / (1.0 - p))


class _Dropout(torch.autograd.Function):
    """``x * keep * scale``; the backward pass multiplies by the same mask and scale.

    The boolean mask is kept for backward (1 byte per element) instead of :func:`keep_scale`'s mask
    in ``x``'s dtype (4 bytes in fp32, as for a LoRA input): with the scale rounded to that dtype
    first, ``(x * keep) * scale`` is ``x * keep_scale(...)`` bit for bit (a test checks).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p)
        ctx.scale = _scale_in(x.dtype, p)
        ctx.save_for_backward(keep)
        return torch.mul(x, keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None


@functools.lru_cache(maxsize=None)  # called by every dropout of every step: a tensor each time is waste
def _scale_in(dtype: torch.dtype, p: float) -> float:
    """1 / (1 - p) rounded to ``dtype``, as :func:`keep_scale`'s mask holds it (bf16: 1.109375 for p = 0.1)."""
    return float(torch.tensor(1.0 / (1.0 - p), dtype=dtype))


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


def _probabilities(query, key, bias, scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling + bias) over the keys."""
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))  # scaling q: [B,h,T,d], not [B,h,T,T]
    if bias is not None:
        scores += bias
    return torch.softmax(scores, dim=-1)


class _AttentionCore(torch.autograd.Function):
    """softmax(q k^T * scaling + bias) with dropout, times v; backward recomputes the probabilities.

    Kept for backward: q, k, v, the bias and the boolean mask (1 byte per element). Keeping the
    probabilities and a scaled mask as well (3 tensors of ``[B, heads, T, T]``, 6 bytes per element),
    as autograd would, grew the process step after step (BENCHMARKS.md, cpu_step_loop). The dropout
    scale 1/(1-p) is applied to the ``[B, heads, T, d]`` output, not to the probabilities.
    """

    @staticmethod
    def forward(ctx, query, key, value, bias, p: float, scaling: float):
        with torch.autocast("cpu", enabled=False):
            probs = _probabilities(query, key, bias, scaling)
            keep = keep_mask(probs.shape, p)
            out = torch.matmul(probs.mul_(keep), value).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(query, key, value, bias, keep)
        ctx.p, ctx.scaling = p, scaling
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, bias, keep = ctx.saved_tensors
        needs_query, needs_key, needs_value = ctx.needs_input_grad[:3]  # e.g. no key grad above frozen layers
        grad_query = grad_key = grad_value = None
        with torch.autocast("cpu", enabled=False):
            probs = _probabilities(query, key, bias, ctx.scaling)
            grad_out = grad_out.to(value.dtype) * (1.0 / (1.0 - ctx.p))
            if needs_value:
                grad_value = torch.matmul((probs * keep).transpose(-1, -2), grad_out)
            if needs_query or needs_key:
                grad_probs = torch.matmul(grad_out, value.transpose(-1, -2)).mul_(keep)
                grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
                del probs, grad_probs
                if needs_query:
                    grad_query = torch.matmul(grad_scores, key).mul_(ctx.scaling)
                if needs_key:
                    grad_key = torch.matmul(grad_scores.transpose(-1, -2), query).mul_(ctx.scaling)
        return grad_query, grad_key, grad_value, None, None, None


def _computes_itself(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, dropout: float,
                     kwargs: dict) -> bool:
    """Whether :func:`attention` computes a call itself: CPU dropout in plain bidirectional attention.

    Causal attention (transformers' SDPA function assumes it unless the module says otherwise),
    grouped key/value heads, position biases and soft-capping are left to that function.
    """
    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", True)
    return (bool(dropout) and query.device.type == "cpu" and key.shape[1] == query.shape[1] and not causal
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention interface: ``[B, heads, T, d]`` q/k/v -> ``([B, T, heads, d], None)``.

    With dropout on a CPU tensor it computes softmax(q k^T * scaling + mask) v itself, dropping
    attention probabilities with :func:`keep_mask` masks; otherwise transformers' SDPA function runs.
    ``attention_mask`` is SDPA's: None, boolean (True = attend) or additive, broadcast to ``[B, 1, Tq, Tk]``.
    """
    if not _computes_itself(module, query, key, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    # Autocast would widen the softmax to fp32; SDPA computes in the dtype of its (autocast) inputs.
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    query, key, value = (t.to(dtype) for t in (query, key, value))
    bias = attention_mask
    if bias is not None and bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=dtype).masked_fill_(~bias, torch.finfo(dtype).min)
    elif bias is not None:
        bias = bias.to(dtype)
    out = _AttentionCore.apply(query, key, value, bias, dropout, scaling)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    """Make ``ATTENTION`` a name transformers' attention registry knows (done by :func:`install`, not on import)."""
    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets: attention() may hand them over


def install(model: torch.nn.Module) -> str:
    """Give ``model`` CPU-fast dropout in place: its ``nn.Dropout`` modules and, where it uses SDPA, its attention.

    Returns one line for the train log saying what changed.
    """
    _register()
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
    if not uses_registry and _attention_dropout_modules(model):
        # MPNet computes attention in its own code and drops the probabilities with its nn.Dropout module.
        attention_note = " (attention dropout among them: the model applies it as a module)"
    return (f"dropout on CPU from 15-bit integer masks: {swapped} dropout modules{attention_note} "
            "(train.fast_cpu_dropout; false = torch's bernoulli dropout)")


def _attention_dropout_modules(model: torch.nn.Module) -> int:
    """Swapped ``dropout`` modules of self-attention modules (those with a query Linear, LoRA-wrapped or not)."""
    count = 0
    for module in model.modules():
        linears = {name for name, child in module.named_children()
                   if isinstance(getattr(child, "base_layer", child), torch.nn.Linear)}
        count += bool(linears & {"q", "query", "q_lin"}) and isinstance(getattr(module, "dropout", None), CPUDropout)
    return count
