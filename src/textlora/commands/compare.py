"""Compare stage: overlaid curves and a side-by-side table of several finished runs, from their folders only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from textlora.commands import plots
from textlora.run.files import atomic_write_text, folder_written_whole
from textlora.errors import TextloraError
from textlora.run.records import RunData, load_run_data


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _resolved(run: RunData) -> dict:
    """The run's config with today's defaults filled in, so a key added since an older run is no difference."""
    from omegaconf import OmegaConf

    from textlora.config import config_from_yaml_file

    try:
        return OmegaConf.to_container(OmegaConf.structured(config_from_yaml_file(run.path / "config.yaml")))
    except TextloraError:  # a config this version cannot read: compare it as written
        return run.config


def key_differences(configs: Sequence[dict]) -> dict:
    """``{dotted key: [value per config]}`` where nested configs differ (run names and output folders left out)."""
    flats = [_flat(config) for config in configs]
    keys = sorted(set().union(*flats))
    skip = {"train.run_name", "train.output_dir", "train.quiet"}
    return {k: [f.get(k) for f in flats] for k in keys
            if k not in skip and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1}


def config_differences(runs: Sequence[RunData]) -> dict:
    """``{key: [value per run]}`` for config keys whose values differ (run names and output folders left out)."""
    return key_differences([_resolved(run) for run in runs])


def _eval_losses(run: RunData) -> tuple[Optional[float], Optional[float]]:
    """Validation loss of the last evaluation and the lowest of all evaluations in metrics.jsonl."""
    if run.eval_log.empty or "loss" not in run.eval_log:
        return None, None
    losses = run.eval_log["loss"].dropna()
    return (float(losses.iloc[-1]), float(losses.min())) if len(losses) else (None, None)


def summary_rows(runs: Sequence[RunData]) -> list[dict]:
    """One row of final metrics, budget and time per run; ``NAME/accuracy`` per eval set when runs have them.

    Validation loss three ways: ``validation_loss`` of the kept (best) model, from eval.json like the accuracy;
    ``final_validation_loss`` of the last evaluation and ``min_validation_loss`` over all of them (metrics.jsonl),
    which together show a run whose validation loss rose while it trained on.
    """
    sets = list(dict.fromkeys(name for run in runs for name in run.summary.get("eval_sets", {})))
    rows = []
    for run in runs:
        s, optim = run.summary, run.config.get("optim", {})
        test = run.evals.get("test", {})
        final_loss, min_loss = _eval_losses(run)
        rows.append({"run": run.name, "validation_accuracy": s.get("validation_accuracy"),
                     "validation_macro_f1": run.evals.get("validation", {}).get("macro_f1"),
                     "validation_loss": run.evals.get("validation", {}).get("loss"),
                     "final_validation_loss": final_loss, "min_validation_loss": min_loss,
                     "test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
                     **{f"{name}/accuracy": s.get("eval_sets", {}).get(name, {}).get("accuracy") for name in sets},
                     "best_step": s.get("best_step"), "steps": s.get("steps"),
                     "trainable_params": s.get("trainable_params"), "budget": run.budget.get("budget"),
                     "optimizer": optim.get("name"), "lr": optim.get("lr"),
                     "wall_seconds": s.get("wall_seconds"), "train_seconds": s.get("train_seconds"),
                     "train_samples_per_s": s.get("train_samples_per_s")})
    return rows


def _cell(value, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "metric":
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if kind == "time" else f"{value:g}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    columns = [("run", "run", ""), ("validation_accuracy", "val acc", "metric"), ("validation_macro_f1", "val macro-F1", "metric"),
               ("validation_loss", "val loss", "metric"), ("final_validation_loss", "final val loss", "metric"),
               ("min_validation_loss", "min val loss", "metric"),
               ("test_accuracy", "test acc", "metric"), ("test_macro_f1", "test macro-F1", "metric"),
               *[(key, f"{key[:-len('/accuracy')]} acc", "metric") for key in (rows[0] if rows else {})
                 if key.endswith("/accuracy")],
               ("best_step", "best step", ""), ("steps", "steps", ""), ("trainable_params", "trainable", ""),
               ("budget", "budget", ""), ("optimizer", "optimizer", ""), ("lr", "lr", ""),
               ("wall_seconds", "wall s", "time"), ("train_seconds", "train s", "time"),
               ("train_samples_per_s", "samples/s", "time")]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
             "| " + " | ".join("---" if k == "run" else "---:" for k, _, _ in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[k], kind) for k, _, kind in columns) + " |")
    return "\n".join(lines)


def compare(run_dirs: Sequence[Path], output: Optional[Path] = None) -> Path:
    """Write ``curves.png`` (against steps), ``curves_by_epoch.png``, ``compare.md`` and ``compare.json``.

    Returns compare.md's path.

    Args:
        run_dirs: two or more finished run folders.
        output: folder to write (default: ``compare-<A>-vs-<B>…`` beside the first run); replaced when complete.
    """
    if len(run_dirs) < 2:
        raise TextloraError("compare needs at least two run folders")
    seen = set()
    for run_dir in run_dirs:
        if Path(run_dir).resolve() in seen:
            raise TextloraError(f"{run_dir} is given twice; compare each run folder once")
        seen.add(Path(run_dir).resolve())
    runs = [load_run_data(Path(d)) for d in run_dirs]
    if output is None:
        output = Path(run_dirs[0]).parent / ("compare-" + "-vs-".join(r.name for r in runs))[:120]
    output = Path(output)
    with folder_written_whole(output, "compare.md", "--output") as tmp:
        plots.compare_curves(runs, tmp / "curves.png")
        plots.compare_curves(runs, tmp / "curves_by_epoch.png", x="epoch")
        rows = summary_rows(runs)
        differences = config_differences(runs)
        lines = [f"# Comparison of {len(runs)} runs", "", "![curves](curves.png)", "",
                 "![curves by epoch](curves_by_epoch.png)", "", markdown_table(rows), ""]
        if differences:
            lines += ["## Configuration differences", "", "| key | " + " | ".join(r.name for r in runs) + " |",
                      "| --- |" + " --- |" * len(runs)]
            lines += [f"| `{key}` | " + " | ".join(f"`{v}`" for v in values) + " |" for key, values in differences.items()]
        lines += ["", "Runs: " + ", ".join(f"`{r.path}`" for r in runs)]
        atomic_write_text(tmp / "compare.md", "\n".join(lines) + "\n")
        atomic_write_text(tmp / "compare.json", json.dumps({"runs": rows, "differences": differences}, indent=2) + "\n")
    print(markdown_table(rows))
    if differences:
        print("differences: " + "; ".join(f"{k}: {' vs '.join(map(str, v))}" for k, v in differences.items()))
    print(f"wrote {output / 'compare.md'}")
    return output / "compare.md"
