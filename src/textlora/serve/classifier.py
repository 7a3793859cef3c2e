"""What the server classifies with: a run folder or an exported (plain Hugging Face) model folder.

Both go through textlora's one inference path (``batching.tokenize`` + ``inference.predict_proba``:
length-sorted batches, results in input order), so served probabilities equal ``textlora classify``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import RunFolderError
from ..precision import autocast_factory, inference_precision, precision_name


@dataclass
class Classifier:
    """A loaded model behind one function.

    Attributes:
        labels: class names in id order.
        info: what ``GET /v1/model`` reports (base model, labels, trainable params, metrics, ...).
        predict: texts -> probabilities ``[N, K]`` (float32), in input order.
    """

    labels: list[str]
    info: dict
    predict: Callable[[list[str]], np.ndarray]


def _clean(texts: list[str], clean_backslashes: bool) -> list[str]:
    """The text normalisation the run was trained with (``data.extract_texts``)."""
    import pandas as pd

    from ..data import extract_texts

    return extract_texts(pd.DataFrame({"text": texts}), ["text"], "request", clean_backslashes)


def load_classifier(path: Path, device: str = "auto", batch_size: int = 32, onnx: bool = False,
                    precision: str = "run") -> Classifier:
    """Load a run folder (``config.yaml`` + ``adapter/``) or an exported folder (``config.json``).

    Args:
        onnx: run an exported folder's ``model.onnx`` on ONNX Runtime (CPU) instead of PyTorch.
    Raises:
        RunFolderError: the folder is neither, or its files cannot be loaded; ``onnx`` without ``model.onnx``.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path} does not exist; pass a run folder (from `textlora train`) or an exported "
                             "model folder (from `textlora export`)")
    if (path / "config.yaml").is_file() and (path / "adapter").is_dir():
        if onnx:
            raise RunFolderError(f"--onnx serves an exported folder's model.onnx; {path} is a run folder. Export it "
                                 f"first: textlora export {path} --out DIR --onnx")
        return _from_run(path, device, batch_size, precision)
    if (path / "config.json").is_file():
        if onnx and not (path / "model.onnx").is_file():
            raise RunFolderError(f"{path} has no model.onnx; export with --onnx, or serve without --onnx")
        return _from_export(path, device, batch_size, onnx, precision)
    raise RunFolderError(f"{path} is neither a textlora run folder (config.yaml + adapter/) nor a Hugging Face "
                         "model folder (config.json); pass the folder `textlora train` or `textlora export` wrote")


def _from_run(path: Path, device: str, batch_size: int, precision: str = "run") -> Classifier:
    from ..export import run_info
    from ..inference import load_run

    run = load_run(path, device=device, merge=True, precision=precision)
    info = {"source": "run", **run_info(path, run.config, run.label_map), "device": str(run.device),
            "precision": precision_name(run.precision), "runtime": "pytorch"}
    clean = run.config.data.clean_backslashes

    def predict(texts: list[str]) -> np.ndarray:
        return run.probabilities(_clean(texts, clean), batch_size)[0]

    return Classifier(list(run.label_map.names), info, predict)


class OnnxClassifier(torch.nn.Module):
    """``model.onnx`` behind the ``forward`` that ``predict_proba`` calls, so batching stays textlora's own."""

    def __init__(self, onnx_path: Path):
        super().__init__()
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        """Logits ``[B, K]`` for token ids ``[B, T]`` (int64 on the CPU)."""
        logits = self.session.run(["logits"], {"input_ids": input_ids.numpy(),
                                               "attention_mask": attention_mask.numpy()})[0]
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


def _from_export(path: Path, device: str, batch_size: int, onnx: bool = False, precision: str = "run") -> Classifier:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..batching import tokenize
    from ..export import EXPORT_INFO
    from ..inference import pick_device, predict_proba
    from ..model import _quiet_transformers

    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path)
    except Exception as exc:  # missing weights, corrupt files, unknown architecture
        raise RunFolderError(f"could not load the model in {path}: {str(exc).splitlines()[0]}") from None
    target = pick_device(device)
    model.to(target).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    exported = json.loads((path / EXPORT_INFO).read_text()) if (path / EXPORT_INFO).is_file() else {}
    positions = getattr(model.config, "max_position_embeddings", 512)
    max_length = int(exported.get("max_length") or min(tokenizer.model_max_length, positions))
    clean = bool(exported.get("clean_backslashes", False))
    info = {"source": "export", "base_model": exported.get("base_model", model.config.name_or_path or str(path)),
            "labels": labels, "max_length": max_length, "clean_backslashes": clean,
            "trainable_params": exported.get("trainable_params"), "lora": exported.get("lora"),
            "metrics": exported.get("metrics", {}), "run_dir": exported.get("run_dir"),
            "model_dir": str(path.resolve()), "device": str(target), "runtime": "pytorch"}
    # "run": the run's train.mixed_precision as the export recorded it (fp32 for an export without it).
    compute = inference_precision(precision, exported.get("mixed_precision", "no"), target.type)
    if onnx:
        try:
            model, target = OnnxClassifier(path / "model.onnx"), torch.device("cpu")
        except ImportError:
            raise RunFolderError("--onnx needs onnxruntime: pip install 'textlora[onnx]'") from None
        info.update(device="cpu", runtime="onnxruntime")
        compute = "no"  # the graph is fp32
    info["precision"] = precision_name(compute)

    def predict(texts: list[str]) -> np.ndarray:
        tokens = tokenize(tokenizer, _clean(texts, clean), max_length)
        return predict_proba(model, tokens, tokenizer.pad_token_id, batch_size, target,
                             autocast=autocast_factory(target, compute))

    return Classifier(labels, info, predict)
