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
- ``mean``: as ``linear``, on the mean of every real token's final hidden state instead of the first
  token's. Sentence-transformers encoders (all-mpnet-base-v2, all-MiniLM-L6-v2) were trained to put
  the meaning of a text in that mean, not in the first token, so a classifier that reads it starts from
  features that already separate topics and needs to move the encoder less: the choice for text
  unlike the training rows (docs/robustness.md). The head needs the attention mask, which a stock head
  is never given: a forward pre-hook on the encoder hands it to :class:`MaskedMean` (see there).

The head is part of the adapter (peft ``modules_to_save``); :func:`apply_head` is called with the
run's ``model.head`` wherever a model is built or loaded, so evaluate/predict/classify rebuild it.
"""

from __future__ import annotations

import torch
from torch import nn

from textlora.errors import ConfigError

HEADS = ("standard", "linear", "mean")


class FirstToken(nn.Module):
    """Stands in for a BERT pooler: returns the first token's hidden state ``[B, H]`` unchanged."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


class MaskSlot:
    """Where the encoder's pre-hook leaves the current attention mask for :class:`MaskedMean` to read.

    A channel, not state: copies of a head (peft's ``modules_to_save`` deep-copies it) must read the
    mask of the same forward pass, so a copy of the slot is the slot itself.
    """

    def __init__(self):
        self.mask: torch.Tensor | None = None

    def __deepcopy__(self, memo):
        return self


class MaskedMean(nn.Module):
    """The mean of the real tokens' hidden states: ``[B, T, H]`` -> ``[B, H]`` (a BERT pooler's place).

    Stock heads and poolers are called with the hidden states alone, so the attention mask of the
    current forward pass comes through ``slot``, filled by :func:`_hand_mask_to` (a pre-hook on the
    encoder). Without a mask every position counts.
    """

    def __init__(self, slot: MaskSlot | None = None):
        super().__init__()
        self.slot = slot if slot is not None else MaskSlot()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.slot.mask
        if mask is None or mask.shape != hidden_states.shape[:2]:
            return hidden_states.mean(dim=1)
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LinearHead(nn.Module):
    """Dropout + Linear on one vector per text: the first token's, or ``pool``'s (:class:`MaskedMean`)
    when given: ``features [B, T, H]`` -> ``logits [B, K]``."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pool: nn.Module | None = None):
        super().__init__()
        self.pool = pool if pool is not None else FirstToken()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out_proj(self.dropout(self.pool(features)))


def _hand_mask_to(encoder: nn.Module, slot: MaskSlot) -> None:
    """Put the attention mask of every forward pass of ``encoder`` (keyword or second argument) in ``slot``."""

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        slot.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    encoder.register_forward_pre_hook(hook, with_kwargs=True)


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
    pool = MaskedMean() if head == "mean" else None
    if pool is not None and isinstance(encoder, nn.Module):
        _hand_mask_to(encoder, pool.slot)
    if isinstance(classifier, nn.Linear) and isinstance(getattr(encoder, "pooler", None), nn.Module):
        encoder.pooler = pool if pool is not None else FirstToken()
        return model
    if isinstance(classifier, nn.Module) and isinstance(getattr(classifier, "dense", None), nn.Linear) \
            and isinstance(getattr(classifier, "out_proj", None), nn.Linear):
        weight = classifier.out_proj.weight
        with torch.device(weight.device):
            new = LinearHead(config.hidden_size, config.num_labels, _dropout(config), pool)
        new.to(weight.dtype)
        if weight.device.type != "meta":
            # The initialisation transformers gives a fresh classifier.
            nn.init.normal_(new.out_proj.weight, std=getattr(config, "initializer_range", 0.02))
            nn.init.zeros_(new.out_proj.bias)
        model.classifier = new
        return model
    raise ConfigError(f"model.head={head} is not available for {type(model).__name__}: textlora replaces a "
                      "RoBERTa-style head (dense + out_proj) or a BERT-style pooler + Linear classifier; "
                      "use model.head=standard")
