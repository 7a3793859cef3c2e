"""The bad-input matrix: every broken input the CLI can be handed fails the same way.

Each case asserts: exit status 2, exactly one ``error: ...`` line that names the problem and the
fix, no traceback, and nothing half-written (no run folder, no output file, no temp files).
Inputs that are messy but valid (embedded newlines and quotes, empty/NaN texts, very long texts)
are accepted, and what happened to them is counted in the files written.
"""

import csv
import errno
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from textlora.training import checkpoint as ckpt
from textlora.cli import main
from textlora.data.prepare import extract_texts
from textlora.errors import DataError
from textlora.data.readers import iter_table, read_table

from .conftest import AGNEWS_SMALL, write_tiny_config
from .report_helpers import tiny_bert_without_pooler_dir


def _fails_clearly(argv, capsys, *fragments) -> str:
    """Run the CLI; check exit 2 and one traceback-free error message holding every fragment.

    The message is the ``error:`` line plus any lines after it (the budget check lists configurations that fit).
    """
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    message = err[err.index("error: "):]
    for fragment in fragments:
        assert fragment in message, message
    return message


def _leftovers(folder):
    """Temp files and folders an interrupted atomic write would leave behind."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".old")))


def _headerless(path, rows):
    """A CSV in the tiny config's layout: label, title, description; no header row."""
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _agnews_rows():
    with AGNEWS_SMALL.open(newline="") as handle:
        return list(csv.reader(handle))


# --- train: data, config, model -------------------------------------------------------------------------


def _data(name, content):
    """A case whose training data is ``name`` holding ``content`` (str: text, bytes: raw, list: CSV rows)."""
    def make(folder):
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            _headerless(path, content)
        return [f"data.train.path={path}"]
    return make


def _parquet_all_blank(folder):
    path = folder / "blank.parquet"
    pd.DataFrame({"label": [1, 2, 1, 2], "text": [None, float("nan"), "   ", ""]}).to_parquet(path)
    return [f"data.train.path={path}", "data.train.column_names=null", "data.train.text_columns=[text]"]


def _file_in_the_way(folder) -> Path:
    """A regular file where a path needs a folder."""
    path = folder / "afile"
    path.write_text("keep me\n")
    return path


def _model_folder(config: dict, weights: bool = False):
    def make(folder):
        model = folder / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(config))
        return [f"model.name_or_path={model}"]
    return make


_LABELS_12 = [[str(1 + i % 2), f"title {i}", f"words {i}"] for i in range(12)]

TRAIN_CASES = {
    "missing-file": (lambda d: [f"data.train.path={d / 'nope.csv'}"], ["nope.csv does not exist", "check the path"]),
    "empty-file": (_data("empty.csv", ""), ["empty.csv is empty", "write rows into it"]),
    "header-only": (lambda d: _data("head.csv", "label,text\n")(d) + ["data.train.column_names=null",
                                                                    "data.train.text_columns=[text]"],
                    ["head.csv has no data rows", "write rows into it"]),
    "folder-not-file": (lambda d: [f"data.train.path={d}"], ["is a folder", "point at a file"]),
    "unsupported-suffix": (_data("rows.txt", "1,a,b\n"), ["suffix '.txt'", "supported: .csv"]),
    "garbage-parquet": (_data("rows.parquet", b"PAR1 this is not parquet"), ["could not be read as parquet",
                                                                            "check that it is a complete"]),
    "unterminated-quote": (_data("quote.csv", '1,"never closed,desc\n2,t,d\n'), ["could not be read as csv",
                                                                                "check that it is a complete"]),
    "non-utf8": (_data("latin1.csv", "1,café,crème brûlée\n2,a,b\n".encode("latin-1")),
                 ["not valid UTF-8", "re-save it as UTF-8"]),
    "header-row-under-column-names": (_data("named.csv", [["Label", "Title", "Description"]] + _LABELS_12),
                                      ["starts with a header row", "set column_names to null"]),
    "wrong-column-count": (_data("two.csv", [["1", "only title"], ["2", "x"]]),
                           ["2 columns but column_names lists 3", "fix column_names"]),
    "non-utf8-names-line-and-byte": (_data("latin1b.csv", b'"1","a","b"\n"2","c\xe9\xff","d"\n'),
                                     ["latin1b.csv is not valid UTF-8 at line 2, byte 19 of the file",
                                      "iconv -f latin1 -t utf-8"]),
    # pandas pads a short row with empty cells; it must not pass as a row whose trailing cells are empty.
    "row-with-too-few-fields": (_data("short.csv", _LABELS_12 + [["3", "only a title"]] + _LABELS_12),
                                ["short.csv line 13 (data row 12) has 2 field(s) but column_names lists 3",
                                 "add the missing fields"]),
    "wrong-text-column": (lambda d: ["data.train.text_columns=[body]"], ["text column(s) ['body'] not found",
                                                                        "Set text_columns"]),
    "missing-label-column": (lambda d: ["data.train.label_column=topic"], ["label column 'topic' not found",
                                                                          "Set label_column"]),
    "all-texts-empty-or-nan": (_parquet_all_blank, ["every text is empty", "check text_columns"]),
    "missing-labels": (_data("nolabel.csv", _LABELS_12 + [["", "t", "d"], ["", "t2", "d2"]]),
                       ["2 row(s) have no label (line 13, line 14)", "fill them in or remove those rows"]),
    # Named by file line even after rows with empty text were dropped before the labels were read.
    "label-outside-the-classes": (_data("seven.csv", [["1", "", ""]] + _LABELS_12 + [["7", "t", "d"]]),
                                  ["label 7 (line 14) is outside the 4 classes of data.label_names, labels 0..3 or 1..4",
                                   "fix that label"]),
    "mixed-int-str-labels": (_data("mixed.csv", _LABELS_12 + [["Sports", "t", "d"]]),
                             ["labels mix integers and strings", "use one kind"]),
    "single-class": (_data("one.csv", [["3", f"t {i}", "d"] for i in range(12)]),
                     ["only one class", "needs at least two"]),
    "unknown-config-key": (lambda d: ["train.epoch=2"], ["train.epoch"]),
    "wrong-config-type": (lambda d: ["train.batch_size=lots"], ["train.batch_size", "lots"]),
    "bad-config-value": (lambda d: ["optim.name=adam"], ["optim.name", "allowed values are adamw, rmsprop, sgd"]),
    "over-budget": (lambda d: ["model.max_trainable_params=1000"], ["over the budget of 1,000",
                                                                   "Nearest configurations that fit"]),
    "model-missing": (lambda d: ["model.name_or_path=/no/such/model"], ["there is no folder /no/such/model",
                                                                       "copy the model folder there"]),
    "model-hub-id-unreachable": (lambda d: ["model.name_or_path=no-such-owner/no-such-model"],
                                 ["no model config could be loaded", "local folder with config.json"]),
    "model-not-a-text-classifier": (_model_folder({"model_type": "vit", "hidden_size": 32}),
                                    ["'vit' model", "AutoModelForSequenceClassification", "use e.g. roberta-base"]),
    "model-encoder-decoder": (_model_folder({"model_type": "t5", "d_model": 32}),
                              ["'t5' model", "not an encoder", "use e.g. roberta-base"]),
    "model-without-weights": (_model_folder({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
                                             "num_attention_heads": 4, "intermediate_size": 64}),
                              ["could not load pretrained weights", "weights"]),
    "malformed-override": (lambda d: ["model.target_modules=[query,value"],
                           ["override 'model.target_modules=[query,value'", "not valid YAML", "close every ["]),
    "max-length-past-positions": (lambda d: ["model.max_length=1000"],  # the tiny BERT has 128 positions
                                  ["model.max_length=1000", "cover 128 tokens", "model.max_length=128 or less"]),
    "output-dir-through-a-file": (lambda d: [f"train.output_dir={_file_in_the_way(d)}/runs"],
                                  ["Not a directory", "a part of the path is a file, not a folder"]),
}


@pytest.mark.parametrize("make, fragments", TRAIN_CASES.values(), ids=TRAIN_CASES.keys())
def test_bad_training_input(tiny_config_yaml, tmp_path, capsys, make, fragments):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _fails_clearly(["train", "--config", str(tiny_config_yaml), *make(inputs)], capsys, *fragments)
    assert not (tmp_path / "runs").exists()


CONFIG_FILE_CASES = {
    "unknown-key": (lambda text: text + "  warmup: 3\n", ["train.warmup"]),
    "wrong-type": (lambda text: text.replace("epochs: 2", "epochs: two"), ["train.epochs", "two"]),
    "invalid-yaml": (lambda text: text + "  seed: [1\n", ["is not valid YAML", "line", "fix the line it names"]),
    "not-a-mapping": (lambda text: "- a\n- b\n", ["must be a mapping of sections"]),
    "missing-file": (None, ["does not exist", "pass an existing YAML file"]),
}


@pytest.mark.parametrize("edit, fragments", CONFIG_FILE_CASES.values(), ids=CONFIG_FILE_CASES.keys())
def test_bad_config_file(tiny_config_yaml, tmp_path, capsys, edit, fragments):
    if edit is None:
        tiny_config_yaml.unlink()
    else:
        tiny_config_yaml.write_text(edit(tiny_config_yaml.read_text()))
    _fails_clearly(["train", "--config", str(tiny_config_yaml)], capsys, *fragments)
    assert not (tmp_path / "runs").exists()


# --- evaluate / predict / classify on a trained run -------------------------------------------------------


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory, tiny_model_dir):
    """A run trained on AG News rows plus messy-but-valid rows; returns (run folder, messy CSV, extra row count)."""
    folder = tmp_path_factory.mktemp("messy")
    extra = [["1", 'He said "no",\nthen, left', 'a ""quoted"" word\r\nand, commas'],
             ["2", "", ""], ["3", "  ", "\t"], ["4", "", ""],  # empty texts: dropped in training, counted
             ["1", "long " * 3000, "text " * 3000],  # far beyond max_length: truncated, counted
             ["2", "ünïcödé — 東京 🚀", "日本語のニュース"]]
    data = _headerless(folder / "messy.csv", _agnews_rows() + extra)
    config = folder / "messy.yaml"
    config.write_text(f"""
model: {{name_or_path: {tiny_model_dir}, max_length: 48, lora_r: 4, lora_alpha: 8}}
data:
  train: {{path: {data}, column_names: [label, title, description], text_columns: [title, description]}}
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 40
optim: {{lr: 5.0e-3}}
train: {{epochs: 1, batch_size: 16, num_threads: 1, output_dir: {folder / 'runs'}, run_name: messy, quiet: true}}
""")
    assert main(["train", "--config", str(config)]) == 0
    return folder / "runs" / "messy", data, len(extra)


def test_messy_but_valid_rows_are_accepted_and_counted(messy_run, tiny_model_dir, tmp_path):
    run, data, extra = messy_run
    rows = len(_agnews_rows()) + extra
    report = json.loads((run / "data_report.json").read_text())
    # The quoted cell with newlines is one row, not three; 3 blank texts are dropped from training.
    assert report["train_rows_read"] == rows
    assert report["train_empty_texts_dropped"] == 3
    assert report["train_rows"] + report["validation_rows"] == rows - 3
    assert report["train_truncated_texts"] > 0

    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--data", str(data), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["rows"] == rows and metrics["empty_texts"] == 3  # kept at evaluate time (IDs line up)
    # Truncation is counted exactly: the texts whose untruncated token count exceeds max_length (48).
    texts = extract_texts(read_table(str(data), ["label", "title", "description"]), ["title", "description"],
                          "messy", clean_backslashes=True)
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    overlong = sum(len(ids) > 48 for ids in tokenizer(texts)["input_ids"])
    assert metrics["truncated_texts"] == overlong and overlong > 1


def test_max_length_reads_longer_texts_and_keeps_the_runs_own_evaluation(messy_run, tmp_path, capsys):
    # Trained at max_length 48; --max-length 128 (the tiny BERT's position limit) reads the long texts further.
    run = tmp_path / "run"
    shutil.copytree(messy_run[0], run)
    _, data, _ = messy_run
    assert main(["evaluate", str(run), "--data", str(data)]) == 0
    assert main(["evaluate", str(run), "--data", str(data), "--max-length", "128"]) == 0
    own = json.loads((run / "evaluations" / "messy.json").read_text())
    longer = json.loads((run / "evaluations" / "messy-max128.json").read_text())
    assert (own["max_length"], longer["max_length"]) == (48, 128)
    texts = extract_texts(read_table(str(data), ["label", "title", "description"]), ["title", "description"],
                          "messy", clean_backslashes=True)
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(run / "tokenizer")(texts)["input_ids"]]
    assert own["truncated_texts"] == sum(n > 48 for n in lengths)
    assert longer["truncated_texts"] == sum(n > 128 for n in lengths) < own["truncated_texts"]
    # What is read changes what is predicted: the probabilities of the long texts differ.
    capsys.readouterr()
    out = {}
    for flags in ([], ["--max-length", "128"]):
        assert main(["classify", str(run), "--json", *flags, " ".join(texts[-40:])]) == 0
        out[len(flags)] = json.loads(capsys.readouterr().out)[0]["probabilities"]
    assert out[0] != out[2]


@pytest.mark.parametrize("value, fragments", [
    ("1000", ["--max-length=1000 is longer than", "cover 128 tokens", "--max-length=128 or less"]),
    ("4", ["--max-length 4", "between 8 and 8192"]),
])
def test_a_max_length_the_model_cannot_read_is_refused_before_anything_is_written(messy_run, tmp_path, capsys,
                                                                                   value, fragments):
    out = tmp_path / "s.csv"
    _fails_clearly(["predict", str(messy_run[0]), "--data", str(AGNEWS_SMALL), "--output", str(out),
                    "--max-length", value], capsys, *fragments)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_genuine_pickled_dataframe_and_dataset_are_accepted(messy_run, tmp_path):
    # Kaggle's test_unlabelled.pkl is a pickled datasets.Dataset with a "text" column; a DataFrame works alike.
    import pickle

    import datasets

    run, data, _ = messy_run
    texts = [f"{r[1]} {r[2]}" for r in _agnews_rows()[:50]]
    (tmp_path / "frame.pkl").write_bytes(pickle.dumps(pd.DataFrame({"text": texts})))
    (tmp_path / "dataset.pkl").write_bytes(pickle.dumps(datasets.Dataset.from_dict({"text": texts})))
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "plain.csv", index=False)
    outputs = {}
    for name in ("frame.pkl", "dataset.pkl", "plain.csv"):
        out = tmp_path / f"{name}.out.csv"
        extra = ["--header"] if name.endswith(".csv") else []
        assert main(["predict", str(run), "--data", str(tmp_path / name), "--output", str(out), "--probs", *extra]) == 0
        outputs[name] = out.read_text()
    assert len(outputs["frame.pkl"].splitlines()) == 51
    assert outputs["frame.pkl"] == outputs["dataset.pkl"] == outputs["plain.csv"]


def _broken_run(messy_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(messy_run[0], run)
    if damage == "missing-adapter":
        shutil.rmtree(run / "adapter")
    elif damage == "corrupt-adapter":
        (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    elif damage == "truncated-adapter":
        weights = run / "adapter" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "not-a-run":
        (run / "config.yaml").unlink()
    return run


RUN_DAMAGE = {
    "missing-adapter": ["has no adapter", "train the run to completion"],
    "corrupt-adapter": ["could not load the adapter", "retrain or restore it"],
    "truncated-adapter": ["could not load the adapter", "retrain or restore it"],
    "not-a-run": ["no config.yaml", "`textlora train`"],
}


@pytest.mark.parametrize("command", ["evaluate", "predict", "classify"])
@pytest.mark.parametrize("damage", RUN_DAMAGE, ids=RUN_DAMAGE.keys())
def test_broken_run_folder(messy_run, tmp_path, capsys, command, damage):
    run = _broken_run(messy_run, tmp_path, damage)
    out = tmp_path / "out.file"
    argv = {"evaluate": ["evaluate", str(run), "--data", str(AGNEWS_SMALL)],
            "predict": ["predict", str(run), "--data", str(AGNEWS_SMALL), "--output", str(out)],
            "classify": ["classify", str(run), "some text"]}[command]
    _fails_clearly(argv, capsys, *RUN_DAMAGE[damage])
    assert not out.exists() and not (run / "evaluations").exists()
    assert _leftovers(tmp_path) == []


def _eval_data(name, rows):
    def make(folder):
        return str(_headerless(folder / name, rows))
    return make


INFERENCE_CASES = {
    "unknown-int-labels": ("evaluate", _eval_data("ints.csv", [["1", "a", "b"], ["7", "c", "d"], ["0", "e", "f"]]),
                           ["2 label value(s) outside the run's classes: 7 (line 2), 0 (line 3)", "Fix the labels"]),
    "unknown-label-names": ("evaluate", _eval_data("names.csv", [["Sports", "a", "b"], ["Cricket", "c", "d"]]),
                            ["1 label value(s) outside the run's classes: 'Cricket' (line 2)", "Fix the labels"]),
    "mixed-labels": ("evaluate", _eval_data("mixed.csv", [["1", "a", "b"], ["x", "c", "d"]]),
                     ["labels mix integers and strings", "use one kind"]),
    # A header row would be classified as a text: one row too many, every ID after it shifted. (A first row
    # spelling the column names exactly is read as the header, see test_a_header_row_naming_the_columns_is_used.)
    "predict-header-row-of-the-run's-names": ("predict", _eval_data("named.csv", [["Label", "Title", "Description"],
                                                                                  ["1", "a", "b"]]),
                                              ["starts with a header row (label, title, description)",
                                               "pass --header"]),
    # Row numbers are the file's lines, also past a quoted cell of several lines.
    "labels-named-by-file-line": ("evaluate", _eval_data("lines.csv", [["1", "two\nlines", "b"], ["9", "c", "d"]]),
                                  ["outside the run's classes: 9 (line 3)"]),
    "zero-based-labels-on-a-one-based-run": ("evaluate", _eval_data("zero.csv", [["0", "a", "b"], ["3", "c", "d"]]),
                                             ["0 (line 1)", "These labels (0..3) look 0-based, and the run's are "
                                              "1-based: add 1 to every label"]),
    # A column the user names is used as named: its absence is an error, not a fall-back to `text`.
    "predict-named-text-column-missing": ("predict", lambda d: [_text_file(d / "t.csv", "text,label\na,1\n"),
                                                                "--header", "--text-columns", "body"],
                                          ["text column(s) ['body'] not found", "['text', 'label']",
                                           "Pass --text-columns"]),
    "evaluate-named-label-column-missing": ("evaluate", lambda d: [_text_file(d / "t.csv", "text,label\na,1\n"),
                                                                   "--header", "--label-column", "y"],
                                            ["label column 'y' not found", "Pass --label-column"]),
    "missing-labels": ("evaluate", _eval_data("nolabel.csv", [["1", "a", "b"], ["", "c", "d"]]),
                       ["have no label (line 2)", "fill them in"]),
    "missing-file": ("evaluate", lambda d: str(d / "nope.csv"), ["does not exist", "check the path"]),
    "predict-missing-file": ("predict", lambda d: str(d / "nope.pkl"), ["does not exist", "check the path"]),
    "predict-non-utf8": ("predict", lambda d: _bytes_file(d / "latin1.csv", "1,café,b\n".encode("latin-1")),
                         ["not valid UTF-8", "re-save it as UTF-8"]),
    "predict-wrong-text-column": ("predict", _eval_data("two.csv", [["1", "a"], ["2", "b"]]),
                                  ["2 columns but column_names lists 3", "pass --header", "--column-names"]),
    # The run was trained on a headerless CSV; a header row naming columns the run does not know (a header row
    # of known names is used, see test_a_header_row_naming_the_columns_is_used) needs --header, not a config edit.
    "predict-header-row-on-a-headerless-run": ("predict", lambda d: _text_file(d / "str.csv", "body,label\na,1\n"),
                                               ["2 columns but column_names lists 3", "has a header row, pass --header",
                                                "--text-columns"]),
    "evaluate-header-row-on-a-headerless-run": ("evaluate", lambda d: _text_file(d / "str.csv", "body,label\na,1\n"),
                                                ["2 columns but column_names lists 3", "pass --header"]),
    "evaluate-row-with-too-few-fields": ("evaluate", _eval_data("short.csv", [["1", "a", "b"], ["2", "c"]]),
                                         ["short.csv line 2 (data row 1) has 2 field(s)", "add the missing fields"]),
    "predict-row-with-too-few-fields": ("predict",
                                        _eval_data("short.csv", [["1", "a", "b"], ["2", "c"], ["3", "", ""]]),
                                        ["short.csv line 2 (data row 1) has 2 field(s)", "add the missing fields"]),
    "predict-non-utf8-names-line-and-byte": ("predict", lambda d: _bytes_file(d / "l1.csv", b"1,a,b\n2,caf\xe9,b\n"),
                                             ["not valid UTF-8 at line 2, byte 12 of the file", "iconv"]),
    "predict-hostile-pickle": ("predict", lambda d: str(_hostile_pickle(d)), ["refused", "system",
                                                                             "convert the data to CSV"]),
    # Valid JSON, but no text: a tokenizer would fail on it with a traceback.
    "predict-lone-surrogate": ("predict", lambda d: _pickled_texts(d / "s.pkl", ["ok", "a \ud800"]),
                               ["s.pkl: row 1: the text holds U+D800 at character 2, a lone surrogate",
                                "fix or remove that row"]),
}


def _bytes_file(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _text_file(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _pickled_texts(path, texts) -> str:
    import pickle

    path.write_bytes(pickle.dumps(pd.DataFrame({"text": pd.Series(texts, dtype=object)})))
    return str(path)


def _hostile_pickle(folder):
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {folder / 'SENTINEL'}",)

    path = folder / "evil.pkl"
    path.write_bytes(pickle.dumps(Payload()))
    return path


@pytest.mark.parametrize("command, make, fragments", INFERENCE_CASES.values(), ids=INFERENCE_CASES.keys())
def test_bad_inference_input(messy_run, tmp_path, capsys, command, make, fragments):
    run = tmp_path / "run"
    shutil.copytree(messy_run[0], run)
    data = make(tmp_path)
    data, flags = (data[0], data[1:]) if isinstance(data, list) else (data, [])
    out = tmp_path / "out.csv"
    argv = [command, str(run), "--data", data, *flags] + (["--output", str(out)] if command == "predict" else [])
    _fails_clearly(argv, capsys, *fragments)
    assert not out.exists() and not (run / "evaluations").exists()
    assert not (tmp_path / "SENTINEL").exists()


def test_classify_refuses_a_text_that_is_not_utf8(messy_run):
    # The shell hands over bytes; Python keeps the undecodable ones as surrogates, which no tokenizer takes.
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "textlora.cli", "classify", str(messy_run[0]), "fine",
                             b"bad \xff\xfe bytes"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines() == ["error: text 2 is not valid UTF-8 (bytes b'\\xff\\xfe' at character 4); "
                                          "give UTF-8 text (convert it with iconv -t utf-8)"]


def test_classify_prints_each_text_on_one_line_with_controls_escaped(messy_run, capsys):
    texts = ["first line\nsecond line", "abc \u202eevil\u202c done", "tab\there \x1b[31mred"]
    assert main(["classify", str(messy_run[0]), *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("| first line\\nsecond line") and lines[1].endswith("| abc \\u202eevil\\u202c done")
    assert lines[2].endswith("| tab\\there \\x1b[31mred")
    assert main(["classify", str(messy_run[0]), *texts, "--json"]) == 0  # JSON keeps the texts as they are
    assert [item["text"] for item in json.loads(capsys.readouterr().out)] == texts


def test_the_header_hint_is_the_fix(messy_run, tmp_path):
    data, out = _text_file(tmp_path / "str.csv", "body,label\nstocks fell,3\nthe match,2\n"), tmp_path / "out.csv"
    assert main(["predict", str(messy_run[0]), "--data", data, "--header", "--text-columns", "body",
                 "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("header", ["text,label", "label,title,description", "id,text"])
def test_a_header_row_naming_the_columns_is_used(messy_run, tmp_path, capsys, command, header):
    # The run read headerless rows (label, title, description); a newcomer's CSV starts with a header row naming
    # the columns, as the same file in JSONL or Parquet would. It is read as the header, and that is said.
    columns = header.split(",")
    rows = [{"text": "stocks fell", "title": "stocks", "description": "fell", "label": "3", "id": "a7"},
            {"text": "the match", "title": "the", "description": "match", "label": "2", "id": "b9"}]
    if command == "evaluate" and "label" not in columns:
        columns.append("label")
    data = tmp_path / "with-header.csv"
    pd.DataFrame(rows)[columns].to_csv(data, index=False)
    out = tmp_path / ("out.csv" if command == "predict" else "out.json")
    assert main([command, str(messy_run[0]), "--data", str(data), "--output", str(out)]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert f"its first row ({','.join(columns)}) names the columns; read as a header row" in said
    if command == "predict":
        ids = [line.split(",")[0] for line in out.read_text().splitlines()]
        assert ids == (["ID", "a7", "b9"] if "id" in columns else ["ID", "0", "1"])  # the file's own IDs if any
        assert ("IDs from its 'id' column" in said) == ("id" in columns)
    else:
        assert json.loads(out.read_text())["rows"] == 2


def _good_rows_then(path, last: bytes, good=8300):
    """``good`` well-formed headerless rows, then ``last``: past predict's first 8,192-row chunk."""
    path.write_bytes(b"".join(b'"%d","title %d","words %d"\n' % (1 + i % 4, i, i) for i in range(good)) + last)
    return path


def test_a_short_row_after_the_first_streamed_chunk_is_refused(tmp_path):
    path = _good_rows_then(tmp_path / "late.csv", b'"3","only a title"\n"4","t","d"\n')
    message = r"late.csv line 8301 \(data row 8300\) has 2 field\(s\) but column_names lists 3"
    with pytest.raises(DataError, match=message):
        list(iter_table(str(path), ["label", "title", "description"]))


def test_a_latin1_byte_after_the_first_streamed_chunk_names_its_line_and_byte(tmp_path):
    path = _good_rows_then(tmp_path / "late.csv", b'"3","caf\xe9","d"\n')
    offset = path.read_bytes().index(b"\xe9") + 1
    for read in (lambda: read_table(str(path), ["label", "title", "description"]),
                 lambda: list(iter_table(str(path), ["label", "title", "description"]))):
        with pytest.raises(DataError, match=f"not valid UTF-8 at line 8301, byte {offset} of the file"):
            read()


def test_empty_trailing_fields_and_blank_lines_are_not_short_rows(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text('"1","a","b"\n"3","e",""\n3,e,\n\n   \n4,,\n"5","f","g"\n')
    frame = read_table(str(path), ["label", "title", "description"])
    assert frame.values.tolist() == [["1", "a", "b"], ["3", "e", ""], ["3", "e", ""], ["4", "", ""], ["5", "f", "g"]]
    header = tmp_path / "header.tsv"
    header.write_text("label\ttext\n1\t\n2\tb\n")
    assert read_table(str(header)).values.tolist() == [["1", ""], ["2", "b"]]
    header.write_text("label\ttext\n1\t\n2\n")
    with pytest.raises(DataError, match=r"line 3 \(data row 1\) has 1 field\(s\) but the header row has 2"):
        read_table(str(header))


@pytest.mark.parametrize("where, fragments", [("missing-folder", ["does not exist", "create it first"]),
                                              ("a-folder", ["is a folder", "give a file name"])])
def test_bad_predict_output(messy_run, tmp_path, capsys, where, fragments):
    out = tmp_path / "no" / "sub.csv" if where == "missing-folder" else tmp_path
    _fails_clearly(["predict", str(messy_run[0]), "--data", str(AGNEWS_SMALL), "--output", str(out)], capsys,
                   *fragments)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("command, marker", [("report", "report.md"), ("compare", "compare.md")])
def test_report_and_compare_replace_only_their_own_output_folders(messy_run, tmp_path, capsys, command, marker):
    # Writing an output folder replaces it whole: pointed at a folder of other files (a run folder, say)
    # that would delete them.
    victim = tmp_path / "victim-run"
    shutil.copytree(messy_run[0], victim)
    runs = [str(messy_run[0])] + ([str(victim)] if command == "compare" else [])
    before = sorted(p.name for p in victim.iterdir())
    _fails_clearly([command, *runs, "--output", str(victim)], capsys, str(victim), f"no {marker}",
                   "would delete what it holds", "Choose a new or empty folder")
    assert sorted(p.name for p in victim.iterdir()) == before
    blocker = _file_in_the_way(tmp_path)
    _fails_clearly([command, *runs, "--output", str(blocker)], capsys, f"{blocker} is a file", "path of a folder")
    assert blocker.read_text() == "keep me\n"
    # An empty folder, and then the command's own earlier output, are written (replaced) as before; folders
    # the user named like its temporary ones beside it are not touched.
    out = tmp_path / "out"
    out.mkdir()
    for name in ("out.tmp", "out.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep me\n")
    for _ in range(2):
        assert main([command, *runs, "--output", str(out)]) == 0
        assert (out / marker).is_file()
    assert all((tmp_path / name / "mine.txt").read_text() == "keep me\n" for name in ("out.tmp", "out.old"))
    # A file added to that output since is not the command's to delete.
    (out / "notes.txt").write_text("keep me\n")
    _fails_clearly([command, *runs, "--output", str(out)], capsys, "it also holds notes.txt", "move those files out")
    assert (out / "notes.txt").read_text() == "keep me\n" and (out / marker).is_file()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("out.") and p.name not in ("out.tmp", "out.old")] == []


@pytest.mark.parametrize("link", ["same-path", "symlink", "hard-link"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_output_that_is_the_input_is_refused(messy_run, tmp_path, capsys, command, link):
    data = tmp_path / "data.csv"
    shutil.copy(AGNEWS_SMALL, data)
    before = data.read_bytes()
    out = {"same-path": data, "symlink": tmp_path / "link.csv", "hard-link": tmp_path / "hard.csv"}[link]
    if link == "symlink":
        out.symlink_to(data)
    elif link == "hard-link":
        out.hardlink_to(data)
    _fails_clearly([command, str(messy_run[0]), "--data", str(data), "--output", str(out)], capsys,
                   f"--output {out} is the input {data}", "would replace the data", "another file name")
    assert data.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["predict", "evaluate", "plan"])
def test_an_output_file_the_command_did_not_write_is_never_replaced(messy_run, tmp_path, capsys, command):
    argv = {"predict": ["predict", str(messy_run[0]), "--data", str(AGNEWS_SMALL)],
            "evaluate": ["evaluate", str(messy_run[0]), "--data", str(AGNEWS_SMALL)],
            "plan": ["plan", "--budget", "1000000"]}[command]
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    _fails_clearly([*argv, "--output", str(mine)], capsys, f"--output {mine} already exists",
                   "not an earlier output of this command", "move the file away")
    assert mine.read_text() == "my notes\n" and _leftovers(tmp_path) == []
    # Its own earlier output is replaced: a second run to the same file goes through.
    out = tmp_path / "out"
    for _ in range(2):
        assert main([*argv, "--output", str(out)]) == 0
    first_line = out.read_text().splitlines()[0]
    assert first_line.startswith({"predict": "ID,Label", "evaluate": "{", "plan": "# textlora plan:"}[command])


def test_classify_refuses_an_empty_text(messy_run, capsys):
    _fails_clearly(["classify", str(messy_run[0]), "fine", "   "], capsys, "text 2 is empty", "in quotes")


def test_sigterm_removes_a_half_written_output(tmp_path):
    import os
    import signal

    from textlora.cli import exit_on_sigterm
    from textlora.run.files import removed_on_failure

    previous = signal.getsignal(signal.SIGTERM)
    tmp = tmp_path / ".out.csv.1234.tmp"
    try:
        exit_on_sigterm()
        with pytest.raises(SystemExit) as info, removed_on_failure(tmp, "out.csv"):
            tmp.write_text("ID,Label\n0,")
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or `timeout` sends it, part-way through the file
            raise AssertionError("SIGTERM did not end the command")  # its handler runs before this line
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.code == 143 and not tmp.exists()


def test_a_file_beside_the_output_named_like_a_temp_file_is_kept(messy_run, tmp_path):
    out = tmp_path / "submission.csv"
    (tmp_path / "submission.csv.tmp").write_text("keep me\n")
    assert main(["predict", str(messy_run[0]), "--data", str(AGNEWS_SMALL), "--output", str(out)]) == 0
    assert (tmp_path / "submission.csv.tmp").read_text() == "keep me\n" and out.is_file()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_run_folder_that_does_not_exist_is_named_so(tmp_path, capsys, command):
    missing = tmp_path / "runs" / "quickstart-typo"
    _fails_clearly([command, str(missing), "--data", str(AGNEWS_SMALL), "--output", str(tmp_path / "out")], capsys,
                   f"{missing} does not exist", "the run folder `textlora train` printed")


def test_compare_refuses_a_run_given_twice(messy_run, capsys):
    _fails_clearly(["compare", str(messy_run[0]), str(messy_run[0])], capsys, "is given twice")


def test_outputs_under_a_file_are_one_clear_error(messy_run, tmp_path, capsys):
    run, blocker = str(messy_run[0]), _file_in_the_way(tmp_path)
    for argv in (["export", run, "--out", str(blocker)],
                 ["export", run, "--out", str(blocker / "sub")],
                 ["predict", run, "--data", str(AGNEWS_SMALL), "--output", str(blocker / "sub.csv")],
                 ["evaluate", run, "--data", str(AGNEWS_SMALL), "--output", str(blocker / "eval.json")]):
        message = _fails_clearly(argv, capsys, str(blocker))
        assert any(reason in message for reason in ("is a file", "a part of the path is a file",
                                                    "a file of that name is in the way")), message
    assert blocker.read_text() == "keep me\n" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_batch_size_must_be_a_positive_number(messy_run, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(messy_run[0]), "--data", str(AGNEWS_SMALL), "--output", str(tmp_path / "s.csv"),
              "--batch-size", value])
    assert exit_.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


# --- disk full while saving ---------------------------------------------------------------------------------


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tiny_config_yaml, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real_save = ckpt.save_file

    def save_until_full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (end of epoch 2) hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_until_full)
    run = tmp_path / "runs" / "tiny"
    _fails_clearly(["train", "--config", str(tiny_config_yaml), "train.num_threads=1"], capsys,
                   "No space left on device", "free disk space", f"textlora train --resume {run}")
    assert _leftovers(run) == []
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step-0000013"]
    assert ckpt.latest_valid(run / "checkpoints").name == "step-0000013"
    # Space freed: the run resumes from the surviving checkpoint and finishes.
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 26


def test_disk_full_while_saving_the_adapter_leaves_no_temp_folder(tiny_config_yaml, tmp_path, capsys, monkeypatch):
    import peft

    def save_until_full(self, folder, *args, **kwargs):
        (Path(folder)).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", save_until_full)
    run = tmp_path / "runs" / "tiny"
    _fails_clearly(["train", "--config", str(tiny_config_yaml), "train.num_threads=1"], capsys,
                   "could not write the adapter",
                   "No space left on device", "free disk space")
    assert _leftovers(run) == [] and not (run / "adapter").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_disk_full_while_writing_output_keeps_the_previous_file(messy_run, tmp_path, capsys, monkeypatch, command):
    out = tmp_path / ("submission.csv" if command == "predict" else "eval.json")
    # An earlier output of the command (any other file is refused before the model loads).
    previous = "ID,Label\n0,1\n" if command == "predict" else '{"accuracy": 0.5, "confusion_matrix": []}\n'
    out.write_text(previous)
    real_writer = csv.writer

    class FullDiskWriter:
        def __init__(self, handle):
            self.inner, self.rows = real_writer(handle), 0

        def writerow(self, row):
            self.rows += 1
            if self.rows > 100:  # the disk fills up part-way through the file
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.inner.writerow(row)

    def full_write_text(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if command == "predict":
        monkeypatch.setattr(csv, "writer", FullDiskWriter)
    else:
        monkeypatch.setattr(ckpt.Path, "write_text", full_write_text)
    argv = [command, str(messy_run[0]), "--data", str(AGNEWS_SMALL), "--output", str(out)]
    _fails_clearly(argv, capsys, "No space left on device", str(out), "free disk space")
    assert out.read_text() == previous
    assert _leftovers(tmp_path) == []


def test_over_budget_suggests_the_linear_head_and_pastable_overrides(tiny_model_dir, tmp_path, capsys):
    """Only model.head=linear fits (the standard head and the fresh pooler alone are 1,188): it is suggested,
    and the suggestion's overrides, pasted as printed, make a configuration that fits."""
    model_dir = tiny_bert_without_pooler_dir(tmp_path / "no-pooler", tiny_model_dir)
    config = write_tiny_config(tmp_path / "tiny.yaml", model_dir, tmp_path / "runs")
    message = _fails_clearly(["train", "--config", str(config), "model.max_trainable_params=1200"], capsys,
                             "over the budget of 1,200", "Nearest configurations that fit", "linear head: 1,156",
                             "model.head=linear")
    assert "model.layers=None" not in message and "No configuration one change away fits" not in message
    overrides = re.search(r"linear head: 1,156\s+\((.*)\)", message).group(1).split()
    assert "model.layers=null" in overrides
    assert main(["params", "--config", str(config), "--json", "model.max_trainable_params=1200", *overrides]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["total"] == 1_156 and counts["fits"]
    assert not (tmp_path / "runs").exists()


PLAN_CASES = {
    "unknown-target": (["--targets", "query,qury"], ["--targets query,qury", "no Linear module named 'qury'",
                                                     "attention.self.query", "intermediate.dense"]),
    "layers-out-of-range": (["--layers", "20-30"], ["--layers 20-30", "roberta-base has 12 layers", "0-11"]),
    "layers-partly-out-of-range": (["--layers", "10-12"], ["--layers 10-12", "has 12 layers"]),
    "output-folder-missing": (["--output", "/no/such/folder/plan.yaml"],  # refused before the plan is printed
                              ["--output folder /no/such/folder does not exist", "create it first"]),
}


@pytest.mark.parametrize("flags, fragments", PLAN_CASES.values(), ids=PLAN_CASES.keys())
def test_bad_plan_request(capsys, flags, fragments):
    message = _fails_clearly(["plan", "--budget", "1000000", *flags], capsys, *fragments)
    assert "fits a budget" not in message


ARGUMENT_CASES = {
    "rank-not-a-number": (["plan", "--budget", "1000000", "--ranks", "4,x"], ["--ranks", "'4,x'", "e.g. 4,8"]),
    "rank-zero": (["plan", "--budget", "1000000", "--ranks", "0,4"], ["--ranks", "at least 1"]),
    "top-zero": (["plan", "--budget", "1000000", "--top", "0"], ["--top", "at least 1, got 0"]),
    "top-negative": (["plan", "--budget", "1000000", "--top", "-2"], ["--top", "at least 1, got -2"]),
    "plan-one-label": (["plan", "--budget", "1000000", "--num-labels", "1"], ["--num-labels", "at least 2 classes"]),
    "plan-no-labels": (["plan", "--budget", "1000000", "--num-labels", "0"], ["--num-labels", "got 0"]),
    "params-one-label": (["params", "--num-labels", "1"], ["--num-labels", "at least 2 classes"]),
}


@pytest.mark.parametrize("argv, fragments", ARGUMENT_CASES.values(), ids=ARGUMENT_CASES.keys())
def test_bad_plan_and_params_arguments_are_argument_errors(capsys, argv, fragments):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    # One line, like every other user error (argparse's usage block is left out), naming --help.
    errors = err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: argument") and "--help`" in errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], err
