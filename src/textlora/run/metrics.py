"""Classification metrics (accuracy, precision/recall/F1, confusion matrix, one-vs-rest ROC-AUC) and their files.

Training validation, ``textlora evaluate`` and the eval sets all compute and write them here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from textlora.run.files import atomic_write_text


def classification_metrics(labels: Sequence[int], probs: np.ndarray, names: Sequence[str]) -> dict:
    """All metrics for true class ids ``labels`` [N] and probabilities ``probs`` [N, K]."""
    labels = np.asarray(labels)
    preds = probs.argmax(axis=1)
    classes = list(range(len(names)))
    result = {"rows": int(len(labels)), "accuracy": float((preds == labels).mean())}
    eps = 1e-12
    result["loss"] = float(-np.log(probs[np.arange(len(labels)), labels] + eps).mean())
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, preds, labels=classes, average=average, zero_division=0)
        result[f"{average}_precision"], result[f"{average}_recall"], result[f"{average}_f1"] = float(p), float(r), float(f)
    p, r, f, support = precision_recall_fscore_support(labels, preds, labels=classes, average=None, zero_division=0)
    aucs = _roc_auc_per_class(labels, probs, classes)
    result["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i]),
               "roc_auc": aucs[i]}
        for i, name in enumerate(names)
    }
    present = [a for a in aucs if a is not None]
    result["roc_auc_macro_ovr"] = float(np.mean(present)) if present else None
    result["confusion_matrix"] = confusion_matrix(labels, preds, labels=classes).tolist()
    result["label_names"] = list(names)
    return result


def _roc_auc_per_class(labels: np.ndarray, probs: np.ndarray, classes: list[int]) -> list[Optional[float]]:
    # One-vs-rest AUC is undefined for a class that is absent (or alone) in the data: reported as null.
    aucs = []
    for c in classes:
        positives = labels == c
        aucs.append(float(roc_auc_score(positives, probs[:, c])) if 0 < positives.sum() < len(labels) else None)
    return aucs


def format_metrics(metrics: dict) -> str:
    """A plain-text table: headline numbers, per-class scores and the confusion matrix."""
    auc = metrics.get("roc_auc_macro_ovr")
    lines = [f"rows {metrics['rows']}   accuracy {metrics['accuracy']:.4f}   loss {metrics['loss']:.4f}   "
             f"ROC-AUC (macro, one-vs-rest) {auc:.4f}" if auc is not None else
             f"rows {metrics['rows']}   accuracy {metrics['accuracy']:.4f}   loss {metrics['loss']:.4f}",
             f"macro     P {metrics['macro_precision']:.4f}  R {metrics['macro_recall']:.4f}  F1 {metrics['macro_f1']:.4f}",
             f"weighted  P {metrics['weighted_precision']:.4f}  R {metrics['weighted_recall']:.4f}  F1 {metrics['weighted_f1']:.4f}",
             ""]
    names = metrics["label_names"]
    width = max(10, *(len(n) for n in names))
    lines.append(f"{'class':<{width}}  {'precision':>9}  {'recall':>7}  {'f1':>7}  {'auc':>7}  {'support':>7}")
    for name in names:
        row = metrics["per_class"][name]
        auc_text = f"{row['roc_auc']:.4f}" if row["roc_auc"] is not None else "   n/a"
        lines.append(f"{name:<{width}}  {row['precision']:>9.4f}  {row['recall']:>7.4f}  {row['f1']:>7.4f}  "
                     f"{auc_text:>7}  {row['support']:>7}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * width + "  " + "  ".join(f"{n[:8]:>8}" for n in names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>8}" for v in row))
    return "\n".join(lines)


def write_metrics(path: Path, metrics: dict) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
