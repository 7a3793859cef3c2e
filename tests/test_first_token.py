"""The last layer run for the first token only gives the stock logits and gradients, and is applied only where exact."""

import copy

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from textlora.config import ModelConfig
from textlora.speed.first_token import first_token_note, is_restricted, restrict_last_layer, why_not
from textlora.model.heads import apply_head
from textlora.run.load import load_run
from textlora.model.forward import predict_proba
from textlora.model.build import build_model
from textlora.speed.prefix_cache import PrefixCache, prefix_start
from textlora.model.parts import encoder_parts
from .test_prefix_cache import LABELS, _random_tokens, _save_encoder

SHAPE = dict(vocab_size=200, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=4)


def _classifier(kind: str, attention: str):
    torch.manual_seed(0)
    if kind == "roberta":
        config = RobertaConfig(**SHAPE, max_position_embeddings=80, pad_token_id=1)
        model = RobertaForSequenceClassification(config)
    elif kind == "mpnet":  # attention computed by the layer itself, with the encoder's relative-position bias
        model = MPNetForSequenceClassification(MPNetConfig(**SHAPE, max_position_embeddings=80))
    else:
        model = BertForSequenceClassification(BertConfig(**SHAPE, max_position_embeddings=80))
    model.config._attn_implementation = attention
    return model


def _batch(pad: int):
    # Ragged rows padded to the longest, so the attention mask matters.
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (5, 17))
    mask = torch.ones_like(ids)
    for row, length in enumerate([17, 3, 9, 1, 12]):
        ids[row, length:], mask[row, length:] = pad, 0
    return ids, mask


def assert_same_loss_and_gradients(reference, candidate, pad: int = 0, device: str = "cpu", atol: float = 1e-6,
                                   grad_rtol: float = 1e-4) -> None:
    """``candidate`` gives ``reference``'s loss and parameter gradients on a ragged, padded batch."""
    ids, mask = (t.to(device) for t in _batch(pad))
    labels = torch.tensor([0, 1, 2, 3, 0], device=device)
    losses = [model(input_ids=ids, attention_mask=mask, labels=labels).loss for model in (reference, candidate)]
    torch.testing.assert_close(losses[1], losses[0], atol=atol, rtol=1e-5)
    for loss in losses:
        loss.backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), candidate.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=atol, rtol=grad_rtol, msg=name)


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("head", ["standard", "linear"])
def test_same_logits_and_gradients_as_stock(kind, attention, head):
    stock = apply_head(_classifier(kind, attention), head).train()
    restricted = copy.deepcopy(stock)
    assert restrict_last_layer(restricted, head) and is_restricted(restricted) and not is_restricted(stock)
    assert_same_loss_and_gradients(stock, restricted, pad=0 if kind == "bert" else 1)
    # The pruned part of the last layer (its feed-forward) really receives a gradient in both.
    assert restricted.base_model.encoder.layer[2].intermediate.dense.weight.grad.abs().sum() > 0


def test_lora_model_logits_unchanged_and_restricted_by_default(tmp_path):
    folder = _save_encoder(tmp_path / "bert", "bert", layers=3)
    restricted = build_model(ModelConfig(name_or_path=str(folder), max_trainable_params=10**9), LABELS).model.eval()
    stock = build_model(ModelConfig(name_or_path=str(folder), max_trainable_params=10**9), LABELS).model.eval()
    # Built stock; the speedups' door restricts it after peft has wrapped it (as training and load_run do).
    assert not is_restricted(restricted) and restrict_last_layer(restricted, "standard")
    assert is_restricted(restricted) and not is_restricted(stock)
    torch.manual_seed(2)
    for name, param in restricted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    stock.load_state_dict(restricted.state_dict())
    tokens = _random_tokens(40)
    np.testing.assert_allclose(predict_proba(restricted, tokens, 0, batch_size=8),
                               predict_proba(stock, tokens, 0, batch_size=8), atol=1e-6)
    # Merged weights (as evaluate/predict use them) are read by the replaced forward too.
    merged = copy.deepcopy(restricted).merge_and_unload()
    np.testing.assert_allclose(predict_proba(merged, tokens, 0, batch_size=8),
                               predict_proba(stock, tokens, 0, batch_size=8), atol=1e-5)


def test_not_applied_where_not_known_exact():
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=200, dim=32, n_layers=2, n_heads=4,
                                                                  hidden_dim=64, num_labels=4))
    assert "not known to read only the first token" in why_not(distil, "standard")
    assert not restrict_last_layer(distil, "standard") and not is_restricted(distil)
    flash = _classifier("bert", "sdpa")
    flash.config._attn_implementation = "flash_attention_2"
    assert "not sdpa or eager" in why_not(flash, "standard") and not restrict_last_layer(flash, "standard")
    decoder = _classifier("bert", "sdpa")
    decoder.config.is_decoder = True
    assert why_not(decoder, "standard") == "the model is a decoder"
    assert "is not known" in first_token_note(distil, ModelConfig())
    assert "first_token_last_layer=false" in first_token_note(distil, ModelConfig(first_token_last_layer=False))


def test_prefix_cache_with_only_the_head_trained_stops_below_the_restricted_layer(tmp_path):
    # No encoder layer trains: the cache holds what enters the last layer, which then runs per step.
    folder = _save_encoder(tmp_path / "bert", "bert", layers=3, dropout=0.0)
    built = build_model(ModelConfig(name_or_path=str(folder), layers="0", target_modules=["query"],
                                    max_trainable_params=10**9), LABELS)
    model = built.model.eval()
    parts = encoder_parts(model)
    for param in parts.layers[0].parameters():
        param.requires_grad_(False)  # as if LoRA were nowhere in the encoder
    tokens = _random_tokens(30)
    start, _ = prefix_start("on", model, tokens.lengths, max_gb=1.0)
    assert start == 2
    cache = PrefixCache(parts, start, tokens.lengths).fill(tokens, 0, torch.device("cpu"), batch_size=8)
    np.testing.assert_allclose(predict_proba(model, tokens, 0, batch_size=8, cache=cache),
                               predict_proba(model, tokens, 0, batch_size=8), atol=2e-3)


def test_finished_run_is_loaded_restricted(tiny_run):
    loaded = load_run(tiny_run)
    assert is_restricted(loaded.model)
