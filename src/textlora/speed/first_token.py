"""Run the last encoder layer for the first token only: the classification head reads nothing else.

A sequence classifier's head reads one vector, the first token's final hidden state (RoBERTa's
``features[:, 0, :]``, BERT's pooler on ``hidden_states[:, 0]``, textlora's linear head). In the last
layer every other token's query, attention output, feed-forward and LayerNorm are computed and then
thrown away. Restricting that layer to the first token keeps the keys and values of all tokens (the
first token still attends to the whole text) and drops the rest: about 10/12 of the layer's matrix
work, so ~1/N of the encoder's cost in training and inference (N layers), and more when the
prefix cache leaves only the top layers to run. The logits are the same computation, not an
approximation (tests compare with the stock forward, with gradients).

The model stays stock: only the last layer's ``forward`` is replaced on that instance, and the
replacement calls the layer's own submodules (so LoRA on query/key/value, merged or not, applies).
It is applied only where it is known to be exact: BERT-style layers (``attention.self`` with
query/key/value, ``attention.output``, ``feed_forward_chunk``) with SDPA or eager attention, or MPNet
layers (``attention.attn`` with q/k/v/o and the encoder's relative-position bias, ``attention.LayerNorm``,
``intermediate``, ``output``), an encoder (not a decoder), and a head known to read the first token.
What it gives up: the last layer's per-token hidden states and attention maps are not produced
(``output_hidden_states``/``output_attentions`` see a ``[B, 1, H]`` last layer); nothing in textlora
reads them, and ``model.first_token_last_layer: false`` restores the stock layer.
"""

from __future__ import annotations

import math
import types
from typing import Optional

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from textlora.model.parts import encoder_parts, stock_classifier

# Stock heads that read only the first token's final hidden state (pooler or classification head).
FIRST_TOKEN_CLASSIFIERS = frozenset({
    "BertForSequenceClassification", "RobertaForSequenceClassification", "XLMRobertaForSequenceClassification",
    "CamembertForSequenceClassification", "ElectraForSequenceClassification",
    "Data2VecTextForSequenceClassification", "MPNetForSequenceClassification",
})
_ATTENTION_KINDS = ("sdpa", "eager")


def _first_query_heads(hidden_states: torch.Tensor, query, key, value, head_size: int) -> tuple:
    """Per-head query of the first token ``[B, heads, 1, d]`` and keys/values of every token ``[B, heads, T, d]``."""
    batch, length = hidden_states.shape[:2]
    return (query(hidden_states[:, :1]).view(batch, 1, -1, head_size).transpose(1, 2),
            key(hidden_states).view(batch, length, -1, head_size).transpose(1, 2),
            value(hidden_states).view(batch, length, -1, head_size).transpose(1, 2))


def _first_token_forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                         *unused_args, **kwargs) -> torch.Tensor:
    """A BERT-style layer's forward with queries from the first token only: ``[B, T, H]`` -> ``[B, 1, H]``."""
    self_attention = self.attention.self
    batch = hidden_states.shape[0]
    first = hidden_states[:, :1]
    query, key, value = _first_query_heads(hidden_states, self_attention.query, self_attention.key,
                                           self_attention.value, self_attention.attention_head_size)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :1, :]  # the first query's row ([B, 1, 1 or T, T] -> [B, 1, 1, T])
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(self_attention.config._attn_implementation,
                                                   _eager_attention(self_attention))
    context, _ = attend(self_attention, query, key, value, attention_mask,
                        dropout=self_attention.dropout.p if self_attention.training else 0.0,
                        scaling=self_attention.scaling)
    attention_output = self.attention.output(context.reshape(batch, 1, -1), first)
    return self.feed_forward_chunk(attention_output)


def _mpnet_first_token_forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                               position_bias: Optional[torch.Tensor] = None, *unused_args, **kwargs) -> tuple:
    """An MPNet layer's forward with queries from the first token only: ``[B, T, H]`` -> ``([B, 1, H],)``.

    ``MPNetSelfAttention`` computed for one query row, in the stock order of operations: scores scaled, then the
    first row of the encoder's relative-position bias ``[B, heads, T, T]`` and of the additive mask added.
    """
    attn = self.attention.attn
    batch = hidden_states.shape[0]
    head_size = attn.attention_head_size
    first = hidden_states[:, :1]
    query, key, value = _first_query_heads(hidden_states, attn.q, attn.k, attn.v, head_size)
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(head_size)
    if position_bias is not None:
        scores += position_bias[:, :, :1, :]
    if attention_mask is not None:
        scores = scores + (attention_mask[:, :, :1, :] if attention_mask.dim() == 4 else attention_mask)
    probs = attn.dropout(torch.softmax(scores, dim=-1))
    context = torch.matmul(probs, value).permute(0, 2, 1, 3).reshape(batch, 1, -1)
    attention_output = self.attention.LayerNorm(self.attention.dropout(attn.o(context)) + first)
    return (self.output(self.intermediate(attention_output), attention_output),)


_FORWARDS = (_first_token_forward, _mpnet_first_token_forward)


def _eager_attention(self_attention):
    # The model's own eager function (it lives in the model's module, not in the registry).
    import sys

    return sys.modules[type(self_attention).__module__].eager_attention_forward


def _last_layer(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    parts = encoder_parts(model)
    return parts.layers[-1] if parts is not None and len(parts.layers) else None


def why_not(model: torch.nn.Module, head: str) -> Optional[str]:
    """None when the last layer can run for the first token only, else the reason it cannot."""
    classifier = stock_classifier(model)
    config = classifier.config
    if head == "mean":
        return "model.head=mean reads every token"
    if head != "linear" and type(classifier).__name__ not in FIRST_TOKEN_CLASSIFIERS:
        return f"{type(classifier).__name__}'s head is not known to read only the first token"
    if getattr(config, "is_decoder", False):
        return "the model is a decoder"
    layer = _last_layer(model)
    if _is_mpnet_layer(layer):
        return None  # MPNet computes its attention itself, whatever the attention implementation says
    attention = getattr(config, "_attn_implementation", None)
    if attention not in _ATTENTION_KINDS:
        return f"attention implementation {attention!r} is not sdpa or eager"
    self_attention = getattr(getattr(layer, "attention", None), "self", None)
    needed = ("query", "key", "value", "attention_head_size", "scaling", "dropout")
    if layer is None or self_attention is None or not all(hasattr(self_attention, name) for name in needed) \
            or not hasattr(layer.attention, "output") or not hasattr(layer, "feed_forward_chunk"):
        return ("the encoder's layers are neither BERT-style (attention.self.query/key/value, feed_forward_chunk) "
                "nor MPNet's (attention.attn.q/k/v/o)")
    return None


def _is_mpnet_layer(layer: Optional[torch.nn.Module]) -> bool:
    """An ``MPNetLayer``: the stock class, whose parts :func:`_mpnet_first_token_forward` calls."""
    return type(layer).__name__ == "MPNetLayer" and type(layer).__module__.endswith("modeling_mpnet")


def restrict_last_layer(model: torch.nn.Module, head: str) -> bool:
    """Make the last encoder layer compute the first token only, where that is exact; True when applied."""
    if why_not(model, head) is not None:
        return False
    layer = _last_layer(model)
    forward = _mpnet_first_token_forward if _is_mpnet_layer(layer) else _first_token_forward
    layer.forward = types.MethodType(forward, layer)
    return True


def is_restricted(model: torch.nn.Module) -> bool:
    layer = _last_layer(model)
    forward = getattr(layer, "__dict__", {}).get("forward")
    return getattr(forward, "__func__", None) in _FORWARDS


def first_token_note(model: torch.nn.Module, model_cfg) -> str:
    """One line for the train log: whether the last layer runs for the first token only, and if not why."""
    if not model_cfg.first_token_last_layer:
        return "last layer runs for every token (model.first_token_last_layer=false)"
    if is_restricted(model):
        return "last layer runs for the first token only, the one the head reads (exact; model.first_token_last_layer)"
    return f"last layer runs for every token: {why_not(model, model_cfg.head)}"
