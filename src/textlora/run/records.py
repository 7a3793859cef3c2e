"""Reading a finished run folder for reports and comparisons, and the per-example predictions training saves.

Reports and plots are drawn from these files only, never from live training state, so a report
can be redrawn at any time from the folder alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from textlora.run.files import atomic_write_text, read_json
from textlora.errors import RunFolderError
from textlora.run.layout import EVAL_SETS_DIR, PREDICTIONS_DIR  # noqa: F401 (also imported from here)
from textlora.run.layout import (ADAPTER_DIR, BUDGET_FILE, CONFIG_FILE, DATA_REPORT_FILE, EVAL_FILE, LABELS_FILE,
                                 METRICS_FILE, SUMMARY_FILE, TEST_EVAL_FILE)

"""Folder of the run (and of ``predictions/``) holding one file per ``data.eval_sets`` set."""


def save_predictions(path: Path, texts: Sequence[str], labels: Sequence[int], probs: np.ndarray,
                     names: Sequence[str]) -> None:
    """Write one CSV row per example: true and predicted class, confidence, ``prob_<class>`` columns, text.

    Args:
        texts, labels: the split's N texts and true class ids.
        probs: ``[N, K]`` class probabilities from the best model.
        names: the K class names.
    """
    labels = np.asarray(labels)
    preds = probs.argmax(axis=1)
    frame = pd.DataFrame({"row": np.arange(len(labels)), "label": labels, "label_name": [names[i] for i in labels],
                          "pred": preds, "pred_name": [names[i] for i in preds],
                          "confidence": probs[np.arange(len(preds)), preds]})
    # Probabilities are written unrounded: rounding would create ties that change ROC-AUC.
    for k, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, k]
    frame["text"] = list(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, frame.to_csv(index=False))


def full_model_params(model: torch.nn.Module) -> int:
    """Parameters of the model as stock transformers holds it: peft's LoRA matrices and saved head copies excluded."""
    return sum(p.numel() for name, p in model.named_parameters()
               if ".lora_" not in name and ".modules_to_save." not in name)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


@dataclass
class RunData:
    """Everything the report and compare need, read from one run folder."""

    path: Path
    name: str
    summary: dict
    budget: dict
    data_report: dict
    labels: list[str]
    train_log: pd.DataFrame
    """Training lines of metrics.jsonl: step, epoch, loss, lr, samples_per_s, tokens_per_s."""
    eval_log: pd.DataFrame
    """Evaluation lines of metrics.jsonl: step, loss, accuracy, macro_f1, best (validation), and for runs with
    eval sets ``NAME/loss``, ``NAME/accuracy``, ``NAME/macro_f1`` per set (from the record's ``"sets"``)."""
    config: dict = field(default_factory=dict)
    evals: dict = field(default_factory=dict)
    """``{"validation": eval.json, "test": test_eval.json}`` (those present)."""
    predictions: dict = field(default_factory=dict)
    """``{"validation"|"test": DataFrame}`` from predictions/*.csv (those present)."""
    set_evals: dict = field(default_factory=dict)
    """``{name: eval_sets/NAME.json}``: the best model on each ``data.eval_sets`` set."""
    set_predictions: dict = field(default_factory=dict)
    """``{name: DataFrame}`` from predictions/eval_sets/NAME.csv (those present)."""

    def adapter_bytes(self) -> int:
        return folder_bytes(self.path / ADAPTER_DIR)

    def probabilities(self, split: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """True class ids ``[N]`` and probabilities ``[N, K]`` of ``split``, or None when not saved."""
        frame = self.predictions.get(split)
        if frame is None:
            return None
        return frame["label"].to_numpy(), frame[[f"prob_{n}" for n in self.labels]].to_numpy()


def _read_metrics(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not path.is_file():
        raise RunFolderError(f"{path.parent} has no metrics.jsonl; pass a run folder that has trained")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise RunFolderError(f"{path}, line {number}: not valid JSON; the metrics log is damaged") from None
            sets = record.pop("sets", None) or {}  # eval sets' numbers as NAME/metric columns
            record.update({f"{name}/{key}": value for name, metrics in sets.items() for key, value in metrics.items()})
            records.append(record)
    frame = pd.DataFrame(records)
    if frame.empty or "kind" not in frame:
        return pd.DataFrame(columns=["step", "loss", "lr"]), pd.DataFrame(columns=["step", "loss", "accuracy"])
    train = frame[frame["kind"] == "train"].dropna(axis=1, how="all").reset_index(drop=True)
    evals = frame[frame["kind"] == "eval"].dropna(axis=1, how="all").reset_index(drop=True)
    return train, evals


def load_run_data(run_dir: Path) -> RunData:
    """Read a finished run folder; optional files (test_eval.json, eval_sets/, predictions/) are read when present.

    Raises:
        RunFolderError: the folder lacks summary.json, budget.json, labels.json or metrics.jsonl.
    """
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist; pass the folder that `textlora train` printed")
    labels = read_json(run_dir / LABELS_FILE)["names"]
    train_log, eval_log = _read_metrics(run_dir / METRICS_FILE)
    config_path = run_dir / CONFIG_FILE
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    run = RunData(path=run_dir, name=run_dir.name, summary=read_json(run_dir / SUMMARY_FILE),
                  budget=read_json(run_dir / BUDGET_FILE), data_report=read_json(run_dir / DATA_REPORT_FILE, False),
                  labels=labels, train_log=train_log, eval_log=eval_log, config=config or {})
    for split, file in (("validation", EVAL_FILE), ("test", TEST_EVAL_FILE)):
        metrics = read_json(run_dir / file, required=False)
        if metrics:
            run.evals[split] = metrics
        predictions = run_dir / PREDICTIONS_DIR / f"{split}.csv"
        if predictions.is_file():
            run.predictions[split] = pd.read_csv(predictions, keep_default_na=False)
    order = list(run.summary.get("eval_sets", {}))  # the config's order
    for file in sorted((run_dir / EVAL_SETS_DIR).glob("*.json"),
                       key=lambda f: (order.index(f.stem) if f.stem in order else len(order), f.stem)):
        name = file.stem
        run.set_evals[name] = read_json(file)
        predictions = run_dir / PREDICTIONS_DIR / EVAL_SETS_DIR / f"{name}.csv"
        if predictions.is_file():
            run.set_predictions[name] = pd.read_csv(predictions, keep_default_na=False)
    return run


def eval_set_names(eval_log: pd.DataFrame) -> list[str]:
    """Names of the eval sets in a run's evaluation log (its ``NAME/accuracy`` columns), in logged order."""
    return [column[:-len("/accuracy")] for column in eval_log.columns if column.endswith("/accuracy")]
