"""model.head=mean: the classifier reads the mean of the real tokens' final hidden states, for BERT-, RoBERTa- and
MPNet-style encoders; padding never changes a text's logits, the first-token speedup stays off, the frozen-prefix
cache gives the same logits, and a trained run loads back to the same predictions."""

import json

import numpy as np
import pytest
import torch

from textlora.cli import main
from textlora.config import ModelConfig
from textlora.errors import ConfigError
from textlora.model.build import build_model
from textlora.model.forward import predict_proba
from textlora.model.heads import MaskedMean
from textlora.model.parts import encoder_parts
from textlora.speed import first_token
from textlora.speed.prefix_cache import PrefixCache

from .conftest import AGNEWS_SMALL, write_tiny_config
from .test_prefix_cache import LABELS, _random_tokens, _save_encoder


def _mean_model(folder, **extra):
    built = build_model(ModelConfig(name_or_path=str(folder), head="mean", max_trainable_params=10**9, **extra),
                        LABELS)
    model = built.model.eval()
    for name, param in model.named_parameters():  # LoRA that really changes the encoder
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model


def test_masked_mean_ignores_padding():
    states = torch.randn(2, 5, 3)
    pool = MaskedMean()
    pool.slot.mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool(states)
    torch.testing.assert_close(pooled[0], states[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], states[1].mean(0))
    pool.slot.mask = None  # no mask given: every position counts
    torch.testing.assert_close(pool(states), states.mean(1))


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet"])
def test_a_texts_logits_do_not_depend_on_the_padding_around_it(tmp_path, kind):
    model = _mean_model(_save_encoder(tmp_path / kind, kind))
    pad = 0 if kind == "bert" else 1
    short, long = [0, 11, 12, 13, 2], [0] + list(range(20, 50)) + [2]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([short]), attention_mask=torch.ones(1, 5, dtype=torch.long)).logits
        ids = torch.tensor([short + [pad] * (len(long) - len(short)), long])
        mask = (torch.arange(len(long)) < torch.tensor([[len(short)], [len(long)]])).long()
        batched = model(input_ids=ids, attention_mask=mask).logits
        # The same padded batch read by the first token would agree too; read by an unmasked mean it would not.
        states = encoder_parts(model).base(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(states[0].mean(0), states[0, :len(short)].mean(0), atol=1e-3)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_the_first_token_layer_stays_off_and_the_prefix_cache_agrees(tmp_path, kind):
    model = _mean_model(_save_encoder(tmp_path / kind, kind), layers="2-3")
    assert first_token.why_not(model, "mean") == "model.head=mean reads every token"
    assert not first_token.restrict_last_layer(model, "mean")
    parts = encoder_parts(model)
    tokens = _random_tokens(40)
    pad = 0 if kind == "bert" else 1
    cache = PrefixCache(parts, 2, tokens.lengths).fill(tokens, pad, torch.device("cpu"), batch_size=8)
    uncached = predict_proba(model, tokens, pad, batch_size=8)
    cached = predict_proba(model, tokens, pad, batch_size=8, cache=cache)
    np.testing.assert_allclose(cached, uncached, atol=2e-3)  # fp16 storage of the cached states


def test_mean_head_is_the_linear_heads_size_and_unknown_heads_are_refused(tmp_path):
    folder = _save_encoder(tmp_path / "roberta", "roberta")
    sizes = {}
    for head in ("linear", "mean"):
        built = build_model(ModelConfig(name_or_path=str(folder), head=head, max_trainable_params=10**9), LABELS)
        sizes[head] = sum(p.numel() for n, p in built.model.named_parameters() if p.requires_grad and "classifier" in n)
    assert sizes["linear"] == sizes["mean"] == 32 * 4 + 4
    with pytest.raises(ConfigError, match="'model.head': got 'max', allowed values are standard, linear, mean"):
        ModelConfig(name_or_path=str(folder), head="max")


def test_a_trained_mean_head_run_predicts_the_same_after_loading(tmp_path, tiny_model_dir, capsys):
    config = write_tiny_config(tmp_path / "mean.yaml", tiny_model_dir, tmp_path / "runs", "mean")
    assert main(["train", "--config", str(config), "model.head=mean", "train.max_steps=6"]) == 0
    out = capsys.readouterr().out
    assert "last layer runs for every token: model.head=mean reads every token" in out
    run = tmp_path / "runs" / "mean"
    validation = json.loads((run / "summary.json").read_text())["validation_accuracy"]
    assert main(["predict", str(run), "--data", str(AGNEWS_SMALL), "--output", str(tmp_path / "p.csv"),
                 "--precision", "fp32"]) == 0
    assert main(["evaluate", str(run), "--data", str(AGNEWS_SMALL), "--precision", "fp32"]) == 0
    assert 0 <= validation <= 1 and (tmp_path / "p.csv").stat().st_size > 0
