"""Extra evaluation sets (``data.eval_sets``): scored at every evaluation next to validation, never trained on.

During training each set's loss, accuracy and macro-F1 go into the metrics.jsonl eval record under
``"sets"`` (the validation keys stay at the top level), and ``train.metric_for_best`` may pick the
best model by one set's metric (``shifted/accuracy``) or by the mean / lowest over validation and
every set (``mean/accuracy``, ``min/accuracy``). At the end the best model's full metrics are
written to ``RUN/eval_sets/NAME.json`` and its per-example predictions to
``RUN/predictions/eval_sets/NAME.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from textlora.config import COMBINED, DataSource, parse_metric_for_best
from textlora.data.prepare import Split
from textlora.run.metrics import write_metrics
from textlora.run.records import EVAL_SETS_DIR, PREDICTIONS_DIR, save_predictions

HEADLINE = ("loss", "accuracy", "macro_f1")
"""The metrics logged per set at every evaluation and kept in summary.json."""


def headline(metrics: dict) -> dict:
    """``{"loss", "accuracy", "macro_f1"}`` of one set's full metrics."""
    return {key: metrics[key] for key in HEADLINE}


def selection_value(spec: str, validation: dict, sets: Mapping[str, dict]) -> float:
    """The value of ``train.metric_for_best`` ``spec`` for one evaluation.

    Args:
        validation: the validation split's metrics.
        sets: ``{name: metrics}`` of every eval set (at least ``HEADLINE``).
    """
    scope, metric = parse_metric_for_best(spec)
    if scope is None:
        return validation[metric]
    if scope in COMBINED:
        values = [validation[metric]] + [m[metric] for m in sets.values()]
        return float(np.mean(values)) if scope == "mean" else float(min(values))
    return sets[scope][metric]


def lower_is_better(spec: str) -> bool:
    return parse_metric_for_best(spec)[1] == "loss"


def eval_line(step: int, validation: dict, sets: Mapping[str, dict], spec: str, value: float, best: bool) -> str:
    """The printed ``[eval]`` line: validation's numbers, each set's accuracy, and a combined value when one picks."""
    line = (f"[eval] step {step}: accuracy {validation['accuracy']:.4f} macro-F1 {validation['macro_f1']:.4f} "
            f"loss {validation['loss']:.4f}")
    for name, metrics in sets.items():
        line += f" | {name} accuracy {metrics['accuracy']:.4f}"
    if parse_metric_for_best(spec)[0] in COMBINED:
        line += f" | {spec} {value:.4f}"
    return line + ("  (best)" if best else "")


def write_final(run_dir: Path, splits: Mapping[str, Split], sources: Mapping[str, DataSource],
                metrics: Mapping[str, dict], probs: Mapping[str, np.ndarray], names: Sequence[str], step: int) -> None:
    """Write the best model's ``eval_sets/NAME.json`` and ``predictions/eval_sets/NAME.csv`` for every set.

    Args:
        splits, sources: each set's rows and where they came from (``data.eval_sets``).
        metrics, probs: the best model's metrics and ``[N, K]`` probabilities per set.
        names: the K class names.
        step: the best model's step.
    """
    (run_dir / EVAL_SETS_DIR).mkdir(exist_ok=True)
    for name, result in metrics.items():
        write_metrics(run_dir / EVAL_SETS_DIR / f"{name}.json",
                      {**result, "split": name, "data": sources[name].path, "step": step})
        save_predictions(run_dir / PREDICTIONS_DIR / EVAL_SETS_DIR / f"{name}.csv", splits[name].texts,
                         splits[name].labels, probs[name], names)
