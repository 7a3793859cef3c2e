"""Data stage: reading tables, building texts, the validation split, the length filter and what is counted."""

import collections

import numpy as np
import pandas as pd
import pytest

from textlora.config import DataConfig, DataSource
from textlora.data.prepare import TrainingData, extract_texts, load_inference_data, prepare_training_data, word_counts
from textlora.errors import DataError
from textlora.data.labels import build_label_map
from textlora.data.readers import read_table

from .conftest import AGNEWS_SMALL, shared_path

AG_COLUMNS = ["label", "title", "description"]
AG_SOURCE = DataSource(path=str(AGNEWS_SMALL), column_names=AG_COLUMNS, text_columns=["title", "description"])


def _prepare(seed=42, **kwargs) -> TrainingData:
    return prepare_training_data(DataConfig(train=AG_SOURCE, validation_size=40, **kwargs), seed)


# --- extract_texts ----------------------------------------------------------------------------------------

def test_extract_texts_joins_skips_blanks_and_cleans():
    frame = pd.DataFrame({
        "title": ["Oil up", None, "  ", "Wall St.", float("nan")],
        "description": ["Prices\\rose  today", "only description", "desc\\\\here", np.nan, None],
    })
    texts = extract_texts(frame, ["title", "description"], "t", clean_backslashes=True)
    assert texts == ["Oil up Prices rose today", "only description", "desc here", "Wall St.", ""]
    raw = extract_texts(frame, ["title", "description"], "t", clean_backslashes=False)
    assert raw[0] == "Oil up Prices\\rose today"


def test_extract_texts_collapses_whitespace_in_one_column():
    frame = pd.DataFrame({"text": ["  a\tb\n\nc  ", "d"]})
    assert extract_texts(frame, ["text"], "t", clean_backslashes=True) == ["a b c", "d"]


def test_missing_text_column_lists_the_columns():
    frame = pd.DataFrame({"label": [1], "body": ["x"]})
    with pytest.raises(DataError, match=r"\['headline'\] not found.*\['label', 'body'\]"):
        extract_texts(frame, ["headline", "body"], "train", clean_backslashes=True)


# --- read_table -------------------------------------------------------------------------------------------

ROWS = pd.DataFrame({
    "label": [1, 2, 3],
    "title": ["Stocks fall", "Team wins, again", "New chip"],
    "description": ["Dow drops 2%", 'Coach says "great"', "Faster\\cheaper"],
})
WRITERS = {
    "headerless.csv": lambda f, p: f.to_csv(p, header=False, index=False),
    "header.csv": lambda f, p: f.to_csv(p, index=False),
    "rows.tsv": lambda f, p: f.to_csv(p, sep="\t", index=False),
    "rows.jsonl": lambda f, p: f.to_json(p, orient="records", lines=True),
    "rows.json": lambda f, p: f.to_json(p, orient="records"),
    "rows.parquet": lambda f, p: f.to_parquet(p),
}


@pytest.mark.parametrize("name", WRITERS)
def test_every_format_gives_the_same_texts(tmp_path, name):
    path = tmp_path / name
    WRITERS[name](ROWS, path)
    frame = read_table(str(path), AG_COLUMNS if name == "headerless.csv" else None)
    assert len(frame) == 3
    texts = extract_texts(frame, ["title", "description"], name, clean_backslashes=True)
    assert texts == ["Stocks fall Dow drops 2%", 'Team wins, again Coach says "great"', "New chip Faster cheaper"]
    assert [int(x) for x in frame["label"]] == [1, 2, 3]


def test_csv_with_newlines_and_quotes_in_cells_round_trips(tmp_path):
    cells = ['He said "no",\nthen left', "plain", 'a ""quoted"" word\r\nand, commas']
    path = tmp_path / "tricky.csv"
    pd.DataFrame({"label": ["x", "y", "x"], "text": cells}).to_csv(path, index=False)
    frame = read_table(str(path))
    assert len(frame) == 3
    assert frame["text"].tolist()[:2] == cells[:2]
    assert frame["text"][2].replace("\r\n", "\n") == cells[2].replace("\r\n", "\n")


def test_csv_keeps_na_like_texts_as_text(tmp_path):
    path = tmp_path / "na.csv"
    path.write_text("label,text\nNA,null\nb,NaN\n")
    frame = read_table(str(path))
    assert frame["label"].tolist() == ["NA", "b"] and frame["text"].tolist() == ["null", "NaN"]


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("label,text\n1,café\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_table(str(path))


def test_unreadable_paths(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header_only.csv").write_text("label,text\n")
    (tmp_path / "notes.txt").write_text("1,hello\n")
    cases = {
        str(tmp_path / "empty.csv"): "is empty",
        str(tmp_path / "header_only.csv"): "has no data rows",
        str(tmp_path / "missing.csv"): "does not exist",
        str(tmp_path): "is a folder",
        str(tmp_path / "notes.txt"): "suffix '.txt'",
    }
    for path, message in cases.items():
        with pytest.raises(DataError, match=message):
            read_table(path)


def test_wrong_column_names_count(tmp_path):
    two, three = tmp_path / "two.csv", tmp_path / "three.csv"
    two.write_text("1,hello\n2,world\n")
    three.write_text("1,title,description\n2,t,d\n")
    with pytest.raises(DataError, match="2 columns but column_names lists 3"):
        read_table(str(two), AG_COLUMNS)
    # Too few names must not turn the first column into the index and shift the rest left.
    with pytest.raises(DataError, match="3 columns but column_names lists 2"):
        read_table(str(three), ["label", "text"])
    assert read_table(str(three), AG_COLUMNS)["label"].tolist() == ["1", "2"]


# --- prepare_training_data --------------------------------------------------------------------------------

def test_validation_split_is_stratified_and_disjoint():
    data = _prepare()
    assert len(data.validation) == 40 and len(data.train) == 242 - 40
    assert collections.Counter(data.validation.labels) == {0: 10, 1: 10, 2: 10, 3: 10}
    assert data.report["train_class_counts"] == {"class_0": 50, "class_1": 50, "class_2": 52, "class_3": 50}
    assert (data.label_map.base, data.label_map.num_labels) == (1, 4)
    # Disjoint: together they are exactly the file's rows (the fixture has no duplicate texts).
    all_texts = extract_texts(read_table(str(AGNEWS_SMALL), AG_COLUMNS), ["title", "description"], "f", True)
    assert len(set(all_texts)) == 242
    assert not set(data.train.texts) & set(data.validation.texts)
    assert sorted(data.train.texts + data.validation.texts) == sorted(all_texts)


def test_validation_split_is_seeded():
    first, again, other = _prepare(seed=1), _prepare(seed=1), _prepare(seed=2)
    assert first.validation.texts == again.validation.texts
    assert first.validation.texts != other.validation.texts


def test_fractional_validation_size():
    data = prepare_training_data(DataConfig(train=AG_SOURCE, validation_size=0.25), 0)
    assert len(data.validation) == 61  # sklearn rounds a test fraction up: ceil(242 * 0.25)
    assert len(data.train) == 181


def test_max_train_rows_is_a_stratified_subsample():
    data = _prepare(max_train_rows=100)
    assert data.report["train_rows_subsampled_to"] == 100
    assert len(data.train) + len(data.validation) == 100
    assert collections.Counter(data.train.labels + data.validation.labels) == {0: 25, 1: 25, 2: 25, 3: 25}
    with pytest.raises(DataError, match="data.max_train_rows=2"):
        _prepare(max_train_rows=2)  # fewer rows than the 4 classes


def test_length_filter_applies_to_training_only():
    plain = _prepare()
    filtered = _prepare(min_words=30, max_words=50)
    lengths = word_counts(plain.train.texts)
    expected_removed = int(((lengths < 30) | (lengths > 50)).sum())
    assert expected_removed > 20  # the fixture has texts on both sides of the range
    assert filtered.report["length_filter"] == {"min_words": 30, "max_words": 50, "removed": expected_removed,
                                                "kept": len(plain.train) - expected_removed}
    assert len(filtered.train) == len(plain.train) - expected_removed
    assert all(30 <= n <= 50 for n in word_counts(filtered.train.texts))
    assert filtered.validation.texts == plain.validation.texts
    assert any(not 30 <= n <= 50 for n in word_counts(filtered.validation.texts))
    assert "length_filter" not in plain.report


def test_length_filter_that_removes_everything():
    with pytest.raises(DataError, match="removes every training row"):
        _prepare(min_words=500)


def test_empty_texts_are_dropped_and_counted(tmp_path):
    path = tmp_path / "gaps.csv"
    rows = [("pos", f"good thing {i}") for i in range(6)] + [("neg", f"bad thing {i}") for i in range(6)]
    rows[2], rows[9] = ("pos", "  "), ("neg", "")
    pd.DataFrame(rows, columns=["label", "text"]).to_csv(path, index=False)
    data = prepare_training_data(DataConfig(train=DataSource(path=str(path)), validation_size=4), 0)
    assert data.report["train_rows_read"] == 12
    assert data.report["train_empty_texts_dropped"] == 2
    assert len(data.train) + len(data.validation) == 10
    assert "" not in data.train.texts + data.validation.texts
    assert data.label_map.names == ("neg", "pos")


def test_separate_validation_file_is_not_carved(tmp_path):
    path = tmp_path / "val.csv"
    pd.DataFrame({"label": [1, 2, 3, 4], "title": ["a", "b", "c", "d"], "description": ["w", "x", "y", "z"]}) \
        .to_csv(path, header=False, index=False)
    validation = DataSource(path=str(path), column_names=AG_COLUMNS, text_columns=["title", "description"])
    data = prepare_training_data(DataConfig(train=AG_SOURCE, validation=validation), 0)
    assert len(data.train) == 242
    assert data.validation.texts == ["a w", "b x", "c y", "d z"] and data.validation.labels == [0, 1, 2, 3]


# --- load_inference_data ----------------------------------------------------------------------------------

def test_inference_keeps_every_row_in_order(tmp_path):
    path = tmp_path / "predict.csv"
    pd.DataFrame({"label": [2, 1, 4], "title": ["B", "", "D"], "description": ["bb", "", "dd"]}) \
        .to_csv(path, header=False, index=False)
    label_map = build_label_map([1, 2, 3, 4], "train")
    split, stats = load_inference_data(DataSource(path=str(path), column_names=AG_COLUMNS,
                                                  text_columns=["title", "description"]), label_map, True, True)
    assert split.texts == ["B bb", "", "D dd"]
    assert split.labels == [1, 0, 3]
    assert stats == {"rows": 3, "empty_texts": 1}


def test_inference_falls_back_to_a_text_column(tmp_path):
    path = tmp_path / "kaggle.jsonl"
    pd.DataFrame({"text": ["first one", "second\\one"], "label": [1, 2]}).to_json(path, orient="records", lines=True)
    split, stats = load_inference_data(DataSource(path=str(path), text_columns=["title", "description"]),
                                       None, True, need_labels=False)
    assert split.texts == ["first one", "second one"] and split.labels is None
    assert stats == {"rows": 2, "empty_texts": 0}


# --- the real AG News files in ../shared --------------------------------------------------------------------

@pytest.mark.integration
def test_shared_agnews_test_split():
    path = shared_path("data", "ag_news", "test.csv")
    frame = read_table(str(path), AG_COLUMNS)
    assert len(frame) == 7600
    label_map = build_label_map(frame["label"].tolist(), "test.csv")
    assert (label_map.kind, label_map.base, label_map.num_labels) == ("int", 1, 4)
    ids = label_map.encode(frame["label"].tolist(), "test.csv")
    assert np.bincount(ids).tolist() == [1900] * 4
    texts = extract_texts(frame, ["title", "description"], "test.csv", clean_backslashes=True)
    assert all(texts), "every row has a title, so every text is non-empty"
    assert not any("\\" in t for t in texts)
    assert sum("\\" in d for d in frame["description"]) > 0  # the escapes were there to clean
    split, stats = load_inference_data(DataSource(path=str(path), column_names=AG_COLUMNS,
                                                  text_columns=["title", "description"]), label_map, True, True)
    assert stats == {"rows": 7600, "empty_texts": 0} and split.texts == texts


@pytest.mark.integration
def test_shared_agnews_textonly_layout():
    # The file has no header row (SOURCES.md): the first line is a data row, label 1.
    path = shared_path("data", "ag_news", "train_subset_textonly.csv")
    frame = read_table(str(path), ["label", "text"])
    assert len(frame) == 9161
    assert frame["text"][0].startswith("Storm shows Haiti")
    label_map = build_label_map(frame["label"].tolist(), "textonly")
    assert label_map.base == 1
    assert np.bincount(label_map.encode(frame["label"].tolist(), "textonly")).tolist() == [2033, 2118, 1976, 3034]
    assert all(extract_texts(frame, ["text"], "textonly", clean_backslashes=True))


def _text_label_csv(path, labels) -> DataSource:
    pd.DataFrame({"text": [f"text number {i}" for i in range(len(labels))], "label": labels}).to_csv(path, index=False)
    return DataSource(path=str(path), text_columns=["text"], label_column="label")


def test_classes_without_training_rows_are_warned_about_and_counted(tmp_path, capsys):
    # Labels 2..5 read as 0-based: a 6-class head whose classes 0 and 1 never train.
    source = _text_label_csv(tmp_path / "shifted.csv", [2, 3, 4, 5] * 10)
    data = prepare_training_data(DataConfig(train=source, validation_size=8), 0)
    assert data.label_map.num_labels == 6
    assert data.report["classes_without_training_rows"] == ["class_0", "class_1"]
    assert "warning: label(s) 0, 1 have no training rows" in capsys.readouterr().out
    assert "classes_without_training_rows" not in _prepare().report


def test_a_class_of_one_row_is_named_by_its_label(tmp_path):
    source = _text_label_csv(tmp_path / "single.csv", ["World", "Sports"] * 10 + ["NaN"])
    with pytest.raises(DataError, match=r"label\(s\) 'NaN' have a single training row.*data.validation"):
        prepare_training_data(DataConfig(train=source, validation_size=8), 0)
    # Int labels are named as the file spells them: 5 of 1-based 1..5, not its class id 4.
    source = _text_label_csv(tmp_path / "single-int.csv", [1, 2, 3, 4] * 10 + [5])
    with pytest.raises(DataError, match=r"label\(s\) 5 have a single training row"):
        prepare_training_data(DataConfig(train=source, validation_size=8), 0)
