"""Export stage: a run's best model as a plain Hugging Face folder, LoRA folded into the weights.

The folder loads with stock ``transformers`` alone (no textlora, no peft)::

    pipeline("text-classification", model="exported/", truncation=True)("...")   # -> [{"label": "Sports", ...}]

    OUT/
      config.json             stock model config, id2label / label2id from the run's label names
      model.safetensors       merged weights: base + LoRA update, classification head included
      tokenizer files         model_max_length set to the run's model.max_length (where truncation=True cuts)
      textlora.json           where it came from: base model, labels, trainable params, run metrics
      model.onnx              with --onnx: the same network for ONNX Runtime (checked against PyTorch)

``truncation=True``: a pipeline does not truncate unless asked, and textlora truncates at ``max_length``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from textlora.run.files import check_output_folder, folder_written_whole
from textlora.errors import TextloraError
from textlora.run.exported import run_info
from textlora.run.exported import EXPORT_INFO
from textlora.run.layout import CONFIG_FILE

# Heads that the stock AutoModelForSequenceClassification class builds itself; anything else
# (e.g. a light `linear` head) has no stock class to load into.
STOCK_HEADS = {None, "", "default", "standard", "auto"}


# What an export holds besides textlora.json: to tell an earlier export written before the list of the
# files it wrote was kept (checkpoint.OUTPUT_LIST) from a folder of the user's own.
_EXPORT_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json", "model.onnx",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                 "chat_template.jinja", EXPORT_INFO}


def _export_file(name: str) -> bool:
    return name in _EXPORT_FILES or (name.startswith("model-") and name.endswith(".safetensors"))


class ExportError(TextloraError):
    """The run cannot be exported as asked."""


def check_exportable_head(config, run_dir: Path) -> None:
    """Refuse a run whose classification head has no stock ``transformers`` class."""
    head = getattr(config.model, "head", None)
    if head not in STOCK_HEADS:
        raise ExportError(
            f"run {run_dir} uses model.head={head!r}, which stock transformers cannot represent, so it cannot be "
            "exported as a plain Hugging Face model; serve the run folder itself (`textlora serve RUN`) or "
            "retrain with the model's standard head"
        )


def export(run_dir: Path, out_dir: Path, onnx: bool = False, force: bool = False,
           base_model: Optional[str] = None) -> dict:
    """Write the run's merged model to ``out_dir`` (written to a temp folder, then renamed into place).

    Args:
        run_dir: a finished run folder (adapter/, tokenizer/, config.yaml, labels.json).
        out_dir: the folder to create; it must not exist (or be empty) unless ``force``.
        onnx: also write ``model.onnx`` and check its logits against PyTorch.
        force: replace an earlier export in ``out_dir`` (a folder holding anything else is refused).
        base_model: another copy of the run's base model, a folder or hub id (``--base-model``).
    Returns:
        The export info written to ``textlora.json`` (plus ``onnx_max_abs_diff`` with ``onnx``).
    """
    from textlora.config import config_from_yaml_file
    from textlora.run.load import load_run

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if (run_dir / CONFIG_FILE).is_file():
        check_exportable_head(config_from_yaml_file(run_dir / CONFIG_FILE), run_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; give the path of a folder to create")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"--out {out_dir} already exists and is not empty; choose a new folder or pass --force "
                          "(which replaces only an earlier export)")
    if out_dir.resolve() == run_dir.resolve() or run_dir.resolve() in out_dir.resolve().parents:
        raise ExportError(f"--out {out_dir} is inside the run folder {run_dir}; choose a folder outside it")
    # --force replaces the folder whole: only an earlier export, with nothing added to it, may go.
    check_output_folder(out_dir, EXPORT_INFO, "--out", _export_file)

    # Merged into fp32 weights whatever the run's base_dtype: merged into bf16, LoRA's update would round away.
    run = load_run(run_dir, device="cpu", merge=True, precision="fp32", base_model=base_model)
    model, tokenizer = run.model, run.tokenizer
    names = list(run.label_map.names)
    # load_run builds the config with these already; set them again so the export never depends on it.
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    # A tokenizer called with truncation=True (and no max_length) cuts at model_max_length: make that the
    # length the run was trained and evaluated with.
    tokenizer.model_max_length = run.config.model.max_length
    trained = run.config.data.train
    info = {"format": "textlora-export/1", **run_info(run_dir, run.config, run.label_map),
            # How the run read and labelled its data: classify, predict and evaluate read --data the same way.
            "data": {"column_names": None if trained.column_names is None else list(trained.column_names),
                     "text_columns": list(trained.text_columns), "label_column": trained.label_column},
            "label_map": asdict(run.label_map)}

    with folder_written_whole(out_dir, EXPORT_INFO, "--out", _export_file) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if onnx:
            info["onnx_max_abs_diff"] = export_onnx(model, tokenizer, tmp / "model.onnx")
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        # mkdtemp (and safetensors) make things private; an export is an ordinary folder to share.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
    print(f"exported {run_dir} -> {out_dir} (merged {model.__class__.__name__}, labels: {', '.join(names)})")
    return info


def export_onnx(model: torch.nn.Module, tokenizer, path: Path, atol: float = 1e-4) -> float:
    """Write ``model`` as ONNX (dynamic batch and sequence axes) and check it against PyTorch.

    Returns:
        The largest absolute logit difference between ONNX Runtime and PyTorch on a few texts.
    Raises:
        ExportError: onnx/onnxruntime are not installed, or the logits differ by more than ``atol``.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("--onnx needs onnx and onnxruntime: pip install 'textlora[onnx]'") from None
    model = model.eval()
    sample = tokenizer(["a short text", "a somewhat longer text to give the batch some padding on one row"],
                       padding=True, return_tensors="pt")
    inputs = (sample["input_ids"], sample["attention_mask"])
    with torch.inference_mode():
        expected = model(input_ids=inputs[0], attention_mask=inputs[1]).logits.numpy()
    # The TorchScript exporter (dynamo=False) needs no onnxscript and handles dynamic axes of encoders well.
    with warnings.catch_warnings():
        # Tracer warnings about shape checks that are constant for an encoder with an attention mask.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": inputs[0].numpy(), "attention_mask": inputs[1].numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise ExportError(f"ONNX export of {path} does not match PyTorch (max |logit diff| {diff:.2e} > {atol}); "
                          "export without --onnx")
    return diff

