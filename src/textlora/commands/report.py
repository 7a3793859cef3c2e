"""Report stage: figures and ``report.md`` for one run, drawn from its run folder's saved files only.

``write_report(RUN)`` writes ``RUN/report/`` (PNGs + report.md); training calls it at the end,
and ``textlora report RUN`` redraws it at any time. Confusion matrices, per-class accuracy, ROC curves
and the hardest errors are drawn for the validation split and, when the run has one, the test split,
each file named after its split (``confusion_matrix_validation.png``, ``roc_curves_test.png``). Runs with
``data.eval_sets`` get a Robustness section: each set's accuracy, per-class recall and hardest errors.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional


from textlora.commands import plots
from textlora.run.files import atomic_write_text, folder_written_whole
from textlora.run.layout import averaged_checkpoints
from textlora.run.records import RunData, eval_set_names, load_run_data

HARDEST = 10


def report_after_training(run_dir: Path) -> None:
    """Write the report at the end of training; a plotting failure warns and never loses the trained run."""
    try:
        path = write_report(run_dir)
        print(f"report              {path}")
    except Exception as exc:  # the run is complete and saved: a report problem must not fail it
        warnings.warn(f"the report could not be written ({type(exc).__name__}: {exc}); "
                      f"the run is complete — draw it later with `textlora report {run_dir}`", stacklevel=2)


def write_report(run_dir: Path, output: Optional[Path] = None) -> Path:
    """Draw every figure and write report.md.

    Args:
        run_dir: a finished run folder.
        output: folder to write (default ``RUN/report``); replaced as a whole once complete.

    Returns:
        the path of report.md.
    """
    run = load_run_data(run_dir)
    output = Path(output) if output else run.path / "report"
    with folder_written_whole(output, "report.md", "--output") as tmp:
        sections = [_header(run), _data_section(run, tmp), _training_section(run, tmp),
                    _evaluation_section(run, tmp), _robustness_section(run), _budget_section(run, tmp)]
        atomic_write_text(tmp / "report.md", "\n\n".join(s for s in sections if s) + "\n")
    return output / "report.md"


def _fmt_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "n/a"
    minutes, rest = divmod(float(seconds), 60)
    return f"{int(minutes)} min {rest:.0f} s ({seconds:,.1f} s)" if minutes else f"{rest:.1f} s"


def _fmt_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    return f"{count:.1f} GB"


def _header(run: RunData) -> str:
    s = run.summary
    model = run.config.get("model", {})
    lines = [f"# Run report: {run.name}", "",
             f"Model `{model.get('name_or_path', '?')}`, head `{model.get('head', 'standard')}`, "
             f"LoRA r={model.get('lora_r', '?')} on {model.get('target_modules', '?')} "
             f"(layers {model.get('layers') or 'all'}). Drawn from the files in `{run.path}` by `textlora report`.", "",
             "| | value |", "| --- | --- |"]
    if "test" in run.evals:
        t = run.evals["test"]
        lines.append(f"| test accuracy ({t['rows']:,} rows) | **{t['accuracy']:.4f}** (macro-F1 {t['macro_f1']:.4f}) |")
    if "validation" in run.evals:
        v = run.evals["validation"]
        lines.append(f"| validation accuracy ({v['rows']:,} rows) | {v['accuracy']:.4f} (macro-F1 {v['macro_f1']:.4f}) |")
    lines += [f"| best {s.get('best_metric')} | {s.get('best_value'):.4f} at {_which_model(s)} of {s.get('steps')} |"
              if s.get("best_value") is not None else "| best | n/a |",
              f"| trainable parameters | {s.get('trainable_params', 0):,} |",
              f"| wall time (load, tokenize, train, evaluate) | {_fmt_seconds(s.get('wall_seconds'))} |",
              f"| training time | {_fmt_seconds(s.get('train_seconds'))} |",
              f"| training throughput | {s.get('train_samples_per_s', 0):,.1f} samples/s, "
              f"{s.get('train_tokens_per_s', 0):,.0f} tokens/s |"]
    return "\n".join(lines)


def _which_model(summary: dict) -> str:
    """``step N``, or for a model `textlora average` wrote, the checkpoints it is the mean of."""
    averaged = summary.get("averaged")
    if not averaged:
        return f"step {summary.get('best_step')}"
    return f"the {averaged['method']} average (`textlora average`) of {averaged_checkpoints(averaged)}"


def _data_section(run: RunData, out: Path) -> str:
    report = run.data_report
    if not report.get("train_class_counts"):
        return "## Training data\n\nNo class counts in data_report.json."
    lines = ["## Training data", "", "![class distribution](class_distribution.png)", ""]
    plots.class_distribution(report["train_class_counts"], out / "class_distribution.png")
    after = report.get("train_length_histogram")
    words = report.get("train_words", {})
    cut = report.get("length_filter", {})
    if after:
        plots.length_distribution(report.get("train_length_histogram_before_filter"), after, words,
                                  (cut.get("min_words"), cut.get("max_words")), out / "length_distribution.png")
        lines += ["![text length distribution](length_distribution.png)", ""]
    else:
        lines += ["(No per-length histogram in data_report.json: the run predates it; retrain to draw the "
                  "text-length distribution.)", ""]
    lines += [f"- training rows: {report.get('train_rows', 0):,}; validation rows: {report.get('validation_rows', 0):,}",
              f"- words per text (training rows): median {words.get('median', 'n/a')}, 95th percentile "
              f"{words.get('p95', 'n/a')}, min {words.get('min', 'n/a')}, max {words.get('max', 'n/a')}"]
    if cut:
        lines.append(f"- length filter {cut['min_words']}–{cut['max_words']} words: removed {cut['removed']:,}, "
                     f"kept {cut['kept']:,}")
    if "train_truncated_texts" in report:
        lines.append(f"- training texts truncated at model.max_length="
                     f"{run.config.get('model', {}).get('max_length', '?')} tokens: {report['train_truncated_texts']:,}")
    return "\n".join(lines)


def _training_section(run: RunData, out: Path) -> str:
    # An average of checkpoints (`textlora average`) has no one step to mark on the curves.
    best_step = None if run.summary.get("averaged") else run.summary.get("best_step")
    plots.training_curves(run.train_log, run.eval_log, out / "training_curves.png", best_step)
    lines = ["## Training", "", "![training curves](training_curves.png)", ""]
    if not run.eval_log.empty:
        sets = eval_set_names(run.eval_log)
        lines += ["| step | validation loss | accuracy | macro-F1 | " + "".join(f"{n} accuracy | " for n in sets)
                  + "best so far |", "| ---: | ---: | ---: | ---: | " + "---: | " * len(sets) + ":---: |"]
        for _, row in run.eval_log.iterrows():
            lines.append(f"| {int(row['step'])} | {row['loss']:.4f} | {row['accuracy']:.4f} | "
                         f"{row.get('macro_f1', float('nan')):.4f} | "
                         + "".join(f"{row[f'{n}/accuracy']:.4f} | " for n in sets)
                         + f"{'yes' if row.get('best') else ''} |")
    return "\n".join(lines)


def _evaluation_section(run: RunData, out: Path) -> str:
    """One section per split the best model was evaluated on: test first (the headline), then validation."""
    splits = [split for split in ("test", "validation") if run.evals.get(split)]
    if not splits:
        return "## Evaluation\n\nNo eval.json in the run folder."
    return "\n\n".join(_split_section(run, out, split) for split in splits)


def _split_section(run: RunData, out: Path, split: str) -> str:
    """Figures (``NAME_<split>.png``), per-class table and hardest errors of the best model on one split."""
    metrics = run.evals[split]
    names = metrics["label_names"]
    confusion, per_class, roc = (f"{name}_{split}.png" for name in ("confusion_matrix", "per_class_accuracy",
                                                                      "roc_curves"))
    plots.confusion_matrices(metrics["confusion_matrix"], names, out / confusion, split)
    plots.per_class_accuracy(metrics["per_class"], metrics["accuracy"], out / per_class, split)
    lines = [f"## Evaluation on the {split} split ({metrics['rows']:,} rows)", "",
             f"![confusion matrices, {split}]({confusion})", "", f"![per-class accuracy, {split}]({per_class})", ""]
    probs = run.probabilities(split)
    aucs = {n: metrics["per_class"][n].get("roc_auc") for n in names}
    if probs is not None:
        _, aucs = plots.roc_curves(probs[0], probs[1], names, out / roc, split)
        lines += [f"![ROC curves, {split}]({roc})", ""]
    else:
        # Published folders leave predictions out (they hold the texts); runs older than them never wrote any.
        lines += [f"(No predictions/{split}.csv in this folder (a published run leaves them out; an older run "
                  "never wrote them), so there are no ROC curves or hardest errors.)", ""]
    lines += ["| class | precision | recall (accuracy in class) | F1 | ROC-AUC | support |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        row = metrics["per_class"][name]
        auc = f"{aucs[name]:.4f}" if aucs.get(name) is not None else "n/a"
        lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {auc} | "
                     f"{row['support']:,} |")
    lines.append(f"| **all** (macro) | {metrics['macro_precision']:.4f} | {metrics['macro_recall']:.4f} | "
                 f"{metrics['macro_f1']:.4f} | {metrics.get('roc_auc_macro_ovr') or float('nan'):.4f} | "
                 f"{metrics['rows']:,} |")
    if probs is not None:
        lines += ["", _hardest_errors(run.predictions[split], split)]
    return "\n".join(lines)


def _robustness_section(run: RunData) -> str:
    """The best model on validation and on every eval set: headline numbers, recall per class, hardest errors."""
    if not run.set_evals:
        return ""
    columns = {"validation": run.evals.get("validation"), **run.set_evals}
    columns = {name: metrics for name, metrics in columns.items() if metrics}
    names = next(iter(columns.values()))["label_names"]
    lines = ["## Robustness", "",
             f"The best model ({_which_model(run.summary)}, picked by `{run.summary.get('best_metric')}`) on "
             "the validation split and on each `data.eval_sets` set (never trained on).", "",
             "| set | rows | accuracy | macro-F1 | loss |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, metrics in columns.items():
        lines.append(f"| {name} | {metrics['rows']:,} | {metrics['accuracy']:.4f} | {metrics['macro_f1']:.4f} | "
                     f"{metrics['loss']:.4f} |")
    lines += ["", "Recall (accuracy within the class) per set:", "",
              "| class | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for label in names:
        lines.append(f"| {label} | " + " | ".join(f"{m['per_class'][label]['recall']:.4f}" for m in columns.values())
                     + " |")
    for name in run.set_evals:
        frame = run.set_predictions.get(name)
        lines += ["", _hardest_errors(frame, f"eval set {name}") if frame is not None else
                  f"(No predictions/eval_sets/{name}.csv, so no hardest errors for {name}.)"]
    return "\n".join(lines)


def hardest_errors(frame, count: int = HARDEST):
    """The misclassified rows the model was most confident about, most confident first."""
    wrong = frame[frame["label"] != frame["pred"]]
    return wrong.sort_values(["confidence", "row"], ascending=[False, True]).head(count)


def _hardest_errors(frame, split: str) -> str:
    errors = hardest_errors(frame)
    total = int((frame["label"] != frame["pred"]).sum())
    lines = [f"### Hardest misclassified examples ({split}: {total:,} errors, the {len(errors)} most confident shown)",
             "", "| row | true | predicted | confidence | text |", "| ---: | --- | --- | ---: | --- |"]
    for _, row in errors.iterrows():
        text = str(row["text"])
        text = (text[:220] + "…") if len(text) > 220 else text
        text = text.replace("|", "\\|")
        lines.append(f"| {row['row']} | {row['label_name']} | {row['pred_name']} | {row['confidence']:.3f} | {text} |")
    return "\n".join(lines)


def _budget_section(run: RunData, out: Path) -> str:
    budget = run.budget
    groups = budget.get("groups", {})
    if groups:
        plots.budget_breakdown(groups, budget["budget"], out / "budget.png")
    lines = ["## Parameter budget and size", "", "![budget](budget.png)" if groups else "", "",
             "| group | trainable parameters | share of budget |", "| --- | ---: | ---: |"]
    for group, count in groups.items():
        lines.append(f"| {group} | {count:,} | {count / budget['budget']:.1%} |")
    lines.append(f"| **total** | **{budget.get('total', 0):,}** | **{budget.get('total', 0) / budget['budget']:.1%}** "
                 f"of {budget['budget']:,} |")
    adapter = run.adapter_bytes()
    full = run.summary.get("model_params")
    lines += ["", f"- adapter on disk (`adapter/`, LoRA + head): {_fmt_bytes(adapter)}"]
    if full:
        full_bytes = full * 4  # fp32 weights, as the stock model is saved
        lines.append(f"- full model: {full:,} parameters, {_fmt_bytes(full_bytes)} as fp32 weights; the adapter is "
                     f"{adapter / full_bytes:.2%} of that ({full_bytes / max(adapter, 1):,.0f}x smaller), and the "
                     f"trainable parameters are {budget.get('total', 0) / full:.2%} of the model's")
    else:
        lines.append("- full model size: n/a (summary.json has no model_params: the run predates it)")
    return "\n".join(lines)
