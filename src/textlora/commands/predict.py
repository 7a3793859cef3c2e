"""Predict stage: a Kaggle-style submission (``ID,Label``) and quick classification of given texts."""

from __future__ import annotations

import csv
import json
import os
import unicodedata
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from textlora.run.files import check_output_file, removed_on_failure, starts_with, temp_beside
from textlora.config import DataSource
from textlora.errors import DataError
from textlora.model.precision import precision_name


def predict(run_dir: Path, source: DataSource, output: Path, with_names: bool = False, with_probs: bool = False,
            batch_size: int = 64, device: str = "auto", chunk_rows: int = 8192, precision: str = "run",
            base_model: Optional[str] = None, max_length: Optional[int] = None) -> dict:
    """Write ``output`` as CSV ``ID,Label`` (ID = the data's ``id``/``ID`` column, else the row index; Label =
    class id 0..K-1).

    Rows are read, classified and written ``chunk_rows`` at a time, so memory stays flat on
    files of any length (CSV/TSV/JSONL/Parquet; pickles and JSON are read whole first).

    Args:
        with_names: add a ``LabelName`` column.
        with_probs: add one ``prob_<name>`` column per class.
        base_model: another copy of the run's base model, a folder or hub id (``--base-model``).
        max_length: read texts up to this many tokens instead of the run's ``model.max_length`` (``--max-length``).
    Returns:
        Counts: rows written, empty texts, truncated texts, rows per predicted class; the precision used.
    """
    from tqdm.auto import tqdm

    from textlora.data.prepare import iter_inference_rows
    from textlora.run.load import load_run

    output = Path(output)
    check_output_file(output, "submission.csv", inputs=[source.path],
                      own=("a CSV whose header starts with ID,Label", starts_with("ID,Label")))
    run = load_run(run_dir, device=device, precision=precision, base_model=base_model, max_length=max_length)
    names = run.label_map.names
    header = ["ID", "Label"] + (["LabelName"] if with_names else []) + ([f"prob_{n}" for n in names] if with_probs else [])
    per_class = np.zeros(len(names), dtype=np.int64)
    rows = empty = truncated = 0
    tmp = temp_beside(output)
    # Written to a temp file and renamed: a failed or interrupted run never leaves half a submission.
    with removed_on_failure(tmp, f"predictions {output}", "run predict again"):
        with tmp.open("w", newline="") as handle, tqdm(desc="predict", unit=" rows", disable=None) as bar:
            writer = csv.writer(handle)
            writer.writerow(header)
            for texts, ids in iter_inference_rows(source, run.config.data.clean_backslashes, chunk_rows,
                                                  run.config.data.train):
                probs, cut = run.probabilities(texts, batch_size)
                preds = probs.argmax(axis=1)
                for i, (label, row) in enumerate(zip(preds.tolist(), probs)):
                    line = [rows + i if ids is None else ids[i], label] + ([names[label]] if with_names else [])
                    if with_probs:
                        line += [f"{p:.6f}" for p in row.tolist()]
                    writer.writerow(line)
                rows, truncated = rows + len(texts), truncated + cut
                empty += sum(1 for t in texts if not t)
                per_class += np.bincount(preds, minlength=len(names))
                bar.update(len(texts))
        os.replace(tmp, output)
    if empty:
        print(f"[data] {source.path}: {empty} row(s) have empty text; they are classified from an empty input")
    counts = {name: int(n) for name, n in zip(names, per_class)}
    print(f"wrote {rows} predictions to {output}; per class: {counts}; "
          f"{truncated} text(s) truncated at {run.config.model.max_length} tokens "
          f"({'--max-length' if max_length else 'model.max_length; --max-length reads more'})")
    return {"rows": rows, "empty_texts": empty, "truncated_texts": truncated, "predicted_per_class": counts,
            "output": str(output), "precision": precision_name(run.precision)}


def classify(run_dir: Path, texts: Sequence[str], as_json: bool = False, device: str = "auto",
             precision: str = "run", base_model: Optional[str] = None, max_length: Optional[int] = None) -> list[dict]:
    """Label and class probabilities for each text, printed and returned (``base_model``, ``max_length``: see
    :func:`predict`)."""
    from textlora.data.prepare import clean_texts, text_problem
    from textlora.run.load import load_run

    if not texts:
        raise DataError('give at least one text: textlora classify RUN "some text"')
    for number, text in enumerate(texts, start=1):
        if not text.strip():  # a shell variable that expanded to nothing, most likely; a label for it means nothing
            raise DataError(f"text {number} is empty; give the text to classify in quotes: "
                            'textlora classify RUN "some text"')
        problem = text_problem(text)
        if problem:
            raise DataError(f"text {number} {problem}; give UTF-8 text (convert it with iconv -t utf-8)")
    run = load_run(run_dir, device=device, precision=precision, base_model=base_model, max_length=max_length)
    cleaned = clean_texts(texts, run.config.data.clean_backslashes, "classify")
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
            print(f"{item['label']:<12} " + "  ".join(f"{n} {p:.3f}" for n, p in ranked) +
                  f"   | {printable(item['text'])[:70]}")
    return results


# Bidirectional controls: U+202E in a text would reverse the rest of the printed line (labels included).
_BIDI_CONTROLS = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def printable(text: str) -> str:
    """``text`` for one line of a terminal table: line breaks, tabs, control characters and bidirectional
    controls written as escapes (``\\n``, ``\\x1b``, ``\\u202e``); other characters (emoji joiners too) as they are."""
    shown = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs") or char in _BIDI_CONTROLS:
            escaped = char.encode("unicode_escape").decode("ascii")
            shown.append(escaped if escaped != char else f"\\u{ord(char):04x}")
        else:
            shown.append(char)
    return "".join(shown)
