"""Memory kept for the backward pass by textlora's CPU dropout: a byte mask (now) vs a mask in the input's dtype (before).

The dropout modules keep their boolean mask (1 byte per element) for backward, where they kept the
scaled mask in the input's dtype (4 bytes for a LoRA input in fp32, 2 for hidden states in bf16):
the products are the same bit for bit (tests/test_cpu_dropout.py). One training-mode forward pass of
48 real AG News texts (cut at 128 tokens, padded to the longest) with LoRA r=8 on query/value of every
layer, in the precision ``auto`` picks, adding up the bytes of every distinct tensor autograd keeps for
backward (``torch.autograd.graph.saved_tensors_hooks``); for all-MiniLM-L6 and the roberta-base shape.

    python benchmarks/dropout_saved_memory.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc  # noqa: E402

BATCH = 48


def _float_mask_dropout():
    """The dropout as it was: the scaled mask in the input's dtype is what backward keeps."""
    import torch

    from textlora.speed import cpu_dropout

    class FloatMaskDropout(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, p):
            mask = cpu_dropout.keep_scale(x.shape, p, x.dtype)
            ctx.save_for_backward(mask)
            return x * mask

        @staticmethod
        def backward(ctx, grad):
            (mask,) = ctx.saved_tensors
            return grad * mask, None

    return FloatMaskDropout


def _kept_for_backward_mb(model, batch: dict, autocast) -> float:
    """MB of distinct tensors autograd keeps for backward in one forward pass of ``batch``."""
    import torch

    seen: dict[tuple, int] = {}

    def pack(tensor):
        seen[(tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast():
        model(**batch).logits.float().sum()
    return sum(seen.values()) / 1e6


def _measure(model_dir: str, rows: bc.Rows) -> tuple[dict, str, int]:
    import torch
    from transformers import AutoTokenizer

    from textlora.speed import cpu_dropout
    from textlora.config import ModelConfig
    from textlora.data.labels import LabelMap
    from textlora.model.build import build_model
    from textlora.model.precision import autocast_factory, precision_name, resolve_precision

    torch.manual_seed(0)
    cfg = ModelConfig(name_or_path=model_dir, max_length=128, lora_r=8, lora_alpha=16,
                      target_modules=("query", "value"), max_trainable_params=10**9)
    model = build_model(cfg, LabelMap(tuple(bc.LABEL_NAMES), "int", 0)).model.train()
    cpu_dropout.install(model)
    batch = dict(AutoTokenizer.from_pretrained(model_dir)(rows.texts, truncation=True, max_length=128,
                                                          padding=True, return_tensors="pt"))
    precision = resolve_precision("auto", "cpu")
    autocast = autocast_factory(torch.device("cpu"), precision)
    now = cpu_dropout._Dropout
    arms = {"byte mask (textlora now)": now, "mask in the input's dtype (before)": _float_mask_dropout()}
    kept = {}
    try:
        for name, dropout in arms.items():
            cpu_dropout._Dropout = dropout
            kept[name] = _kept_for_backward_mb(model, batch, autocast)
    finally:
        cpu_dropout._Dropout = now
    return kept, precision_name(precision), int(batch["input_ids"].shape[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(bc.REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    p.add_argument("--section", default="dropout_saved_memory")
    args = p.parse_args()

    rows = bc.load_agnews(bc.default_train_data(), count=BATCH, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        models = {"all-MiniLM-L6-v2": bc.default_model("cpu")}
        roberta = bc.SHARED / "models/roberta-base-config"
        if roberta.is_dir():  # config and tokenizer only: random weights of that shape
            models["roberta-base shape (random weights)"] = bc.materialize_model(str(roberta), Path(workdir))
        table, notes = [], set()
        for label, folder in models.items():
            kept, precision, length = _measure(folder, rows)
            now, before = kept.values()
            table.append([label, f"{before:.1f}", f"{now:.1f}", f"{1 - now / before:.0%}"])
            notes.add(f"{precision}, padded length {length}")
    text = bc.section_head("CPU dropout: memory kept for the backward pass, byte mask vs mask in the input's dtype") + [
        f"One training-mode forward pass of {BATCH} real AG News train rows ({bc.default_train_data().name}); "
        f"LoRA r=8 on query/value of every layer; textlora's CPU dropout installed; {'; '.join(sorted(notes))}. "
        "MB: distinct tensors autograd keeps for backward (saved_tensors_hooks).", "",
        bc.markdown_table(["model", "before (MB)", "now (MB)", "less"], table), ""]
    bc.publish_section(args.out, args.section, "\n".join(text))


if __name__ == "__main__":
    main()
