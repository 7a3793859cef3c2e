"""CPU dropout from integer masks: the keep probability and scale of nn.Dropout, one mask forward and back,
seeded; the model it is installed in computes the stock function (eval exactly, training with p -> 0)."""

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from textlora import cpu_dropout
from textlora.cpu_dropout import CPUDropout, fast_dropout
from textlora.first_token import restrict_last_layer

from .test_first_token import SHAPE, _batch, assert_same_loss_and_gradients

ROWS = 1_000_000


def _sigmas(observed: float, p_keep: float, count: int) -> float:
    return abs(observed - p_keep) / (p_keep * (1 - p_keep) / count) ** 0.5


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_probability_and_scale_are_dropouts(p):
    torch.manual_seed(0)
    out = fast_dropout(torch.ones(ROWS), p)
    kept = out != 0
    assert _sigmas(kept.float().mean().item(), 1 - p, ROWS) < 5
    # Each 32-bit word gives two elements: both halves must be uniform (the high one has no sign bit).
    for half in (kept[0::2], kept[1::2]):
        assert _sigmas(half.float().mean().item(), 1 - p, ROWS // 2) < 5
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / (1 - p)))


def test_bf16_keeps_its_dtype_and_scale():
    out = fast_dropout(torch.ones(1000, dtype=torch.bfloat16), 0.1)
    assert out.dtype == torch.bfloat16
    assert set(out.unique().tolist()) <= {0.0, torch.tensor(1 / 0.9, dtype=torch.bfloat16).item()}


def test_backward_drops_the_same_elements():
    x = torch.randn(4096, requires_grad=True)
    out = fast_dropout(x, 0.3)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, (out != 0).float() / 0.7)


def test_masks_follow_the_seed():
    masks = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        masks.append(fast_dropout(torch.ones(10_000), 0.1) != 0)
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def test_identity_outside_training_and_at_p0():
    x = torch.randn(100)
    module = CPUDropout(0.1).eval()
    assert module(x) is x and fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))


def _bert(p: float):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{**SHAPE, "hidden_dropout_prob": p, "attention_probs_dropout_prob": p},
                                                     max_position_embeddings=80))
    model.config._attn_implementation = "sdpa"
    return model


@pytest.mark.parametrize("first_token", [False, True])
def test_installed_model_is_the_stock_function(first_token):
    ids, mask = _batch(0)
    # Eval: exactly the stock model (SDPA, no dropout).
    stock = _bert(0.1).eval()
    fast = copy.deepcopy(stock)
    assert "in 11 dropout modules" in cpu_dropout.install(fast)  # embeddings, 3 x (attention, 2 hidden), head
    assert isinstance(fast.bert.encoder.layer[0].output.dropout, CPUDropout)
    assert torch.equal(fast(input_ids=ids, attention_mask=mask).logits, stock(input_ids=ids, attention_mask=mask).logits)
    # Training with p -> 0 (a threshold of 0: every element kept, scaled by 1 + 1e-9): every mask runs and the
    # loss and gradients are the stock ones.
    stock = _bert(1e-9).train()
    if first_token:
        restrict_last_layer(stock, "standard")
    fast = copy.deepcopy(stock)
    cpu_dropout.install(fast)
    assert_same_loss_and_gradients(stock, fast)


def test_training_drops_and_stays_finite():
    model = _bert(0.1).train()
    cpu_dropout.install(model)
    ids, mask = _batch(0)
    first, second = (model(input_ids=ids, attention_mask=mask).logits for _ in range(2))
    assert not torch.equal(first, second)  # dropout is on
    second.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
