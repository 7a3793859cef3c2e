"""What the server classifies with: a run folder or an exported (plain Hugging Face) model folder.

Both go through textlora's one inference path (``batching.tokenize`` + ``inference.predict_proba``:
length-sorted batches, results in input order), so served probabilities equal ``textlora classify``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from textlora.data.prepare import clean_texts
from textlora.errors import RunFolderError
from textlora.model.precision import precision_name
from textlora.run.layout import ADAPTER_DIR, CONFIG_FILE


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


def load_classifier(path: Path, device: str = "auto", batch_size: int = 32, onnx: bool = False,
                    precision: str = "run", base_model: Optional[str] = None,
                    max_length: Optional[int] = None) -> Classifier:
    """Load a run folder (``config.yaml`` + ``adapter/``) or an exported folder (``config.json``).

    Args:
        onnx: run an exported folder's ``model.onnx`` on ONNX Runtime (CPU) instead of PyTorch.
        base_model: for a run folder, another copy of its base model, a folder or hub id (``--base-model``).
        max_length: read texts up to this many tokens instead of the model's own (``--max-length``).
    Raises:
        RunFolderError: the folder is neither, or its files cannot be loaded; ``onnx`` without ``model.onnx``;
            ``base_model`` for an exported folder (it holds its whole model).
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path} does not exist; pass a run folder (from `textlora train`) or an exported "
                             "model folder (from `textlora export`)")
    if (path / CONFIG_FILE).is_file() and (path / ADAPTER_DIR).is_dir():
        if onnx:
            raise RunFolderError(f"--onnx serves an exported folder's model.onnx; {path} is a run folder. Export it "
                                 f"first: textlora export {path} --out DIR --onnx")
        return _from_run(path, device, batch_size, precision, base_model, max_length)
    if (path / "config.json").is_file():
        if base_model:
            raise RunFolderError(f"--base-model applies to a run folder; {path} is an exported model, which holds "
                                 "its whole model: drop --base-model")
        if onnx and not (path / "model.onnx").is_file():
            raise RunFolderError(f"{path} has no model.onnx; export with --onnx, or serve without --onnx")
        return _from_export(path, device, batch_size, onnx, precision, max_length)
    raise RunFolderError(f"{path} is neither a textlora run folder (config.yaml + adapter/) nor a Hugging Face "
                         "model folder (config.json); pass the folder `textlora train` or `textlora export` wrote")


def _from_run(path: Path, device: str, batch_size: int, precision: str = "run",
              base_model: Optional[str] = None, max_length: Optional[int] = None) -> Classifier:
    from textlora.run.exported import run_info
    from textlora.run.load import load_run

    run = load_run(path, device=device, merge=True, precision=precision, base_model=base_model, max_length=max_length)
    info = {"source": "run", **run_info(path, run.config, run.label_map), "device": str(run.device),
            "precision": precision_name(run.precision), "runtime": "pytorch"}
    clean = run.config.data.clean_backslashes

    def predict(texts: list[str]) -> np.ndarray:
        return run.probabilities(clean_texts(texts, clean, "request"), batch_size)[0]

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


def _from_export(path: Path, device: str, batch_size: int, onnx: bool = False, precision: str = "run",
                 max_length: Optional[int] = None) -> Classifier:
    from dataclasses import replace

    from textlora.run.exported import export_info
    from textlora.run.load import load_run

    # "run" precision: the run's train.mixed_precision as the export recorded it (fp32 for an export without it).
    run = load_run(path, device=device, precision=precision, max_length=max_length)
    exported = export_info(path)
    info = {"source": "export", "base_model": run.config.model.name_or_path, "labels": list(run.label_map.names),
            "max_length": run.config.model.max_length, "clean_backslashes": run.config.data.clean_backslashes,
            "trainable_params": exported.get("trainable_params"), "lora": exported.get("lora"),
            "metrics": exported.get("metrics", {}), "run_dir": exported.get("run_dir"),
            "model_dir": str(path.resolve()), "device": str(run.device), "runtime": "pytorch"}
    if onnx:
        try:
            # The graph is fp32, on the CPU; tokenizing and batching stay textlora's own.
            run = replace(run, model=OnnxClassifier(path / "model.onnx"), device=torch.device("cpu"), precision="no")
        except ImportError:
            raise RunFolderError("--onnx needs onnxruntime: pip install 'textlora[onnx]'") from None
        info.update(device="cpu", runtime="onnxruntime")
    info["precision"] = precision_name(run.precision)
    clean = run.config.data.clean_backslashes

    def predict(texts: list[str]) -> np.ndarray:
        return run.probabilities(clean_texts(texts, clean, "request"), batch_size)[0]

    return Classifier(list(run.label_map.names), info, predict)
