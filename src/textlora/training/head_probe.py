"""``model.head_init: probe``: fit the head alone on the frozen encoder before any LoRA training (LP-FT).

A fresh head starts random, so the first steps send large, noisy gradients into LoRA and move the
encoder away from what it learned in pre-training before the head is any good: fine-tuning then
fits the training distribution at the cost of text unlike it ("Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution", Kumar et al., ICLR 2022). Linear probing first
(logistic regression on the frozen features) and fine-tuning from that head (LP-FT) starts LoRA
from a head that already classifies, so the encoder moves less.

At the start of training LoRA's B matrices are zero, so the model's own forward pass *is* the frozen
encoder: the features are the inputs of the head's last Linear, caught by a forward pre-hook. The
regularisation of the probe is chosen on the validation split, never on test.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from textlora.data.batching import Tokenized, make_loader
from textlora.errors import ConfigError
from textlora.model.forward import classifier_logits
from textlora.model.parts import stock_classifier

# model.probe_rows and model.probe_cs's defaults. A sample, so the probe costs one forward pass over few rows; with C
# chosen on validation, more rows choose weaker regularisation, which classifies text unlike the training rows worse
# (benchmarks/probe_tradeoff.py).
from textlora.config import PROBE_CS, PROBE_ROWS  # re-exported: the benchmark and tests read them here


def head_linears(model: torch.nn.Module, num_labels: int) -> list[torch.nn.Linear]:
    """The Linear layers that make the logits (the head's, and peft's trained copy of it)."""
    classifier = getattr(stock_classifier(model), "classifier", None)
    found = [module for module in (classifier.modules() if classifier is not None else ())
             if isinstance(module, torch.nn.Linear) and module.out_features == num_labels]
    return found


def probe_rows(count: int, seed: int, limit: Optional[int] = None) -> np.ndarray:
    """The training rows the probe is fitted on: the first ``limit`` (default :data:`PROBE_ROWS`; 0: all) of a
    permutation ``seed`` draws, so a larger sample holds every row of a smaller one."""
    limit = PROBE_ROWS if limit is None else limit
    return np.random.default_rng(seed).permutation(count)[:limit or count]


def fit_probe(features: np.ndarray, labels, c: float) -> LogisticRegression:
    """Logistic regression at inverse regularisation strength ``c``, as training fits each probe it tries."""
    return LogisticRegression(C=c, max_iter=2000).fit(features, labels)


@torch.inference_mode()
def head_inputs(model, linears, tokens: Tokenized, pad_id: int, device, autocast, cache=None) -> np.ndarray:
    """The head's input vector ``[N, H]`` for every text, in input order (model in eval mode)."""
    caught: list[torch.Tensor] = []
    hooks = [linear.register_forward_pre_hook(lambda module, args: caught.append(args[0].float().cpu()))
             for linear in linears]
    was_training = model.training
    model.eval()
    out = None
    try:
        for batch in make_loader(tokens, None, 64, pad_id, shuffle=False, cache=cache):
            batch = {key: value.to(device) for key, value in batch.items()}
            caught.clear()
            with autocast():
                classifier_logits(model, batch, cache)
            vectors = caught[-1].numpy()
            if out is None:
                out = np.zeros((len(tokens.ids), vectors.shape[1]), dtype=np.float32)
            out[batch["index"].cpu().numpy()] = vectors
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return out


def fit_head_by_probe(model: torch.nn.Module, head: str, num_labels: int, train: tuple[Tokenized, list[int]],
                      validation: tuple[Tokenized, list[int]], pad_id: int, device: torch.device,
                      autocast=contextlib.nullcontext, seed: int = 0, rows: Optional[int] = None,
                      cs: Sequence[float] = PROBE_CS) -> str:
    """Set the head's last Linear to the logistic regression that classifies the frozen features best on
    ``validation``: fit on ``rows`` rows of ``train`` (``model.probe_rows``: default :data:`PROBE_ROWS`, 0 all of
    them) at each strength in ``cs`` (``model.probe_cs``). Returns one line for the train log.

    Raises:
        ConfigError: the head is not one Linear on a pooled vector (``model.head`` standard).
    """
    if head not in ("linear", "mean"):
        raise ConfigError(f"model.head_init=probe needs model.head=linear or mean (one Linear on one vector per "
                          f"text); model.head={head!r} has a hidden layer the probe cannot fit")
    linears = head_linears(model, num_labels)
    if not linears:
        raise ConfigError("model.head_init=probe: the model's classifier has no Linear layer with one output per class")
    (train_tokens, train_labels), (val_tokens, val_labels) = train, validation
    drawn = probe_rows(len(train_tokens.ids), seed, rows)
    subset = Tokenized(ids=[train_tokens.ids[i] for i in drawn], truncated=0)
    x_train = head_inputs(model, linears, subset, pad_id, device, autocast)
    y_train = np.asarray(train_labels)[drawn]
    x_val = head_inputs(model, linears, val_tokens, pad_id, device, autocast)
    fits = [fit_probe(x_train, y_train, c) for c in cs]
    scores = [fit.score(x_val, val_labels) for fit in fits]
    best = int(np.argmax(scores))
    fit = fits[best]
    weight = np.zeros((num_labels, x_train.shape[1]), dtype=np.float32)
    bias = np.zeros(num_labels, dtype=np.float32)
    if len(fit.classes_) == 2:  # sklearn keeps one row for two classes: the second's logit minus the first's
        weight[fit.classes_[1]], bias[fit.classes_[1]] = fit.coef_[0], fit.intercept_[0]
    else:
        weight[fit.classes_], bias[fit.classes_] = fit.coef_, fit.intercept_
    with torch.no_grad():
        for linear in linears:
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
    return (f"[train] head fitted on the frozen encoder before training (model.head_init=probe): logistic "
            f"regression on {len(drawn):,} training rows, C={cs[best]:g} chosen on validation "
            f"(validation accuracy {scores[best]:.4f})")
