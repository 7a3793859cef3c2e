"""Finding the parts of a (peft-wrapped, possibly compiled) stock classifier: the classifier, its encoder layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class EncoderParts:
    """The pieces of a BERT-style encoder that the cache swaps: ``base.embeddings`` and ``base.encoder.layer``."""

    base: torch.nn.Module
    layers: torch.nn.ModuleList

    @property
    def hidden_size(self) -> int:
        return int(self.base.config.hidden_size)


def stock_classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers classifier inside a peft-wrapped and/or compiled model (the model itself if neither)."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft


def encoder_parts(model: torch.nn.Module) -> Optional[EncoderParts]:
    """The encoder inside a (peft-wrapped, possibly compiled) classifier, or None for unsupported layouts."""
    base = getattr(stock_classifier(model), "base_model", None)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if base is None or not hasattr(base, "embeddings") or not isinstance(layers, torch.nn.ModuleList):
        return None
    return EncoderParts(base=base, layers=layers)
