"""Numbers that must hold (STYLE 8): B=0 is the base model, merged equals unmerged, what trains, exact counts."""

import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from textlora.model.budget import count_model, enforce_budget
from textlora.config import ModelConfig, OptimConfig
from textlora.errors import BudgetError
from textlora.data.labels import LabelMap
from textlora.model.build import build_model
from textlora.training.optim import build_optimizer, param_groups, unused_layer_lrs_note

LABELS = LabelMap(names=("World", "Sports", "Business", "Sci/Tech"), kind="int", base=1)


@pytest.fixture
def tiny(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora_r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["query", "value"])
    torch.manual_seed(0)
    return build_model(cfg, LABELS)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 200, (3, 12), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _lora_weights(model, which: str):
    return [p for n, p in model.named_parameters() if f"lora_{which}" in n]


def test_lora_with_b_zero_equals_the_base_model(tiny, tiny_model_dir, batch):
    assert _lora_weights(tiny.model, "B") and all((b == 0).all() for b in _lora_weights(tiny.model, "B"))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=4)
    head = tiny.model.base_model.model.classifier.modules_to_save["default"]
    base.classifier.load_state_dict(head.state_dict())
    wrapped, plain = _logits(tiny.model, batch), _logits(base, batch)
    assert wrapped.shape == (3, 4)
    torch.testing.assert_close(wrapped, plain, rtol=0, atol=1e-6)


def test_merged_equals_unmerged(tiny, batch):
    before = _logits(tiny.model, batch)
    with torch.no_grad():
        for b in _lora_weights(tiny.model, "B"):
            b.normal_(0, 0.5)
    unmerged = _logits(tiny.model, batch)
    assert (unmerged - before).abs().max() > 1e-3  # the perturbed adapter does change the output
    merged_model = tiny.model.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged_model.named_parameters())
    torch.testing.assert_close(_logits(merged_model, batch), unmerged, rtol=0, atol=1e-5)


def test_only_lora_and_head_require_grad(tiny):
    trainable = {n: p.numel() for n, p in tiny.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    frozen = [n for n, p in tiny.model.named_parameters() if not p.requires_grad]
    assert any("classifier.original_module" in n for n in frozen)
    assert any("attention.self.query.base_layer.weight" in n for n in frozen)
    # r=4 on query/value (32x32) in 2 layers: 4*(32+32)*2*2 = 1024; head 32*4+4 = 132.
    assert sum(n for name, n in trainable.items() if "lora_" in name) == 1024
    assert sum(n for name, n in trainable.items() if "modules_to_save" in name) == 132
    assert tiny.head_modules == ["classifier"] and tiny.fresh_modules == []


ROBERTA_HEAD = 768 * 768 + 768 + 768 * 4 + 4  # RobertaClassificationHead: dense + out_proj


@pytest.mark.parametrize("r, alpha, targets, layers, total", [
    (4, 96, ["query", "key", "value"], None, 814_852),
    (8, 16, ["query", "value"], "8-11", 691_972),
    (8, 16, ["query", "value"], None, 888_580),
])
def test_roberta_base_exact_counts(r, alpha, targets, layers, total):
    cfg = ModelConfig(name_or_path="roberta-base", lora_r=r, lora_alpha=alpha, target_modules=targets, layers=layers)
    breakdown, _ = count_model(cfg, num_labels=4)
    assert breakdown.total == total
    assert breakdown.groups["head: classifier"] == ROBERTA_HEAD == 593_668
    per_module = r * (768 + 768) * (4 if layers else 12)
    assert {g: n for g, n in breakdown.groups.items() if g.startswith("lora")} == \
        {f"lora: attention.self.{t}": per_module for t in targets}
    assert breakdown.fits


_SUGGESTION = re.compile(r": ([\d,]+)\s+\(model\.lora_r=(\d+) model\.layers=(\S+) model\.target_modules=\[([^\]]*)\]\)")


def test_over_budget_is_refused_with_suggestions_that_fit():
    cfg = ModelConfig(name_or_path="roberta-base", lora_r=8, target_modules=["query", "key", "value"])
    breakdown, built = count_model(cfg, num_labels=4)
    assert breakdown.total == 8 * 1536 * 3 * 12 + ROBERTA_HEAD == 1_036_036 and not breakdown.fits
    with pytest.raises(BudgetError) as info:
        enforce_budget(cfg, breakdown, built)
    message = str(info.value)
    assert "1,036,036" in message and "1,000,000" in message
    assert "lora: attention.self.key" in message and "593,668" in message
    suggestions = _SUGGESTION.findall(message)
    assert suggestions, message
    for listed, r, layers, targets in suggestions:
        listed = int(listed.replace(",", ""))
        assert listed <= cfg.max_trainable_params
        rebuilt = ModelConfig(name_or_path="roberta-base", lora_r=int(r), target_modules=targets.split(","),
                              layers=None if layers == "null" else layers)
        assert count_model(rebuilt, num_labels=4)[0].total == listed, (r, layers, targets)
    # Largest first: dropping layer 0 keeps the most (999,172).
    assert int(suggestions[0][0].replace(",", "")) == 8 * 1536 * 3 * 11 + ROBERTA_HEAD


def test_layer_wise_learning_rates_and_no_decay_on_biases(tiny):
    cfg = OptimConfig(lr=1e-4, layer_lrs={"0-0": 1e-5, "1-1": 3e-4}, head_lr=1e-3, weight_decay=0.01)
    groups = param_groups(tiny.model, cfg, tiny.head_modules + tiny.fresh_modules)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    trainable = [(n, p) for n, p in tiny.model.named_parameters() if p.requires_grad]
    assert len(setting) == len(trainable)
    for name, param in trainable:
        lr, decay = setting[id(param)]
        if "classifier" in name:
            expected_lr = 1e-3
        else:
            expected_lr = {"0": 1e-5, "1": 3e-4}[re.search(r"\.layer\.(\d+)\.", name).group(1)]
        assert lr == expected_lr, name
        assert decay == (0.0 if name.endswith("bias") else 0.01), name
    assert sum(name.endswith("bias") for name, _ in trainable) == 1  # the classifier's bias


def test_layer_lrs_ranges_without_trainable_parameters_are_named(tiny_model_dir, tiny):
    # S2's shape: LoRA on the last layer only, a layer-wise LR also given for a layer LoRA does not touch.
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora_r=4, lora_alpha=8, target_modules=["query", "value"],
                      layers="1")
    built = build_model(cfg, LABELS)
    trained = built.head_modules + built.fresh_modules
    optim = OptimConfig(lr=1e-4, layer_lrs={"0-0": 1e-5, "1-1": 3e-4}, head_lr=1e-3)
    note = unused_layer_lrs_note(built.model, optim, trained)
    assert note == ("[optim] optim.layer_lrs 0-0: no effect, no trainable parameter takes these learning rates "
                    "(trainable parameters are only in layers 1; a layer takes the first range that contains it)")
    # A range shadowed by an earlier one has no effect either; ranges that set some LR are not named.
    shadowed = OptimConfig(lr=1e-4, layer_lrs={"0-1": 1e-5, "1-1": 3e-4})
    assert "optim.layer_lrs 1-1:" in unused_layer_lrs_note(tiny.model, shadowed, tiny.head_modules)
    assert unused_layer_lrs_note(tiny.model, OptimConfig(layer_lrs={"0-0": 1e-5, "1-1": 3e-4}), trained) is None
    assert unused_layer_lrs_note(built.model, OptimConfig(), trained) is None


def test_adamw_is_fused_on_cpu_and_cuda_only_and_steps_like_torchs_loop_version(tiny):
    cfg = OptimConfig(lr=1e-4, layer_lrs={"0-0": 1e-5}, head_lr=1e-3, weight_decay=0.01)
    trained = tiny.head_modules + tiny.fresh_modules
    assert build_optimizer(tiny.model, cfg, trained, "cuda").defaults["fused"]
    assert not build_optimizer(tiny.model, cfg, trained, "mps").defaults["fused"]
    optimizer = build_optimizer(tiny.model, cfg, trained, "cpu")
    assert optimizer.defaults["fused"]
    reference = torch.optim.AdamW(param_groups(tiny.model, cfg, trained), lr=cfg.lr)  # torch's loop version
    params = [p for g in optimizer.param_groups for p in g["params"]]
    start = [p.detach().clone() for p in params]
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in params]
    updates = []
    for opt in (optimizer, reference):
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        updates.append([p.detach() - s for p, s in zip(params, start)])
    for fused_update, loop_update in zip(*updates):
        torch.testing.assert_close(fused_update, loop_update)
