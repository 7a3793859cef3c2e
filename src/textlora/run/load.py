"""Batched inference shared by training-time validation, evaluate, predict and classify.

Texts are run longest-first in length-sorted batches (little padding) and the results are put
back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from transformers import AutoTokenizer

from textlora.data.batching import tokenize
from textlora.config import DataSource, RunConfig, config_from_yaml_file
from textlora.errors import ConfigError, RunFolderError
from textlora.model.forward import pick_device, predict_proba
from textlora.model.speedups import apply_speedups
from textlora.run.exported import exported_source, is_exported_folder, load_exported
from textlora.run.layout import CONFIG_FILE, LABELS_FILE, TOKENIZER_DIR
from textlora.data.labels import LabelMap
from textlora.model.precision import autocast_factory, inference_base_dtype, inference_precision
from textlora.run.folder import base_model_location


@dataclass
class LoadedRun:
    """What inference needs from a run folder."""

    path: Path
    config: RunConfig
    label_map: LabelMap
    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    precision: str = "no"
    """``bf16``, ``fp16`` or ``no`` (fp32): the autocast inference runs under."""
    base_dtype: str = "fp32"
    """``fp32``, ``bf16`` or ``fp16``: the dtype the frozen base is stored in."""

    def probabilities(self, texts: Sequence[str], batch_size: int = 64, progress=None) -> tuple[np.ndarray, int]:
        """Probabilities ``[N, K]`` and the count of texts truncated at ``max_length``."""
        tokens = tokenize(self.tokenizer, texts, self.config.model.max_length)
        probs = predict_proba(self.model, tokens, self.tokenizer.pad_token_id, batch_size, self.device,
                              autocast=autocast_factory(self.device, self.precision), progress=progress)
        if probs is None:
            probs = np.zeros((0, self.label_map.num_labels), dtype=np.float32)
        return probs, tokens.truncated


def load_run(run_dir: Path, device: str = "auto", merge: bool = True, precision: str = "run",
             base_model: Optional[str] = None, max_length: Optional[int] = None) -> LoadedRun:
    """Load a finished run folder: config, labels, tokenizer and the best adapter on its base model (or an
    exported folder, see :func:`textlora.run.exported.load_exported`).

    The base model is the run's ``model.name_or_path`` as trained (a relative path read from the current
    directory), or ``base_model`` (``--base-model``: another copy of it, a folder or hub id) when given.

    With ``merge`` the LoRA weights are folded into an fp32 base (faster inference, same outputs); a base stored
    in bf16/fp16 (``model.base_dtype``) keeps LoRA unmerged, as training validated it.
    ``precision``: ``run`` (the run's ``train.mixed_precision`` and ``model.base_dtype`` resolved on this device, as
    validation ran during training), ``fp32`` (autocast off, base in fp32) or ``bf16`` (both bf16).
    """
    from textlora.model.build import load_trained_model  # heavy import kept off the CLI's start-up path

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist; pass the folder that `textlora train` printed")
    if is_exported_folder(run_dir):  # `textlora export`'s folder (or any Hugging Face classifier folder)
        return _reading_up_to(load_exported(run_dir, device, precision, base_model), max_length)
    for name in (CONFIG_FILE, LABELS_FILE):
        if not (run_dir / name).is_file():
            raise RunFolderError(f"run folder {run_dir} has no {name}; pass a run folder that `textlora train` wrote")
    config = config_from_yaml_file(run_dir / CONFIG_FILE)
    label_map = LabelMap.load(run_dir / LABELS_FILE)
    tokenizer_dir = run_dir / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} has no tokenizer/ folder")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    target = pick_device(device)
    compute = inference_precision(precision, config.train.mixed_precision, target.type)
    base_dtype = inference_base_dtype(precision, _run_base_dtype(run_dir, config), config.train.mixed_precision,
                                      target.type, compute)
    location = base_model_location(run_dir, config.model.name_or_path, base_model)
    model = load_trained_model(run_dir, location, label_map, base_dtype=base_dtype)
    if merge and base_dtype == "fp32":
        # Merged into bf16/fp16 weights, LoRA's small update would be rounded away: a base stored in half
        # precision keeps LoRA beside it, in fp32, exactly as validation ran it during training.
        model = model.merge_and_unload()
    model.to(target).eval()
    run = _reading_up_to(LoadedRun(run_dir, config, label_map, tokenizer, model, target, compute, base_dtype), max_length)
    apply_speedups(model, run.config, target, training=False)  # e.g. the last layer for the first token only
    return run


def _reading_up_to(run: LoadedRun, max_length: Optional[int]) -> LoadedRun:
    """``run`` reading texts up to ``max_length`` tokens (``--max-length``) instead of its ``model.max_length``.

    A run trained at a short ``model.max_length`` (short training texts) can still read longer texts in full
    at inference, up to what the model's position embeddings reach; ``None`` keeps the run's own.
    """
    from textlora.model.build import check_max_length  # heavy import kept off the CLI's start-up path

    if max_length is None:
        return run
    if not 8 <= max_length <= 8192:
        raise ConfigError(f"--max-length {max_length}: must be between 8 and 8192 tokens")
    classifier = run.model.get_base_model() if hasattr(run.model, "get_base_model") else run.model
    check_max_length(max_length, run.config.model.name_or_path, classifier, what="--max-length")
    return replace(run, config=replace(run.config, model=replace(run.config.model, max_length=max_length)))


def _run_base_dtype(run_dir: Path, config: RunConfig) -> str:
    """The run's ``model.base_dtype``; ``fp32`` for runs trained before the setting existed (their base was fp32)."""
    from omegaconf import OmegaConf

    written = OmegaConf.load(run_dir / CONFIG_FILE).get("model", {})
    return config.model.base_dtype if "base_dtype" in written else "fp32"


def data_source_like_training(run_dir: Path, path: str, split: Optional[str] = None) -> DataSource:
    """The rows at ``path``, read with the options the run (or exported folder) was trained with."""
    if is_exported_folder(run_dir):
        trained = exported_source(run_dir)
    elif not run_dir.exists():
        raise RunFolderError(f"{run_dir} does not exist; pass the run folder `textlora train` printed (runs/NAME) "
                             "or the one `textlora export` wrote")
    elif not (run_dir / CONFIG_FILE).is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no {CONFIG_FILE}) nor an exported one (no config.json); "
                             "pass the folder `textlora train` printed or the one `textlora export` wrote")
    else:
        trained = config_from_yaml_file(run_dir / CONFIG_FILE).data.train
    return DataSource(path=path, split=split, column_names=trained.column_names, text_columns=trained.text_columns,
                      label_column=trained.label_column)
