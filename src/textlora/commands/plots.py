"""The report's and the comparison's figures, one function per figure, each writing one PNG.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch), so drawing works headless and never disturbs a caller's own matplotlib state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from sklearn.metrics import auc, roc_curve

from textlora.run.records import eval_set_names

DPI = 130
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def _save(fig: Figure, path: Path, rect=(0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=DPI)
    return path


def class_distribution(counts: dict, path: Path) -> Path:
    """Bars of training rows per class, each labelled with its count and share."""
    names, values = list(counts), np.array(list(counts.values()))
    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.8))
    ax = fig.add_subplot()
    bars = ax.bar(names, values, color=COLORS[0])
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:,}\n({value / values.sum():.1%})", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=8.5)
    ax.set_ylim(0, values.max() * 1.22)
    ax.set_ylabel("training rows")
    ax.set_title(f"Class distribution of the training data ({values.sum():,} rows)")
    if len(names) > 6:
        ax.tick_params(axis="x", labelrotation=30)
    return _save(fig, path)


def length_distribution(before: dict, after: dict, words: dict, cutoffs: tuple[Optional[int], Optional[int]],
                        path: Path) -> Path:
    """Histogram of training texts' word counts, median and 95th percentile marked, filter cut-offs shown.

    Args:
        before / after: ``{"words": [...], "rows": [...]}`` histograms before and after the length filter.
        words: ``{"median", "p95"}`` of the kept rows.
        cutoffs: ``(min_words, max_words)`` of the length filter (None where unset).
    """
    lengths_all = np.asarray(before["words"]) if before else np.asarray(after["words"])
    top = int(lengths_all.max())
    # Whole-word bins (every bin covers the same number of integer lengths): no comb artefacts.
    width = max(1, int(np.ceil((top + 1) / 60)))
    bins = np.arange(0, top + width + 1, width) - 0.5
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot()
    if before and sum(before["rows"]) != sum(after["rows"]):
        ax.hist(before["words"], bins=bins, weights=before["rows"], color="#c7c7c7",
                label=f"before the length filter ({sum(before['rows']):,} rows)")
    ax.hist(after["words"], bins=bins, weights=after["rows"], color=COLORS[0], alpha=0.85,
            label=f"training rows ({sum(after['rows']):,})")
    ax.axvline(words["median"], color="black", linestyle="-", linewidth=1.5, label=f"median {words['median']:g} words")
    ax.axvline(words["p95"], color="black", linestyle=":", linewidth=1.5, label=f"95th percentile {words['p95']:g} words")
    low, high = cutoffs
    for value, side in ((low, "min"), (high, "max")):
        if value is not None:
            ax.axvline(value, color=COLORS[3], linestyle="--", linewidth=1.5, label=f"filter {side}_words = {value}")
    if low is None and high is None:
        ax.plot([], [], " ", label="no length filter")
    ax.set_xlabel("words per text")
    ax.set_ylabel("rows")
    ax.set_title("Text length of the training data")
    ax.legend(fontsize=8.5)
    return _save(fig, path)


def training_curves(train_log: pd.DataFrame, eval_log: pd.DataFrame, path: Path,
                    best_step: Optional[int] = None) -> Path:
    """Three panels against optimizer steps: train and validation loss, validation accuracy / macro-F1, LR.

    Eval sets (``NAME/loss``, ``NAME/accuracy`` columns of ``eval_log``) get a loss and an accuracy curve each.
    """
    sets = eval_set_names(eval_log)
    fig = Figure(figsize=(13, 3.9))
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    if not train_log.empty:
        loss_ax.plot(train_log["step"], train_log["loss"], color=COLORS[0], label="training loss")
        lr_ax.plot(train_log["step"], train_log["lr"], color=COLORS[2])
    if not eval_log.empty:
        loss_ax.plot(eval_log["step"], eval_log["loss"], color=COLORS[1], marker="o", label="validation loss")
        prefix = "validation " if sets else ""
        acc_ax.plot(eval_log["step"], eval_log["accuracy"], color=COLORS[1], marker="o", label=f"{prefix}accuracy")
        if "macro_f1" in eval_log:
            acc_ax.plot(eval_log["step"], eval_log["macro_f1"], color=COLORS[4], marker="s", markersize=4,
                        linestyle="--", label=f"{prefix}macro-F1")
        for i, row in eval_log.iterrows():
            acc_ax.annotate(f"{row['accuracy']:.3f}", (row["step"], row["accuracy"]), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=7.5)
        for k, name in enumerate(sets):
            color = COLORS[(5 + k) % len(COLORS)]
            for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
                ax.plot(eval_log["step"], eval_log[f"{name}/{key}"], color=color, marker="^", markersize=4,
                        linestyle="-.", label=f"{name} {key}")
    if not eval_log.empty:
        # A short run may have a single evaluation: keep a readable scale around it instead of 1e-5 ticks.
        columns = ["accuracy", "macro_f1"] + [f"{name}/accuracy" for name in sets]
        values = np.concatenate([eval_log[c].dropna().to_numpy(dtype=float) for c in columns if c in eval_log])
        acc_ax.set_ylim(max(0.0, values.min() - 0.03), min(1.0, values.max() + 0.03))
    last = max([int(log["step"].max()) for log in (train_log, eval_log) if not log.empty] or [1])
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlim(0, last * 1.03)
    if best_step is not None:
        for ax in (loss_ax, acc_ax):
            ax.axvline(best_step, color="grey", linestyle=":", linewidth=1, label=f"best (step {best_step})")
    loss_ax.set_title("Loss")
    acc_ax.set_title("Accuracy (validation and eval sets), macro-F1" if sets else "Validation accuracy and macro-F1")
    lr_ax.set_title("Learning rate (largest group)")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8.5)
    acc_ax.legend(fontsize=8.5, loc="lower right")
    return _save(fig, path)


def confusion_matrices(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path, split: str) -> Path:
    """Counts and row-normalised (recall) confusion matrices side by side, every cell annotated."""
    counts = np.asarray(matrix)
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.9 * len(names) + 2.5)
    fig = Figure(figsize=(2 * size + 1, size))
    for ax, data, title, fmt in zip(fig.subplots(1, 2), (counts, normalised),
                                    (f"Confusion matrix, {split} (counts)", f"Normalised by true class ({split})"),
                                    ("{:,.0f}", "{:.2f}")):
        image = ax.imshow(data, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        threshold = data.max() / 2
        for (i, j), value in np.ndenumerate(data):
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=9,
                    color="white" if value > threshold else "black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    return _save(fig, path)


def per_class_accuracy(per_class: dict, accuracy: float, path: Path, split: str) -> Path:
    """Horizontal bars of each class's accuracy (its recall) with the overall accuracy as a line."""
    names = list(per_class)
    values = [per_class[n]["recall"] for n in names]
    fig = Figure(figsize=(7, 0.55 * len(names) + 1.6))
    ax = fig.add_subplot()
    bars = ax.barh(names, values, color=COLORS[0])
    ax.invert_yaxis()
    for bar, value in zip(bars, values):  # inside the bar's end, clear of the overall-accuracy line
        ax.text(max(value - 0.01, 0.12), bar.get_y() + bar.get_height() / 2, f"{value:.3f}", va="center",
                ha="right", fontsize=9, color="white", fontweight="bold")
    ax.axvline(accuracy, color=COLORS[3], linestyle="--", label=f"overall accuracy {accuracy:.4f}")
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("accuracy within the class (recall)")
    ax.set_title(f"Per-class accuracy ({split})")
    ax.legend(fontsize=8.5, loc="lower left")
    return _save(fig, path)


def roc_curves(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], path: Path, split: str) -> tuple[Path, dict]:
    """One-vs-rest ROC curve per class; returns the PNG and ``{class: AUC}`` (None where undefined)."""
    fig = Figure(figsize=(6.2, 5.4))
    ax = fig.add_subplot()
    aucs = {}
    for k, name in enumerate(names):
        positives = labels == k
        if not 0 < positives.sum() < len(labels):
            aucs[name] = None
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        aucs[name] = float(auc(fpr, tpr))
        ax.plot(fpr, tpr, color=COLORS[k % len(COLORS)], label=f"{name}  (AUC {aucs[name]:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"One-vs-rest ROC curves ({split}, {len(labels):,} rows)")
    ax.legend(fontsize=8.5, loc="lower right")
    ax.grid(alpha=0.3)
    present = [a for a in aucs.values() if a is not None]
    if not present or min(present) < 0.9:
        return _save(fig, path), aucs
    # A good classifier's curves hug the top-left corner, leaving the middle free: an inset zooms in there.
    inset = ax.inset_axes([0.4, 0.3, 0.32, 0.32])
    for k, name in enumerate(names):
        if aucs.get(name) is not None:
            fpr, tpr, _ = roc_curve(labels == k, probs[:, k])
            inset.plot(fpr, tpr, color=COLORS[k % len(COLORS)])
    inset.set_xlim(0, 0.2)
    inset.set_ylim(0.8, 1.0)
    inset.set_title("zoom: FPR <= 0.2", fontsize=7.5)
    inset.set_xticks([0, 0.1, 0.2])
    inset.set_yticks([0.8, 0.9, 1.0])
    inset.tick_params(labelsize=7)
    inset.grid(alpha=0.3)
    return _save(fig, path), aucs


def budget_breakdown(groups: dict, budget: int, path: Path) -> Path:
    """One stacked bar of trainable parameters by group against the budget."""
    rows = (len(groups) + 2) // 2  # legend rows, two entries each (the budget line included)
    fig = Figure(figsize=(9, 2.2 + 0.25 * rows))
    ax = fig.add_subplot()
    left = 0
    for k, (group, count) in enumerate(groups.items()):
        ax.barh([0], [count], left=left, color=COLORS[k % len(COLORS)], label=f"{group}: {count:,}")
        left += count
    ax.axvline(budget, color="black", linestyle="--", label=f"budget {budget:,}")
    ax.set_xlim(0, max(budget, left) * 1.05)
    ax.set_yticks([])
    ax.set_xlabel("trainable parameters")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set_title(f"Trainable parameters: {left:,} of {budget:,} ({left / budget:.1%} of the budget)")
    legend_height = (0.25 * rows + 0.15) / (2.2 + 0.25 * rows)
    fig.legend(fontsize=8.5, loc="lower center", ncol=2, frameon=False)
    return _save(fig, path, rect=(0, legend_height, 1, 1))


def compare_curves(runs: Sequence, path: Path, x: str = "step") -> Path:
    """Overlaid training loss, validation loss and validation accuracy of several runs (``RunData``).

    Args:
        x: ``"step"`` (optimizer steps) or ``"epoch"`` (metrics.jsonl's fractional epoch, so runs of different
            batch sizes or dataset sizes line up by passes over their data, as S2 plotted them).

    A run's eval sets are drawn in its colour with a line style per set (``run / set`` in the legend). A run whose
    log has no ``x`` column is left out of the figure.
    """
    fig = Figure(figsize=(14, 4.2))
    train_ax, val_ax, acc_ax = fig.subplots(1, 3)
    any_sets = False
    for k, run in enumerate(runs):
        color = COLORS[k % len(COLORS)]
        if x in run.train_log:
            train_ax.plot(run.train_log[x], run.train_log["loss"], color=color, label=run.name)
        if x not in run.eval_log:
            continue
        if not run.eval_log.empty:
            val_ax.plot(run.eval_log[x], run.eval_log["loss"], color=color, marker="o", label=run.name)
            acc_ax.plot(run.eval_log[x], run.eval_log["accuracy"], color=color, marker="o", label=run.name)
        for j, name in enumerate(eval_set_names(run.eval_log)):
            any_sets = True
            style = ("--", ":", "-.")[j % 3]
            for ax, key in ((val_ax, "loss"), (acc_ax, "accuracy")):
                ax.plot(run.eval_log[x], run.eval_log[f"{name}/{key}"], color=color, marker="^", markersize=4,
                        linestyle=style, label=f"{run.name} / {name}")
    titles = ("Validation and eval-set loss", "Validation and eval-set accuracy") if any_sets else \
        ("Validation loss", "Validation accuracy")
    per = " per epoch" if x == "epoch" else ""
    for ax, title in ((train_ax, "Training loss"), (val_ax, titles[0]), (acc_ax, titles[1])):
        ax.set_title(title + per)
        ax.set_xlabel("epoch" if x == "epoch" else "optimizer step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)
