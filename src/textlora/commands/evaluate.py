"""Evaluate stage: accuracy, precision/recall/F1, confusion matrix and one-vs-rest ROC-AUC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence


from textlora.run.files import check_output_file, is_json_with
from textlora.config import DataSource
from textlora.errors import TextloraError
from textlora.run.metrics import classification_metrics, format_metrics, write_metrics
from textlora.model.precision import precision_name


def evaluate(run_dir: Path, source: DataSource, output: Optional[Path] = None, batch_size: int = 64,
             device: str = "auto", precision: str = "run", base_model: Optional[str] = None,
             max_length: Optional[int] = None) -> dict:
    """Evaluate a run's best model on labelled data; writes JSON and returns the metrics (one set of
    :func:`evaluate_many`)."""
    return evaluate_many(run_dir, [source], output, batch_size, device, precision, base_model, max_length)[0]


def evaluate_many(run_dir: Path, sources: Sequence[DataSource], output: Optional[Path] = None, batch_size: int = 64,
                  device: str = "auto", precision: str = "run", base_model: Optional[str] = None,
                  max_length: Optional[int] = None) -> list[dict]:
    """Evaluate a run's best model on one or more labelled data sets; writes one JSON each, returns the metrics.

    One set prints the full table; several print one table with a column per set. Every set is read
    before the model runs, so a bad file is refused before anything is written.

    Args:
        sources: the rows; reading options default to those the run was trained with.
        output: where to write the JSON of a single set (default ``RUN/evaluations/<data file stem>.json``;
            when that holds an evaluation of other data, ``<stem>-2.json``, ``-3`` ...: :func:`evaluation_path`).
        base_model: another copy of the run's base model, a folder or hub id (``--base-model``).
        max_length: read texts up to this many tokens instead of the run's ``model.max_length``
            (``--max-length``); the default file is then ``<stem>-max<N>.json``, beside the run's own reading.
    """
    from textlora.data.prepare import load_inference_data
    from textlora.run.load import load_run

    if output is not None:
        if len(sources) > 1:
            raise TextloraError(f"--output names one file, but --data is given {len(sources)} times; drop --output "
                                "(each result goes to RUN/evaluations/<data name>.json)")
        check_output_file(Path(output), "eval.json", inputs=[source.path for source in sources],
                          own=("JSON with accuracy and confusion_matrix", is_json_with("accuracy", "confusion_matrix")))
    identities = [data_identity(source) for source in sources]
    for source, identity in zip(sources, identities):
        if identities.count(identity) > 1:
            raise TextloraError(f"--data {source.path} is given twice; give each data set once")
    run = load_run(run_dir, device=device, precision=precision, base_model=base_model, max_length=max_length)
    splits = [load_inference_data(source, run.label_map, run.config.data.clean_backslashes, need_labels=True,
                                  trained=run.config.data.train) for source in sources]
    results, written = [], []
    for source, identity, (split, stats) in zip(sources, identities, splits):
        probs, truncated = run.probabilities(split.texts, batch_size)
        metrics = classification_metrics(split.labels, probs, run.label_map.names)
        metrics.update({**identity, "empty_texts": stats["empty_texts"], "truncated_texts": truncated,
                        "max_length": run.config.model.max_length, "precision": precision_name(run.precision)})
        path, taken_by = (Path(output), None) if output is not None else \
            evaluation_path(Path(run_dir) / "evaluations", source, identity,
                            suffix="" if max_length is None else f"-max{max_length}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_metrics(path, metrics)
        results.append(metrics)
        written.append((path, taken_by))
    print(format_metrics(results[0]) if len(results) == 1 else
          format_columns([path.stem for path, _ in written], results))
    print()
    for path, taken_by in written:
        print(f"wrote {path}" if taken_by is None else
              f"wrote {path} ({path.parent / taken_by[0]} holds the evaluation of {taken_by[1]}, which is kept)")
    return results


def data_identity(source: DataSource) -> dict:
    """What evaluations of different data are told apart by: ``{"data": absolute path or hub name}``, plus
    ``"data_split"`` for a hub split. Stored in evaluate's JSON."""
    identity = {"data": _absolute(source.path)}
    if source.split is not None:
        identity["data_split"] = source.split
    return identity


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path


def evaluation_path(folder: Path, source: DataSource, identity: dict,
                    suffix: str = "") -> tuple[Path, Optional[tuple[str, str]]]:
    """Where evaluate writes the JSON of ``source`` in ``folder``, never over an evaluation of other data.

    ``<stem><suffix>.json`` (``suffix``: e.g. ``-max256`` for another ``--max-length``) unless it holds an
    evaluation of other data, then ``<stem><suffix>-2.json``, ``-3`` ...: the first that is free or holds this
    data (re-evaluating the same data replaces its own file).

    Returns:
        the path, and ``(file name, data)`` of the default file when another data's evaluation holds it.
    """
    stem = (Path(source.path).stem or "data") + suffix
    first = folder / f"{stem}.json"
    path, number = first, 1
    while path.exists() and _evaluated_data(path) != identity:
        number += 1
        path = folder / f"{stem}-{number}.json"
    held = _evaluated_data(first) if path != first else None
    return path, ((first.name, (held or {}).get("data", "other data")) if path != first else None)


def _evaluated_data(path: Path) -> Optional[dict]:
    """The data identity recorded in an evaluation JSON (an older one's relative path made absolute), or None."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable or not JSON: not ours to replace
        return None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("data"), str):
        return None
    identity = {"data": _absolute(recorded["data"])}
    if recorded.get("data_split") is not None:
        identity["data_split"] = recorded["data_split"]
    return identity


def format_columns(names: Sequence[str], results: Sequence[dict]) -> str:
    """One plain-text table with a column per evaluated set: headline metrics, then recall per class."""
    width = max(10, *(len(n) + 2 for n in names))
    label = max(16, *(len(f"recall {c}") + 2 for c in results[0]["label_names"]))

    def row(title: str, values) -> str:
        return f"{title:<{label}}" + "".join(f"{v:>{width}}" for v in values)

    def number(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [row("", names), row("rows", [f"{r['rows']:,}" for r in results])]
    for key, title in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"),
                       ("loss", "loss"), ("roc_auc_macro_ovr", "ROC-AUC (macro)")):
        lines.append(row(title, [number(r.get(key)) for r in results]))
    for name in results[0]["label_names"]:
        lines.append(row(f"recall {name}", [number(r["per_class"][name]["recall"]) for r in results]))
    return "\n".join(lines)
