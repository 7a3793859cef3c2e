"""Property-based tests of the readers and the data stage: arbitrary text round-trips, arbitrary bytes fail clearly.

For any unicode text (separators, quotes, newlines, tabs, backslashes included) written by a
standard writer, reading it back gives the same cells. For any bytes at all, reading either
returns a table or raises the one clear :class:`DataError`, never another exception.
"""

import csv
import io
import json
import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from textlora.config import DataConfig, DataSource
from textlora.data.prepare import extract_texts, prepare_training_data
from textlora.errors import DataError
from textlora.data.readers import _where_utf8_breaks, read_table

# Unicode without surrogates (not encodable as UTF-8), with the characters that break naive CSV
# handling drawn often.
TRICKY = ',"\n\r\t\\; \'|'
CELL = st.text(alphabet=st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(TRICKY)), max_size=25)
LABEL = st.sampled_from(["World", "Sports", "1", "2", "0", "Sci/Tech", " 3 "])
ROWS = st.lists(st.tuples(LABEL, CELL, CELL), min_size=1, max_size=12)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _frame(rows):
    return pd.DataFrame(rows, columns=["label", "title", "body"], dtype=object)


def _read_back(tmp_path_factory, frame, name, write, column_names=None):
    path = tmp_path_factory.mktemp("fuzz") / name
    write(frame, path)
    return read_table(str(path), column_names)


# CSV as RFC 4180 writes it (CRLF line ends): with pandas' default "\n" ends a cell holding a lone
# "\r" is written unquoted, and no reader can tell it from a line ending.
WRITERS = {
    "header.csv": lambda f, p: f.to_csv(p, index=False, lineterminator="\r\n"),
    "rows.tsv": lambda f, p: f.to_csv(p, index=False, sep="\t", lineterminator="\r\n"),
    "rows.jsonl": lambda f, p: f.to_json(p, orient="records", lines=True, force_ascii=False),
    "rows.json": lambda f, p: f.to_json(p, orient="records", force_ascii=False),
    "rows.parquet": lambda f, p: f.to_parquet(p),
    "rows.pkl": lambda f, p: f.to_pickle(p),
}


@FAST
@given(rows=ROWS, name=st.sampled_from(sorted(WRITERS)))
def test_any_text_round_trips_through_every_format(tmp_path_factory, rows, name):
    frame = _frame(rows)
    back = _read_back(tmp_path_factory, frame, name, WRITERS[name])
    assert list(back.columns) == ["label", "title", "body"]
    for column in ("title", "body"):
        assert back[column].tolist() == frame[column].tolist()
    # Labels come back as the same values (a CSV keeps them as text; JSON may make "1" a string or an int).
    assert [str(v) for v in back["label"]] == [str(v) for v in frame["label"]]


@FAST
@given(rows=ROWS)
def test_headerless_csv_with_column_names_round_trips(tmp_path_factory, rows):
    frame = _frame(rows)
    back = _read_back(tmp_path_factory, frame, "plain.csv", lambda f, p: f.to_csv(p, index=False, header=False,
                                                                                lineterminator="\r\n"),
                      column_names=["label", "title", "body"])
    assert back.to_dict("list") == frame.to_dict("list")


@FAST
@given(rows=ROWS)
def test_extracted_texts_are_the_cells_joined_and_normalised(tmp_path_factory, rows):
    frame = _read_back(tmp_path_factory, _frame(rows), "rows.csv", WRITERS["header.csv"])
    texts = extract_texts(frame, ["title", "body"], "fuzz", clean_backslashes=True)
    assert len(texts) == len(rows)
    for text, (_, title, body) in zip(texts, rows):
        expected = " ".join(f"{title.strip()} {body.strip()}".replace("\\", " ").split())
        assert text == expected
        assert text == text.strip() and "\\" not in text


SUFFIXES = [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pkl"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300),
                      st.text(alphabet=st.sampled_from(TRICKY + 'ab1{}[]:'), max_size=120).map(str.encode)),
       suffix=st.sampled_from(SUFFIXES))
def test_any_bytes_read_or_fail_with_a_data_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"input{suffix}"
    path.write_bytes(data)
    for column_names in (None, ["label", "text"]):
        try:
            frame = read_table(str(path), column_names)
        except DataError as exc:
            message = str(exc)
            assert str(path) in message and "\n" not in message.strip()
            continue
        assert isinstance(frame, pd.DataFrame) and len(frame) > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.one_of(LABEL, st.sampled_from(["", "nan", "x"])), CELL), min_size=1, max_size=30),
       validation_size=st.sampled_from([0.2, 2, 5]))
def test_training_data_is_prepared_or_refused_clearly(tmp_path_factory, rows, validation_size):
    path = tmp_path_factory.mktemp("prep") / "train.jsonl"
    path.write_text("".join(json.dumps({"label": label, "text": text}) + "\n" for label, text in rows))
    cfg = DataConfig(train=DataSource(path=str(path)), validation_size=validation_size)
    try:
        data = prepare_training_data(cfg, seed=0)
    except DataError:
        return
    report = data.report
    assert report["train_rows_read"] == len(rows)
    assert len(data.train) + len(data.validation) + report["train_empty_texts_dropped"] == len(rows)
    assert all(0 <= y < data.label_map.num_labels for y in data.train.labels + data.validation.labels)
    assert all(t for t in data.train.texts + data.validation.texts)  # blank texts never reach training


@FAST
@given(rows=ROWS, data=st.data(), bad=st.sampled_from([b"\xff", b"\xe9", b"\xc3(", b"\xed\xa0\x80"]))
def test_a_non_utf8_byte_is_named_by_its_line_and_offset(tmp_path_factory, rows, data, bad):
    # The bad bytes go inside a quoted cell of an added row, so the CSV stays well-formed
    # (bytes cut into a `""` escape would make it a parse error instead).
    at = data.draw(st.integers(0, len(rows)), label="row with the bad bytes")
    start = data.draw(CELL, label="text before them").replace('"', '""')
    lines = _csv_lines(rows)
    before = "".join(lines[:at]).encode() + b'"1","' + start.encode()
    path = tmp_path_factory.mktemp("utf8") / "rows.csv"
    path.write_bytes(before + bad + b'","body"\r\n' + "".join(lines[at:]).encode())
    line = before.count(b"\n") + 1
    where = f"at line {line}, byte {len(before) + 1} of the file"
    with pytest.raises(DataError, match=re.escape(where)):
        read_table(str(path), ["label", "title", "body"])
    # Blocks a few bytes long: a character split across two blocks is not an error, the bad one is.
    assert _where_utf8_breaks(path, block_bytes=3).startswith(f" {where}")


def _csv_lines(rows) -> list[str]:
    """Each row as the csv module writes it (\\r\\n line ends, cells quoted where needed)."""
    lines = []
    for row in rows:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerow(row)
        lines.append(buffer.getvalue())
    return lines


def _line_ends(text: str) -> int:
    """Line ends as the readers count lines: \\r\\n, \\r or \\n (not the other breaks str.splitlines knows)."""
    return len(re.findall(r"\r\n|\r|\n", text))


@FAST
@given(rows=ROWS, data=st.data())
def test_a_row_with_too_few_fields_is_refused_at_its_line(tmp_path_factory, rows, data):
    # A short first row is refused too, as a column count that differs from column_names.
    assume(len(rows) > 1)
    short = data.draw(st.integers(1, len(rows) - 1), label="short row")
    keep = data.draw(st.integers(1, 2), label="fields kept")
    lines = _csv_lines([row[:keep] if i == short else row for i, row in enumerate(rows)])
    path = tmp_path_factory.mktemp("short") / "rows.csv"
    path.write_bytes("".join(lines).encode())
    line = _line_ends("".join(lines[:short])) + 1
    with pytest.raises(DataError, match=rf"line {line} \(data row {short}\) has {keep} field\(s\) but column_names"):
        read_table(str(path), ["label", "title", "body"])
