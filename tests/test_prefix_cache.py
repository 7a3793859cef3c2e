"""Frozen-prefix cache: cached and uncached forward passes agree; training uses it only when it may."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from textlora.data.batching import Tokenized
from textlora.config import ModelConfig, TrainConfig, load_config
from textlora.errors import ConfigError
from textlora.model.forward import predict_proba
from textlora.data.labels import LabelMap
from textlora.model.build import build_model
from textlora.speed.prefix_cache import PrefixCache, estimate_bytes, lowest_trained_layer, prefix_start
from textlora.model.parts import encoder_parts
from textlora.training.recipe import train

LABELS = LabelMap(names=["World", "Sports", "Business", "Sci/Tech"], kind="int", base=0)


def _save_encoder(folder, kind: str, layers: int = 4, dropout: float = 0.1):
    shape = dict(vocab_size=200, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                 intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    if kind == "roberta":
        RobertaForSequenceClassification(RobertaConfig(**shape, max_position_embeddings=130, pad_token_id=1)).roberta.save_pretrained(folder)
    elif kind == "mpnet":  # one relative-position bias for all layers, computed by the encoder
        MPNetForSequenceClassification(MPNetConfig(**shape, max_position_embeddings=130)).mpnet.save_pretrained(folder)
    else:
        BertForSequenceClassification(BertConfig(**shape, max_position_embeddings=130)).bert.save_pretrained(folder)
    return folder


def _random_tokens(n: int, seed: int = 0) -> Tokenized:
    rng = np.random.default_rng(seed)
    return Tokenized(ids=[[0] + rng.integers(5, 200, size=int(rng.integers(3, 40))).tolist() + [2] for _ in range(n)],
                     truncated=0)


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet"])
def test_cached_forward_equals_uncached(tmp_path, kind):
    folder = _save_encoder(tmp_path / kind, kind)
    built = build_model(ModelConfig(name_or_path=str(folder), layers="2-3", max_trainable_params=10**9), LABELS)
    model = built.model.eval()
    # Non-zero LoRA B so the adapted top layers really differ from the base model.
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    parts = encoder_parts(model)
    embeddings, layers = parts.base.embeddings, parts.base.encoder.layer
    assert lowest_trained_layer(parts) == 2
    tokens = _random_tokens(50)
    pad = 0 if kind == "bert" else 1
    cache = PrefixCache(parts, 2, tokens.lengths).fill(tokens, pad, torch.device("cpu"), batch_size=8)
    assert cache.nbytes == estimate_bytes(tokens.lengths, 32)
    uncached = predict_proba(model, tokens, pad, batch_size=8)
    cached = predict_proba(model, tokens, pad, batch_size=8, cache=cache)
    # fp16 storage of the cached states is the only difference.
    np.testing.assert_allclose(cached, uncached, atol=2e-3)
    assert np.abs(cached - uncached).max() > 0  # the cached path really ran (it is not the uncached one)
    # After a cached pass the model is whole again (its own modules, so the same parameter names).
    assert parts.base.embeddings is embeddings and parts.base.encoder.layer is layers and len(layers) == 4


def test_memory_mapped_cache_is_deleted(tmp_path):
    folder = _save_encoder(tmp_path / "bert", "bert")
    built = build_model(ModelConfig(name_or_path=str(folder), layers="3-3", max_trainable_params=10**9), LABELS)
    tokens = _random_tokens(20)
    cache = PrefixCache(encoder_parts(built.model), 3, tokens.lengths, tmp_path / "cache")
    cache.fill(tokens, 0, torch.device("cpu"))
    assert cache.path.is_file() and cache.path.stat().st_size == cache.nbytes
    first = cache.gather([3], int(tokens.lengths[3]) + 5)
    assert first.shape == (1, tokens.lengths[3] + 5, 32) and first[0, tokens.lengths[3]:].abs().sum() == 0
    cache.close()
    assert not cache.path.exists()


def test_prefix_start_decisions(tmp_path):
    folder = _save_encoder(tmp_path / "bert", "bert")
    lengths = np.full(100, 50)
    top = build_model(ModelConfig(name_or_path=str(folder), layers="2-3", max_trainable_params=10**9), LABELS).model
    every = build_model(ModelConfig(name_or_path=str(folder), max_trainable_params=10**9), LABELS).model
    assert prefix_start("auto", top, lengths, 1.0)[0] == 2
    assert prefix_start("off", top, lengths, 1.0)[0] is None
    start, reason = prefix_start("auto", every, lengths, 1.0)
    assert start is None and "layer 0" in reason
    with pytest.raises(ConfigError, match="no frozen prefix"):
        prefix_start("on", every, lengths, 1.0)
    # 100 x 50 tokens x 32 x 2 bytes = 320 kB: over a 0.0001 GB limit.
    start, reason = prefix_start("auto", top, lengths, 1e-4)
    assert start is None and "0.00 GB > train.prefix_cache_max_gb" in reason
    with pytest.raises(ConfigError, match="prefix_cache_dir"):
        prefix_start("on", top, lengths, 1e-4)


def _train(config_path, tmp_path, name, *overrides):
    config = load_config(config_path, (f"train.run_name={name}", "model.layers=1-2", "model.lora_dropout=0",
                                       "model.max_trainable_params=100000000", "train.eval_every_steps=5", *overrides))
    run = train(config, config_name=name)
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    return run, np.array(losses), json.loads((run / "summary.json").read_text())


def test_training_with_cache_matches_training_without_when_dropout_is_off(tmp_path, tiny_model_dir, tiny_config_yaml):
    # Without dropout the cache changes nothing but fp16 rounding: the two runs must agree.
    folder = tmp_path / "tiny3"
    shutil.copytree(tiny_model_dir, folder)
    config = BertConfig.from_pretrained(folder)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(folder)
    yaml = tiny_config_yaml.read_text().replace(str(tiny_model_dir), str(folder))
    tiny_config_yaml.write_text(yaml)
    cached_run, cached, cached_summary = _train(tiny_config_yaml, tmp_path, "cached", "train.prefix_cache=on",
                                                f"train.prefix_cache_dir={tmp_path / 'pc'}")
    plain_run, plain, plain_summary = _train(tiny_config_yaml, tmp_path, "plain", "train.prefix_cache=off")
    assert cached_summary["prefix_cache"]["start_layer"] == 1
    assert "prefix_cache" not in plain_summary
    assert len(cached) == len(plain) >= 4
    np.testing.assert_allclose(cached, plain, rtol=0, atol=2e-3)
    assert abs(cached_summary["validation_accuracy"] - plain_summary["validation_accuracy"]) <= 1 / 40
    assert list((tmp_path / "pc").iterdir()) == []  # the memory-mapped cache is gone after training


def test_train_config_checks_prefix_cache_fields():
    with pytest.raises(ConfigError, match="train.prefix_cache"):
        TrainConfig(prefix_cache="yes")
    with pytest.raises(ConfigError, match="train.prefix_cache_max_gb"):
        TrainConfig(prefix_cache_max_gb=0)
