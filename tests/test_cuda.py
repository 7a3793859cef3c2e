"""The CUDA path: bf16 and fp16 autocast, SDPA, pinned-memory loading, the prefix cache and torch.compile on a GPU.

CI has no GPU, so every test here is skipped there; ``scripts/gpu_check.sh`` runs them on a GPU machine
together with the GPU benchmarks. Each one mirrors a CPU test elsewhere (named in its comment) on CUDA.
"""

import copy
import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from textlora.data.batching import make_loader
from textlora.cli import main
from textlora.config import ModelConfig
from textlora.speed.first_token import restrict_last_layer
from textlora.model.heads import apply_head
from textlora.model.forward import predict_proba
from textlora.model.build import build_model
from textlora.speed.prefix_cache import PrefixCache
from textlora.model.parts import encoder_parts
from textlora.speed import COMPILE_ON_CPU_NOTE

from .conftest import AGNEWS_SMALL, write_tiny_config
from .test_first_token import _classifier, assert_same_loss_and_gradients
from .test_prefix_cache import LABELS, _random_tokens, _save_encoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on one)")
CUDA = torch.device("cuda")


def _train_on_cuda(tmp_path, model_dir, name: str, *overrides: str) -> tuple:
    config = write_tiny_config(tmp_path / f"{name}.yaml", model_dir, tmp_path / "runs", run_name=name)
    assert main(["train", "--config", str(config), "train.device=cuda", *overrides]) == 0
    run = tmp_path / "runs" / name
    return run, json.loads((run / "summary.json").read_text())


def _lora_b_trained(run) -> bool:
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    return bool(lora_b) and all(w.abs().sum() > 0 for w in lora_b) and not any("_orig_mod" in n for n in weights)


def _probabilities(path) -> np.ndarray:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(row[k]) for k in row if k.startswith("prob_")] for row in rows])


def test_training_on_cuda_in_auto_precision_and_its_predictions_match_fp32_on_cpu(tmp_path, tiny_model_dir):
    run, summary = _train_on_cuda(tmp_path, tiny_model_dir, "auto")
    assert summary["device"].startswith("cuda")
    assert summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert _lora_b_trained(run) and np.isfinite(summary["best_value"])

    # The same run read on the GPU in its own precision and on the CPU in fp32 (inference.py's merged,
    # length-sorted path on both): probabilities within bf16 rounding, in the same row order.
    paths = []
    for device, precision in (("cuda", "run"), ("cpu", "fp32")):
        paths.append(tmp_path / f"{device}-{precision}.csv")
        assert main(["predict", str(run), "--data", str(AGNEWS_SMALL), "--output", str(paths[-1]),
                     "--probs", "--device", device, "--precision", precision]) == 0
    on_gpu, on_cpu = map(_probabilities, paths)
    assert on_gpu.shape == on_cpu.shape and on_gpu.shape[0] > 200 and on_gpu.shape[1] == 4
    np.testing.assert_allclose(on_gpu, on_cpu, atol=3e-2)
    assert (on_gpu.argmax(1) == on_cpu.argmax(1)).mean() >= 0.95


def test_fp16_training_with_loss_scaling_on_cuda(tmp_path, tiny_model_dir):
    run, summary = _train_on_cuda(tmp_path, tiny_model_dir, "fp16", "train.mixed_precision=fp16")
    assert summary["precision"] == "fp16"
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert losses and np.isfinite(losses).all() and _lora_b_trained(run)


def test_compiled_training_on_cuda(tmp_path, tiny_model_dir, capsys):
    # test_compile.py on CUDA: no CPU warning, plain peft names in the adapter, trained LoRA B.
    run, summary = _train_on_cuda(tmp_path, tiny_model_dir, "compiled", "train.compile=true", "train.max_steps=3")
    assert COMPILE_ON_CPU_NOTE not in capsys.readouterr().out
    assert summary["best_step"] == 3 and _lora_b_trained(run)


def test_prefix_cache_training_on_cuda(tmp_path, tiny_model_dir):
    # LoRA on layer 1 of 2: layer 0 and the embeddings run once per text on the GPU, the cached states
    # come back through pinned memory each step.
    run, summary = _train_on_cuda(tmp_path, tiny_model_dir, "cached", "train.prefix_cache=on", "model.layers=1")
    assert summary["prefix_cache"]["start_layer"] == 1 and _lora_b_trained(run)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_cached_forward_equals_uncached_on_cuda(tmp_path, kind):
    # test_prefix_cache.test_cached_forward_equals_uncached, with the cache filled and read on the GPU.
    folder = _save_encoder(tmp_path / kind, kind)
    model = build_model(ModelConfig(name_or_path=str(folder), layers="2-3", max_trainable_params=10**9),
                        LABELS).model.to(CUDA).eval()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    tokens, pad = _random_tokens(50), 1 if kind == "roberta" else 0
    cache = PrefixCache(encoder_parts(model), 2, tokens.lengths).fill(tokens, pad, CUDA, batch_size=8)
    uncached = predict_proba(model, tokens, pad, batch_size=8, device=CUDA)
    cached = predict_proba(model, tokens, pad, batch_size=8, device=CUDA, cache=cache)
    np.testing.assert_allclose(cached, uncached, atol=2e-3)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_first_token_last_layer_matches_stock_with_sdpa_on_cuda(kind):
    # test_first_token.test_same_logits_and_gradients_as_stock with CUDA's SDPA kernels (fp32).
    stock = apply_head(_classifier(kind, "sdpa"), "standard").to(CUDA).train()
    restricted = copy.deepcopy(stock)
    assert restrict_last_layer(restricted, "standard")
    assert_same_loss_and_gradients(stock, restricted, pad=1 if kind == "roberta" else 0, device="cuda", atol=1e-5,
                                   grad_rtol=1e-3)


def test_training_batches_are_pinned_for_the_copy_to_the_gpu():
    tokens = _random_tokens(20)
    batch = next(iter(make_loader(tokens, list(range(20)), 8, 0, pin_memory=True)))
    assert batch["input_ids"].is_pinned() and batch["attention_mask"].is_pinned()
