"""Predict stage: a Kaggle-style submission (``ID,Label``) and quick classification of given texts."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

from .config import DataSource
from .errors import DataError


def predict(run_dir: Path, source: DataSource, output: Path, with_names: bool = False, with_probs: bool = False,
            batch_size: int = 64, device: str = "auto") -> dict:
    """Write ``output`` as CSV ``ID,Label`` (ID = row index, Label = class id 0..K-1).

    Args:
        with_names: add a ``LabelName`` column.
        with_probs: add one ``prob_<name>`` column per class.
    Returns:
        Counts: rows written, empty texts, truncated texts, rows per predicted class.
    """
    from .data import load_inference_data
    from .inference import load_run

    output = Path(output)
    if output.is_dir():
        raise DataError(f"--output {output} is a folder; give a file name such as submission.csv")
    if not output.parent.exists():
        raise DataError(f"--output folder {output.parent} does not exist; create it first")
    run = load_run(run_dir, device=device)
    split, stats = load_inference_data(source, None, run.config.data.clean_backslashes, need_labels=False)
    probs, truncated = run.probabilities(split.texts, batch_size)
    names = run.label_map.names
    preds = probs.argmax(axis=1)
    header = ["ID", "Label"] + (["LabelName"] if with_names else []) + ([f"prob_{n}" for n in names] if with_probs else [])
    tmp = output.with_name(output.name + ".tmp")
    # Written to a temp file and renamed: an interrupted run never leaves half a submission.
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, (label, row) in enumerate(zip(preds.tolist(), probs)):
            line = [i, label] + ([names[label]] if with_names else [])
            if with_probs:
                line += [f"{p:.6f}" for p in row.tolist()]
            writer.writerow(line)
    os.replace(tmp, output)
    counts = {names[i]: int((preds == i).sum()) for i in range(len(names))}
    result = {"rows": len(split), "empty_texts": stats["empty_texts"], "truncated_texts": truncated,
              "predicted_per_class": counts, "output": str(output)}
    print(f"wrote {len(split)} predictions to {output}; per class: {counts}")
    return result


def classify(run_dir: Path, texts: Sequence[str], as_json: bool = False, device: str = "auto") -> list[dict]:
    """Label and class probabilities for each text, printed and returned."""
    from .data import extract_texts
    from .inference import load_run

    if not texts:
        raise DataError('give at least one text: textlora classify RUN "some text"')
    import pandas as pd

    run = load_run(run_dir, device=device)
    cleaned = extract_texts(pd.DataFrame({"text": list(texts)}), ["text"], "classify", run.config.data.clean_backslashes)
    probs, _ = run.probabilities(cleaned)
    names = run.label_map.names
    results = []
    for text, row in zip(texts, probs):
        best = int(row.argmax())
        results.append({"text": text, "label": names[best], "label_id": best,
                        "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)}})
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            ranked = sorted(item["probabilities"].items(), key=lambda kv: -kv[1])
            print(f"{item['label']:<12} " + "  ".join(f"{n} {p:.3f}" for n, p in ranked) + f"   | {item['text'][:70]}")
    return results
