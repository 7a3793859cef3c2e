"""An exported folder (``textlora export``) read back for inference, as a run folder is by ``inference.load_run``.

classify, predict, evaluate and serve take either folder. An exported folder is a plain Hugging Face
model folder (``config.json`` with ``id2label``, weights, tokenizer); its ``textlora.json`` says how the
run read and labelled its data. A folder without it (any fine-tuned classifier) is read with defaults:
a ``text`` column, int labels 0..K-1 or the names in ``id2label``, the tokenizer's own length limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from textlora.config import DataConfig, DataSource, ModelConfig, RunConfig, TrainConfig
from textlora.errors import RunFolderError
from textlora.data.labels import LabelMap
from textlora.run.files import read_json
from textlora.run.layout import CONFIG_FILE, SUMMARY_FILE

EXPORT_INFO = "textlora.json"
"""What ``textlora export`` writes beside the model: base model, labels, how the run read its data, metrics."""


def is_exported_folder(path: Path) -> bool:
    """A Hugging Face model folder (``config.json``) that is not a run folder (``config.yaml``)."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / CONFIG_FILE).is_file()


def export_info(path: Path) -> dict:
    """The folder's ``textlora.json`` ({} when it has none or it cannot be read)."""
    try:
        info = json.loads((Path(path) / EXPORT_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def exported_source(path: Path) -> DataSource:
    """How the exported run read its training data (column names, text and label columns): the defaults
    that evaluate and predict read ``--data`` with. An export without that record reads a ``text`` column."""
    data = export_info(path).get("data") or {}
    defaults = DataSource()
    return DataSource(column_names=data.get("column_names"), text_columns=data.get("text_columns") or
                      defaults.text_columns, label_column=data.get("label_column") or defaults.label_column)


def load_exported(path: Path, device: str = "auto", precision: str = "run", base_model: Optional[str] = None):
    """Load an exported folder as a :class:`~textlora.run.load.LoadedRun` (merged model, nothing to merge).

    ``precision``: ``run`` (the run's ``train.mixed_precision`` as the export recorded it; fp32 without a
    record), ``fp32`` or ``bf16``.

    Raises:
        RunFolderError: the weights or tokenizer cannot be loaded; ``base_model`` given (the folder holds its weights).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textlora.run.load import LoadedRun
    from textlora.model.forward import pick_device
    from textlora.model.build import _quiet_transformers
    from textlora.model.precision import inference_precision

    path = Path(path)
    if base_model is not None:
        raise RunFolderError(f"{path} is an exported folder, which holds its merged weights; drop --base-model "
                             "(it names the base model of a run folder)")
    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path)
    except Exception as exc:  # missing weights, corrupt files, unknown architecture
        raise RunFolderError(f"could not load the model in {path}: {str(exc).splitlines()[0]}") from None
    info = export_info(path)
    names = tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels))
    recorded = info.get("label_map") or {}
    if recorded.get("names") and tuple(recorded["names"]) == names:
        label_map = LabelMap(names=names, kind=recorded.get("kind", "int"), base=recorded.get("base"))
    else:  # a plain Hugging Face folder: class ids are its int labels, id2label's names its string labels
        label_map = LabelMap(names=names, kind="int", base=0)
    positions = getattr(model.config, "max_position_embeddings", 512)
    # Clamped to what a config allows: a folder without a record may carry a huge "no limit" model_max_length.
    max_length = max(8, min(8192, int(info.get("max_length") or min(tokenizer.model_max_length, positions))))
    mixed_precision = info.get("mixed_precision") or "no"
    config = RunConfig(model=ModelConfig(name_or_path=info.get("base_model") or model.config.name_or_path or str(path),
                                         max_length=max_length),
                       data=DataConfig(train=exported_source(path),
                                       clean_backslashes=bool(info.get("clean_backslashes", False))),
                       train=TrainConfig(mixed_precision=mixed_precision))
    target = pick_device(device)
    model.to(target).eval()
    return LoadedRun(path, config, label_map, tokenizer, model, target,
                     inference_precision(precision, mixed_precision, target.type))



def run_info(run_dir: Path, config, label_map) -> dict:
    """What ``textlora serve`` reports at ``/v1/model``: base model, labels, budget, metrics."""
    summary = read_json(run_dir / SUMMARY_FILE, required=False, damaged_ok=True)
    metrics = {key: summary[key] for key in ("validation_accuracy", "test_accuracy", "best_metric", "best_value",
                                             "best_step") if summary.get(key) is not None}
    return {
        "base_model": config.model.name_or_path,
        "labels": list(label_map.names),
        "max_length": config.model.max_length,
        "clean_backslashes": config.data.clean_backslashes,
        "trainable_params": summary.get("trainable_params"),
        "lora": {"r": config.model.lora_r, "alpha": config.model.lora_alpha,
                 "target_modules": list(config.model.target_modules), "layers": config.model.layers},
        "metrics": metrics,
        "run_dir": str(Path(run_dir).resolve()),
        # The run's setting (e.g. auto), resolved where the model runs: serving an export computes like the run.
        "mixed_precision": config.train.mixed_precision,
    }
