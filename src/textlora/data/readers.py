"""Read a table of rows from a file or a hub dataset into a pandas DataFrame.

Every failure becomes one :class:`DataError` naming the file and the fix; nothing here
decides what a text or a label is (that is :mod:`textlora.data.prepare`).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import itertools
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pandas as pd

from textlora.errors import DataError

FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".pkl": "pickle",
    ".pickle": "pickle",
}


def looks_like_hub_name(spec: str) -> bool:
    """``ag_news`` or ``user/dataset`` with no file suffix and no such local path."""
    return bool(spec) and not Path(spec).exists() and Path(spec).suffix.lower() not in FILE_FORMATS


NAMES_FIX = "fix column_names (or set column_names to null if the file's first row is a header)"
"""What a file that column_names does not fit (wrong column count, a header row) is told, for a training config."""


def read_table(path: str, column_names: Optional[Sequence[str]] = None, split: Optional[str] = None,
               names_fix: str = NAMES_FIX) -> pd.DataFrame:
    """Read every row of ``path`` as a DataFrame.

    Args:
        path: a local file whose suffix picks the format, or a hub dataset name.
        column_names: names for a CSV/TSV without a header row; when given, the first row is
            data, not a header.
        split: split of a hub dataset (default ``train``).
        names_fix: the fix a CSV/TSV that ``column_names`` does not fit (column count, header row) is told
            (evaluate/predict name their command-line flags here).
    Returns:
        The rows, with text kept as strings (CSV cells are never guessed into numbers).
    """
    if not path:
        raise DataError("no data path given: set data.train.path (a CSV/JSONL/Parquet/pickle file or a hub dataset name)")
    if looks_like_hub_name(path):
        return _read_hub(path, split or "train")
    file, fmt = _checked_file(path)
    with _read_errors(file, fmt):
        frame = _READERS[fmt](file, column_names, names_fix)
    if len(frame) == 0:
        raise DataError(f"data file {file} has no data rows; write rows into it or point at another file")
    return frame


def iter_table(path: str, column_names: Optional[Sequence[str]] = None, split: Optional[str] = None,
               chunk_rows: int = 8192, names_fix: str = NAMES_FIX) -> Iterator[pd.DataFrame]:
    """Like :func:`read_table`, but yields the rows in order, ``chunk_rows`` at a time.

    CSV, TSV, JSONL and Parquet files are streamed, so memory stays flat however long the file;
    JSON, pickle and hub datasets have no streaming form and are read whole, then cut.
    """
    if looks_like_hub_name(path) or FILE_FORMATS.get(Path(path).suffix.lower()) in ("json", "pickle"):
        frame = read_table(path, column_names, split, names_fix)
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start:start + chunk_rows].reset_index(drop=True)
        return
    file, fmt = _checked_file(path)
    rows = 0
    with _read_errors(file, fmt):
        for frame in _STREAMERS[fmt](file, column_names, chunk_rows, names_fix):
            rows += len(frame)
            yield frame.reset_index(drop=True)
    if rows == 0:
        raise DataError(f"data file {file} has no data rows; write rows into it or point at another file")


def _checked_file(path: str) -> tuple[Path, str]:
    """The file and its format, after the checks every reader needs (exists, a file, known suffix, not empty)."""
    file = Path(path)
    if not file.exists():
        raise DataError(f"data file {file} does not exist; check the path (relative paths start at the current directory)")
    if file.is_dir():
        raise DataError(f"data path {file} is a folder; point at a file (.csv, .tsv, .jsonl, .json, .parquet, .pkl)")
    fmt = FILE_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise DataError(f"data file {file} has suffix {file.suffix!r}; supported: {', '.join(sorted(FILE_FORMATS))}")
    if file.stat().st_size == 0:
        raise DataError(f"data file {file} is empty (0 bytes); write rows into it or point at another file")
    return file, fmt


@contextlib.contextmanager
def _read_errors(file: Path, fmt: str):
    """Turns a parser's exception into one DataError that names the file and the fix."""
    try:
        yield
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"data file {file} is not valid UTF-8{_where_utf8_breaks(file)}; "
                        "re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    except (ValueError, OSError, pd.errors.ParserError, csv.Error) as exc:
        raise DataError(f"data file {file} could not be read as {fmt}: {_first_line(exc)}; check that it is a "
                        f"complete {fmt} file (or give it the suffix of its real format)") from None


def _where_utf8_breaks(file: Path, block_bytes: int = 1 << 20) -> str:
    """`` at line L, byte B of the file (b'...')`` for the first invalid UTF-8 sequence, counted from 1.

    The decode error itself cannot say this: pandas decodes a buffer at a time and its offset
    is relative to that buffer. So the file is scanned again, in binary; only on this error path.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed, lines = 0, 0
    with file.open("rb") as handle:
        for block in itertools.chain(iter(lambda: handle.read(block_bytes), b""), [b""]):
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's held-back bytes (an unfinished character, never a
                # newline) followed by this block.
                start = consumed - (len(exc.object) - len(block)) + exc.start
                line = lines + exc.object[:exc.start].count(b"\n") + 1
                return f" at line {line}, byte {start + 1} of the file ({exc.object[exc.start:exc.start + 4]!r})"
            consumed += len(block)
            lines += block.count(b"\n")
    return ""


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_delimited(file: Path, column_names, sep: str, names_fix: str) -> pd.DataFrame:
    with contextlib.closing(_stream_delimited(file, column_names, sep, None, names_fix)) as frames:
        return next(frames)


def _stream_delimited(file: Path, column_names, sep: str, chunk_rows: Optional[int],
                      names_fix: str) -> Iterator[pd.DataFrame]:
    # dtype=str + keep_default_na=False: texts like "NA" or "null" stay texts, and empty cells
    # become "" (counted later) instead of float NaN.
    # The names are set after reading: given to read_csv, too few would silently add empty columns
    # and too many file columns would silently become the index (shifting every column left).
    header = None if column_names else "infer"
    reader = pd.read_csv(file, sep=sep, header=header, dtype=str, keep_default_na=False, encoding="utf-8",
                         chunksize=chunk_rows)
    with contextlib.closing(_records(file, sep)) as records:
        if header is not None:
            with _unlimited_csv_fields():
                next(records, None)
        first_row = 0
        for frame in ([reader] if chunk_rows is None else reader):
            if column_names:
                if len(frame.columns) != len(column_names):
                    raise DataError(f"data file {file} has {len(frame.columns)} columns but column_names lists "
                                    f"{len(column_names)} ({', '.join(column_names)}); {names_fix}")
                frame.columns = list(column_names)
                if first_row == 0 and len(frame) and _names_the_columns(frame.iloc[0], column_names):
                    raise DataError(f"data file {file} starts with a header row ({', '.join(column_names)}), which "
                                    f"column_names would make a row of data; {names_fix}")
            _check_no_short_rows(file, records, first_row, len(frame), list(map(str, frame.columns)),
                                 "column_names lists" if column_names else "the header row has")
            first_row += len(frame)
            yield frame


def _names_the_columns(row: pd.Series, column_names: Sequence[str]) -> bool:
    """Whether a first row is the header ``column_names`` describes (a data row spelling every name is not real)."""
    return all(str(cell).strip().casefold() == str(name).casefold() for cell, name in zip(row, column_names))


def _check_no_short_rows(file: Path, records: Iterator[tuple[int, list]], first_row: int, rows: int,
                         names: list[str], expected_from: str) -> None:
    """Raise for the first of the next ``rows`` records with fewer fields than ``names``.

    pandas pads a short row with empty cells, so it cannot be told from a row whose trailing
    cells are really empty; the csv module's records (read alongside, same rows) can.
    """
    with _unlimited_csv_fields():
        for row, (line, fields) in enumerate(itertools.islice(records, rows), start=first_row):
            if len(fields) < len(names):
                raise DataError(
                    f"data file {file} line {line} (data row {row}) has {len(fields)} field(s) but {expected_from} "
                    f"{len(names)} ({', '.join(names)}); add the missing fields (an empty one is written as \"\") "
                    "or remove the row")


def first_record(path: str) -> Optional[list[str]]:
    """The fields of a CSV/TSV file's first row (None for other formats, or a file that cannot be read: its
    reader says why), to tell a header row from data before the file is read with column names."""
    found = _nth_record(path, 0)
    return found[1] if found else None


def file_line(path: str, header: bool, row: int) -> Optional[int]:
    """The line (from 1) of a CSV/TSV file that data row ``row`` (from 0; after the header row when ``header``)
    starts on, for an error to name what the user can find; None for other formats. The file is scanned
    again: only on an error's path (a quoted cell may span lines, so the line cannot be computed)."""
    found = _nth_record(path, row + int(header))
    return found[0] if found else None


def _nth_record(path: str, index: int) -> Optional[tuple[int, list[str]]]:
    """``(first line, fields)`` of a CSV/TSV file's record ``index`` (from 0), or None."""
    fmt = FILE_FORMATS.get(Path(path).suffix.lower())
    if fmt not in ("csv", "tsv") or not Path(path).is_file():
        return None
    try:
        with contextlib.closing(_records(Path(path), "," if fmt == "csv" else "\t")) as records, \
                _unlimited_csv_fields():
            return next(itertools.islice(records, index, None), None)
    except (UnicodeDecodeError, csv.Error, OSError):
        return None


def _records(file: Path, sep: str) -> Iterator[tuple[int, list[str]]]:
    """The file's records as ``(first line, fields)``, split by the csv module the way pandas splits rows.

    The lines pandas skips (empty, or only spaces and tabs other than ``sep``) are left out, so
    the n-th record is pandas' n-th row. (They differ only on blank lines ended by a lone ``\\r``,
    old Mac style, where pandas also drops the next line's leading space, tab or separator.)
    """
    last_line = [""]  # the raw line the reader took last: tells `   ` (skipped) from `"   "` (a cell)

    def lines(handle):
        for line in handle:
            last_line[0] = line
            yield line

    blank = " \t".replace(sep, "")
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(lines(handle), delimiter=sep)
        start = 1
        for fields in reader:
            skipped = len(fields) <= 1 and reader.line_num == start and not last_line[0].rstrip("\r\n").strip(blank)
            if not skipped:
                yield start, fields
            start = reader.line_num + 1


@contextlib.contextmanager
def _unlimited_csv_fields():
    """Lift the csv module's 128 KiB cell limit (pandas has none) for the reads inside, then restore it."""
    previous = csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_jsonl(file: Path) -> pd.DataFrame:
    return pd.read_json(file, lines=True, dtype=False, encoding="utf-8")


def _read_json(file: Path) -> pd.DataFrame:
    return pd.read_json(file, dtype=False, encoding="utf-8")


def _read_parquet(file: Path) -> pd.DataFrame:
    return pd.read_parquet(file)


def _read_pickle(file: Path) -> pd.DataFrame:
    from textlora.data.safe_pickle import read_pickled_table

    return read_pickled_table(file)


# Each reader is called as (file, column_names, names_fix); only CSV/TSV use the last two.
_READERS = {
    "csv": lambda f, c, fix: _read_delimited(f, c, ",", fix),
    "tsv": lambda f, c, fix: _read_delimited(f, c, "\t", fix),
    "jsonl": lambda f, c, fix: _read_jsonl(f),
    "json": lambda f, c, fix: _read_json(f),
    "parquet": lambda f, c, fix: _read_parquet(f),
    "pickle": lambda f, c, fix: _read_pickle(f),
}


def _stream_parquet(file: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas()


# Each streamer is called as (file, column_names, chunk_rows, names_fix).
_STREAMERS = {
    "csv": lambda f, c, n, fix: _stream_delimited(f, c, ",", n, fix),
    "tsv": lambda f, c, n, fix: _stream_delimited(f, c, "\t", n, fix),
    "jsonl": lambda f, c, n, fix: pd.read_json(f, lines=True, dtype=False, encoding="utf-8", chunksize=n),
    "parquet": lambda f, c, n, fix: _stream_parquet(f, n),
}


def _read_hub(name: str, split: str) -> pd.DataFrame:
    """Load a hub dataset split (needs network access or a populated HF cache)."""
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown name, unknown split: all end the same way
        raise DataError(
            f"could not load hub dataset {name!r} split {split!r}: {_first_line(exc)}. "
            "Without network access, point data paths at local files (CSV, JSONL, Parquet or pickle)"
        ) from None
    frame = dataset.to_pandas()
    label_feature = dataset.features.get("label")
    names = getattr(label_feature, "names", None)
    if names:
        frame.attrs["label_names"] = list(names)
    return frame
