"""model.base_dtype: the frozen base stored in bf16/fp16 while LoRA, head, optimizer state and loss stay fp32."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from textlora.model import precision as prec
from textlora.cli import main
from textlora.config import ModelConfig
from textlora.errors import ConfigError
from textlora.run.load import load_run
from textlora.data.labels import LabelMap
from textlora.model.build import build_model

from .conftest import write_tiny_config

LABELS = LabelMap(names=["World", "Sports", "Business", "Sci/Tech"], kind="int", base=1)


def _simulate(monkeypatch, cpu_bf16=False, cuda_capability=None):
    """This process as a machine with (or without) native bf16 on its CPU and a GPU of ``cuda_capability``."""
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cuda_capability)
    # What torch.cuda.is_bf16_supported() says by default on a V100/T4: yes (emulated). It must not be asked.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.mark.parametrize("capability, precision, base", [
    ((7, 0), "fp16", "fp16"),   # V100, S1's GPU
    ((7, 5), "fp16", "fp16"),   # T4, the students' GPU
    ((8, 0), "bf16", "bf16"),   # A100
    ((9, 0), "bf16", "bf16"),   # H100
])
def test_auto_on_each_gpu(monkeypatch, capability, precision, base):
    _simulate(monkeypatch, cuda_capability=capability)
    resolved = prec.resolve_precision("auto", "cuda")
    assert resolved == precision
    assert prec.resolve_base_dtype("auto", "cuda", resolved) == base
    # fp32 asked for explicitly keeps the whole model in fp32.
    assert prec.resolve_base_dtype("auto", "cuda", "no", mixed_precision="no") == "fp32"


def test_auto_on_each_cpu(monkeypatch):
    for native, base in ((True, "bf16"), (False, "fp32")):
        _simulate(monkeypatch, cpu_bf16=native)
        assert prec.resolve_base_dtype("auto", "cpu", "no") == base
    assert prec.resolve_base_dtype("auto", "mps", "no") == "fp32"
    assert prec.resolve_base_dtype("bf16", "cpu", "no") == "bf16"
    with pytest.raises(ConfigError, match="model.base_dtype=fp16 needs a GPU"):
        prec.resolve_base_dtype("fp16", "cpu", "no")
    # Inference: --precision fp32 loads an fp32 base; a GPU run's fp16 base is fp32 on a CPU.
    assert prec.inference_base_dtype("fp32", "bf16", "auto", "cpu", "no") == "fp32"
    assert prec.inference_base_dtype("run", "fp16", "auto", "cpu", "no") == "fp32"
    assert prec.inference_base_dtype("bf16", "fp32", "no", "cpu", "bf16") == "bf16"


def test_bf16_base_trains_fp32_modules(tiny_model_dir):
    """Only the frozen base is bf16; LoRA and the head are fp32 and take gradients in fp32 from a bf16 forward."""
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora_r=4, target_modules=["query", "value"], max_length=32)
    built = build_model(cfg, LABELS, base_dtype="bf16")
    trainable = {n: p for n, p in built.model.named_parameters() if p.requires_grad}
    # peft keeps the untrained original of each fully trained module beside its trained copy: fp32 like it.
    frozen = {n: p for n, p in built.model.named_parameters() if not p.requires_grad and "original_module" not in n}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    ids = torch.randint(5, 60, (3, 12))
    logits = built.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
    assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_A" in n or "lora_B" in n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The same tiny run trained with an fp32 and with a bf16 base."""
    folder = tmp_path_factory.mktemp("base-dtype")
    out = {}
    for dtype in ("fp32", "bf16"):
        config = write_tiny_config(folder / f"{dtype}.yaml", tiny_model_dir, folder / "runs", run_name=dtype)
        assert main(["train", "--config", str(config), f"model.base_dtype={dtype}",
                     "train.mixed_precision=no" if dtype == "fp32" else "train.mixed_precision=auto"]) == 0
        out[dtype] = folder / "runs" / dtype
    return out


def test_summary_and_inference_follow_the_base_dtype(runs, capsys):
    for dtype, run_dir in runs.items():
        assert json.loads((run_dir / "summary.json").read_text())["base_dtype"] == dtype
    bf16 = load_run(runs["bf16"], device="cpu")
    assert bf16.base_dtype == "bf16" and type(bf16.model).__name__.startswith("Peft")  # LoRA kept beside the base
    assert load_run(runs["fp32"], device="cpu").base_dtype == "fp32"
    # Inference on a bf16 base gives what validation logged during training, on the same texts.
    saved = pd.read_csv(runs["bf16"] / "predictions" / "validation.csv")
    columns = [c for c in saved.columns if c.startswith("prob_")]
    probs, _ = bf16.probabilities(saved["text"].tolist(), 32)
    np.testing.assert_allclose(probs, saved[columns].to_numpy(), atol=1e-3)


def test_a_run_from_before_base_dtype_loads_its_base_in_fp32(runs, tmp_path):
    import shutil

    old = tmp_path / "old-run"
    shutil.copytree(runs["bf16"], old)
    config = OmegaConf.load(old / "config.yaml")
    del config.model["base_dtype"]
    OmegaConf.save(config, old / "config.yaml")
    assert load_run(old, device="cpu").base_dtype == "fp32"


def test_export_of_a_bf16_base_run_merges_into_fp32(runs, tmp_path):
    """Merged in fp32, the export equals the unmerged adapter on an fp32 base (merging into bf16 would not)."""
    out = tmp_path / "export"
    assert main(["export", str(runs["bf16"]), "--out", str(out)]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    unmerged = load_run(runs["bf16"], device="cpu", merge=False, precision="fp32")
    batch = unmerged.tokenizer(["Stocks fell as oil rose", "The team won the cup"], padding=True,
                               return_tensors="pt")
    with torch.inference_mode():
        expected = unmerged.model(**batch).logits
        got = merged(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
