"""Streaming reads and predict: chunked results equal whole-file results; a failure leaves no output."""

import csv

import numpy as np
import pandas as pd
import pytest

from tests.conftest import AGNEWS_SMALL
from textlora.cli import main
from textlora.config import DataSource
from textlora.errors import DataError
from textlora.run.load import load_run
from textlora.commands.predict import predict
from textlora.data.readers import iter_table, read_table

NAMES = ["label", "title", "description"]


@pytest.fixture(scope="module")
def frame():
    return read_table(str(AGNEWS_SMALL), NAMES)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "headerless"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
def test_iter_table_yields_the_same_rows_as_read_table(tmp_path, frame, fmt, chunk_rows):
    path = tmp_path / f"rows.{'csv' if fmt == 'headerless' else fmt}"
    names = None
    if fmt in ("csv", "tsv"):
        frame.to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    elif fmt == "headerless":
        frame.to_csv(path, index=False, header=False)
        names = NAMES
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    chunks = list(iter_table(str(path), names, chunk_rows=chunk_rows))
    assert all(len(c) <= chunk_rows for c in chunks)
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True).astype(str), read_table(str(path), names).astype(str))


def test_iter_table_reports_a_header_only_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("title,description\n")
    with pytest.raises(DataError, match="no data rows"):
        list(iter_table(str(path)))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("stream")
    config = folder / "tiny.yaml"
    config.write_text(f"""
model: {{name_or_path: {tiny_model_dir}, max_length: 48, lora_r: 4, lora_alpha: 8}}
data:
  train: {{path: {AGNEWS_SMALL}, column_names: [label, title, description], text_columns: [title, description]}}
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 40
train: {{max_steps: 4, batch_size: 16, output_dir: {folder / 'runs'}, run_name: tiny, quiet: true}}
""")
    assert main(["train", "--config", str(config)]) == 0
    return folder / "runs" / "tiny"


def _read(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_chunked_predict_equals_whole_file_predict(run, tmp_path):
    source = DataSource(path=str(AGNEWS_SMALL), column_names=NAMES, text_columns=["title", "description"])
    small, whole = tmp_path / "small.csv", tmp_path / "whole.csv"
    counts = predict(run, source, small, with_probs=True, chunk_rows=17)
    predict(run, source, whole, with_probs=True, chunk_rows=100_000)
    a, b = _read(small), _read(whole)
    assert counts["rows"] == len(a) == len(b) == 242
    assert [r["ID"] for r in a] == [str(i) for i in range(242)]
    assert [r["Label"] for r in a] == [r["Label"] for r in b]
    probs_a = np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in a])
    probs_b = np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in b])
    np.testing.assert_allclose(probs_a, probs_b, atol=2e-6)
    # And both equal classifying the texts in one call.
    loaded = load_run(run)
    texts = [f"{t} {d}" for t, d in zip(read_table(str(AGNEWS_SMALL), NAMES)["title"],
                                       read_table(str(AGNEWS_SMALL), NAMES)["description"])]
    direct, _ = loaded.probabilities([" ".join(t.replace("\\", " ").split()) for t in texts])
    np.testing.assert_allclose(probs_a, direct, atol=2e-6)
    assert sum(counts["predicted_per_class"].values()) == 242


def test_a_bad_row_late_in_the_file_leaves_no_output(run, tmp_path):
    rows = AGNEWS_SMALL.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows + ['3,"title","description","one field too many"']) + "\n")
    out = tmp_path / "submission.csv"
    out.write_text("ID,Label\n0,2\n")  # an earlier submission: predict may replace it, but only when it finishes
    source = DataSource(path=str(bad), column_names=NAMES, text_columns=["title", "description"])
    with pytest.raises(DataError, match="bad.csv"):
        predict(run, source, out, chunk_rows=50)
    assert out.read_text() == "ID,Label\n0,2\n"
    assert not (tmp_path / "submission.csv.tmp").exists()
