"""CPU dropout from integer masks: the keep probability and scale of nn.Dropout, one mask forward and back,
seeded; the attention function is SDPA as p -> 0 and its backward the gradient of its forward (gradcheck); the
model it is installed in computes the stock function (eval exactly, training with p -> 0)."""

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from textlora.speed import cpu_dropout
from textlora.speed.cpu_dropout import ATTENTION, CPUDropout, attention, fast_dropout
from textlora.speed.first_token import restrict_last_layer

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_a_byte_mask_with_the_results_of_a_scaled_mask(dtype):
    # The product and gradient are keep_scale's bit for bit, while backward keeps 1 byte per element.
    x = torch.randn(48, 37, 64, dtype=dtype, requires_grad=True)
    grad = torch.randn(48, 37, 64, dtype=dtype)
    torch.manual_seed(3)
    out = fast_dropout(x, 0.1)
    (kept,) = out.grad_fn.saved_tensors
    out.backward(grad)
    torch.manual_seed(3)
    mask = cpu_dropout.keep_scale(x.shape, 0.1, dtype)
    assert kept.dtype == torch.bool and kept.shape == x.shape
    assert torch.equal(out, x.detach() * mask) and torch.equal(x.grad, grad * mask)


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


class _Attention(torch.nn.Module):
    is_causal = False


def _qkv_and_mask(masked: bool, dtype=torch.float32):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 9, 8, dtype=dtype) for _ in range(3))
    mask = None
    if masked:
        lengths = torch.tensor([9, 4, 1])
        mask = (torch.arange(9)[None, :] < lengths[:, None])[:, None, None, :].expand(3, 1, 9, 9)
    return q, k, v, mask


@pytest.mark.parametrize("masked", [False, True])
def test_attention_is_sdpa_at_p_to_0(masked):
    q, k, v, mask = _qkv_and_mask(masked)
    # p = 1e-9 rounds to a threshold of 0: every element is kept, with a scale of 1 + 1e-9.
    ours, _ = attention(_Attention(), q, k, v, mask, dropout=1e-9, scaling=8 ** -0.5)
    reference, _ = sdpa_attention_forward(_Attention(), q, k, v, mask, dropout=0.0, scaling=8 ** -0.5)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_attention_under_bf16_autocast_stays_bf16_and_close_to_sdpa():
    q, k, v, mask = _qkv_and_mask(True, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = attention(_Attention(), q, k, v, mask, dropout=1e-9, scaling=8 ** -0.5)
        reference, _ = sdpa_attention_forward(_Attention(), q, k, v, mask, dropout=0.0, scaling=8 ** -0.5)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), reference.float(), atol=2e-2, rtol=2e-2)


def test_attention_drops_probabilities():
    q, k, v, _ = _qkv_and_mask(False)
    q.requires_grad_()
    torch.manual_seed(1)
    out, _ = attention(_Attention(), q, k, torch.eye(9).expand(3, 4, 9, 9), None, dropout=0.5, scaling=1.0)
    # With v = I the output rows are the dropped probabilities: about half zero, the rest scaled by 2.
    zeros = (out == 0).float().mean().item()
    assert 0.4 < zeros < 0.6
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_attention_backward_is_the_gradient_of_its_forward_with_dropout():
    # Backward recomputes the probabilities and applies the mask it kept; gradcheck holds it to finite
    # differences of the forward, the global seed reset before each call so that it draws the same mask.
    q, k, v, mask = _qkv_and_mask(True, torch.float64)

    def dropped_attention(q, k, v):
        torch.manual_seed(3)
        return attention(_Attention(), q, k, v, mask, dropout=0.3, scaling=8 ** -0.5)[0]

    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    reference, _ = sdpa_attention_forward(_Attention(), q, k, v, mask, dropout=0.0, scaling=8 ** -0.5)
    assert not torch.allclose(dropped_attention(*inputs), reference)  # the mask does drop
    assert torch.autograd.gradcheck(dropped_attention, inputs)


class _Causal(torch.nn.Module):
    pass  # no is_causal: transformers' SDPA function then treats the attention as causal


@pytest.mark.parametrize("module, kwargs", [(_Causal(), {}), (_Attention(), {"is_causal": True}),
                                            (_Attention(), {"position_bias": torch.zeros(1, 4, 9, 9)})])
def test_attention_leaves_causal_and_biased_attention_to_sdpa(module, kwargs):
    q, k, v, _ = _qkv_and_mask(False)
    torch.manual_seed(5)
    ours, _ = attention(module, q, k, v, None, dropout=0.5, scaling=8 ** -0.5, **kwargs)
    torch.manual_seed(5)
    reference, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.5, scaling=8 ** -0.5, **kwargs)
    assert torch.equal(ours, reference)


def test_attention_backward_computes_only_the_gradients_asked_for():
    q, k, v, mask = _qkv_and_mask(True)
    grads = {}
    for asked in ("qkv", "q", "kv"):
        inputs = [t.clone().requires_grad_(name in asked) for name, t in zip("qkv", (q, k, v))]
        torch.manual_seed(3)
        out, _ = attention(_Attention(), *inputs, mask, dropout=0.3, scaling=8 ** -0.5)
        out.sum().backward()
        grads[asked] = {name: t.grad for name, t in zip("qkv", inputs)}
    assert grads["q"]["k"] is None and grads["q"]["v"] is None and grads["kv"]["q"] is None
    for asked in ("q", "kv"):
        for name in asked:
            torch.testing.assert_close(grads[asked][name], grads["qkv"][name])


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
    # 11 dropout modules: embeddings, 3 x (attention, 2 hidden), head.
    assert "masks: 11 dropout modules and attention dropout" in cpu_dropout.install(fast)
    assert fast.config._attn_implementation == ATTENTION
    assert isinstance(fast.bert.encoder.layer[0].output.dropout, CPUDropout)
    assert torch.equal(fast(input_ids=ids, attention_mask=mask).logits, stock(input_ids=ids, attention_mask=mask).logits)
    # Training with p -> 0 (a threshold of 0: every element kept, scaled by 1 + 1e-9): every mask and the
    # attention function run, and the loss and gradients are the stock ones.
    stock = _bert(1e-9).train()
    if first_token:
        restrict_last_layer(stock, "standard")
    fast = copy.deepcopy(stock)
    cpu_dropout.install(fast)
    assert_same_loss_and_gradients(stock, fast)


def test_installed_bert_trains_with_the_attention_function_in_every_layer(monkeypatch):
    calls = []
    apply = cpu_dropout._AttentionCore.apply
    monkeypatch.setattr(cpu_dropout._AttentionCore, "apply", lambda *args: calls.append(1) or apply(*args))
    model = _bert(0.1)
    cpu_dropout.install(model)
    ids, mask = _batch(0)
    model.eval()(input_ids=ids, attention_mask=mask)
    assert not calls  # no dropout: SDPA
    model.train()(input_ids=ids, attention_mask=mask).logits.sum().backward()
    assert len(calls) == model.config.num_hidden_layers


def test_training_drops_and_stays_finite():
    model = _bert(0.1).train()
    cpu_dropout.install(model)
    ids, mask = _batch(0)
    first, second = (model(input_ids=ids, attention_mask=mask).logits for _ in range(2))
    assert not torch.equal(first, second)  # dropout is on
    second.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_attention_left_alone_where_not_known():
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=200, dim=32, n_layers=2, n_heads=4,
                                                                 hidden_dim=64, max_position_embeddings=80))
    model.config._attn_implementation = "sdpa"
    note = cpu_dropout.install(model)
    assert "attention dropout" not in note and model.config._attn_implementation == "sdpa"
    assert any(isinstance(m, CPUDropout) for m in model.modules())


def test_mpnet_keeps_its_own_attention_and_gets_the_masks_in_its_dropout_modules():
    # MPNet computes attention itself (no attention function to switch) and drops the probabilities with its
    # nn.Dropout module: eval is the stock model exactly, training with p -> 0 gives the stock loss and gradients.
    from transformers import MPNetConfig, MPNetForSequenceClassification

    def mpnet(p: float):
        torch.manual_seed(0)
        return MPNetForSequenceClassification(MPNetConfig(**{**SHAPE, "hidden_dropout_prob": p,
                                                             "attention_probs_dropout_prob": p},
                                                          max_position_embeddings=80))

    ids, mask = _batch(1)
    stock = mpnet(0.1).eval()
    fast = copy.deepcopy(stock)
    note = cpu_dropout.install(fast)
    # 3 layers x (attention probabilities, attention output, feed-forward output) + embeddings + head.
    assert "11 dropout modules (attention dropout among them: the model applies it as a module)" in note
    assert fast.config._attn_implementation == stock.config._attn_implementation
    assert isinstance(fast.mpnet.encoder.layer[0].attention.attn.dropout, CPUDropout)
    assert torch.equal(fast(input_ids=ids, attention_mask=mask).logits, stock(input_ids=ids, attention_mask=mask).logits)
    stock = mpnet(1e-9).train()
    restrict_last_layer(stock, "standard")
    fast = copy.deepcopy(stock)
    cpu_dropout.install(fast)
    assert_same_loss_and_gradients(stock, fast, pad=1)
