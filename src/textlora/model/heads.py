"""Light classification heads, put on a stock ``AutoModelForSequenceClassification`` from outside.

``model.head`` chooses:

- ``standard``: the model class's own head, untouched (roberta-base: dense 768x768 + tanh + out_proj,
  593,668 parameters for 4 classes).
- ``linear``: dropout + one Linear on the first token's final hidden state (roberta-base, 4 classes:
  768 x 4 + 4 = 3,076 parameters), so more of a parameter budget can go to LoRA. Two shapes of stock
  head are handled without forking the model class:

  * heads that receive the whole sequence output (``RobertaClassificationHead`` and its relatives,
    recognised by their ``dense`` + ``out_proj``): the ``classifier`` module is replaced by
    :class:`LinearHead`;
  * a ``Linear`` classifier on a pooler (BERT family): the pooler is replaced by :class:`FirstToken`
    (no parameters), so the stock dropout + Linear see the first token's final hidden state. A
    pooler missing from the checkpoint (paraphrase-MiniLM-L3-v2) then no longer needs training.

The head is part of the adapter (peft ``modules_to_save``); :func:`apply_head` is called with the
run's ``model.head`` wherever a model is built or loaded, so evaluate/predict/classify rebuild it.
"""

from __future__ import annotations

import torch
from torch import nn

from textlora.errors import ConfigError

HEADS = ("standard", "linear")


class LinearHead(nn.Module):
    """Dropout + Linear on the first token: ``features [B, T, H]`` -> ``logits [B, K]``."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out_proj(self.dropout(features[:, 0, :]))


class FirstToken(nn.Module):
    """Stands in for a BERT pooler: returns the first token's hidden state ``[B, H]`` unchanged."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


def _dropout(config) -> float:
    value = getattr(config, "classifier_dropout", None)
    return value if value is not None else getattr(config, "hidden_dropout_prob", 0.1)


def apply_head(model: nn.Module, head: str) -> nn.Module:
    """Put head ``head`` on a stock classifier in place (on whatever device it lives, meta included).

    Returns:
        the same model.

    Raises:
        ConfigError: the head is unknown, or ``linear`` for a model whose head shape is not one of the two above.
    """
    if head not in HEADS:
        raise ConfigError(f"model.head={head!r}: allowed values are {', '.join(HEADS)}")
    if head == "standard":
        return model
    classifier = getattr(model, "classifier", None)
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    config = model.config
    if isinstance(classifier, nn.Linear) and isinstance(getattr(encoder, "pooler", None), nn.Module):
        encoder.pooler = FirstToken()
        return model
    if isinstance(classifier, nn.Module) and isinstance(getattr(classifier, "dense", None), nn.Linear) \
            and isinstance(getattr(classifier, "out_proj", None), nn.Linear):
        weight = classifier.out_proj.weight
        with torch.device(weight.device):
            new = LinearHead(config.hidden_size, config.num_labels, _dropout(config))
        new.to(weight.dtype)
        if weight.device.type != "meta":
            # The initialisation transformers gives a fresh classifier.
            nn.init.normal_(new.out_proj.weight, std=getattr(config, "initializer_range", 0.02))
            nn.init.zeros_(new.out_proj.bias)
        model.classifier = new
        return model
    raise ConfigError(f"model.head=linear is not available for {type(model).__name__}: textlora replaces a "
                      "RoBERTa-style head (dense + out_proj) or a BERT-style pooler + Linear classifier; "
                      "use model.head=standard")
