"""Data stage: rows -> (texts, class ids), the validation split, the length filter, and a report.

Everything that is dropped or changed is counted in the returned report and printed, never silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from textlora.config import DataConfig, DataSource
from textlora.errors import DataError
from textlora.data.labels import LabelMap, build_label_map, row_name
from textlora.data.readers import file_line, first_record, iter_table, read_table


@dataclass
class Split:
    """Texts and their class ids (``labels`` is None for unlabelled input)."""

    texts: list[str]
    labels: Optional[list[int]] = None

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TrainingData:
    train: Split
    validation: Split
    label_map: LabelMap
    report: dict = field(default_factory=dict)
    test: Optional[Split] = None
    eval_sets: dict[str, Split] = field(default_factory=dict)
    """``data.eval_sets`` read like validation, by name: evaluated during training, never trained on."""


TEXT_COLUMNS_FIX = "Set text_columns (and column_names for a CSV without a header)"
LABEL_COLUMN_FIX = "Set label_column (and column_names for a CSV without a header)"
CLI_TEXT_COLUMNS_FIX = "Pass --text-columns (and --header, or --column-names for a CSV without a header row)"
CLI_LABEL_COLUMN_FIX = "Pass --label-column (and --header, or --column-names for a CSV without a header row)"


def extract_texts(frame: pd.DataFrame, text_columns: list[str], where: str, clean_backslashes: bool,
                  fix: str = TEXT_COLUMNS_FIX, name_row: Callable[[int], str] = row_name) -> list[str]:
    """Join ``text_columns`` with a space (blank and NaN cells are skipped) into one text per row.

    Raises:
        DataError: a text column is missing (the message lists the columns that exist and gives ``fix``),
            or a text is not valid Unicode (:func:`text_problem`; the message names its row by ``name_row``).
    """
    missing = [c for c in text_columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: text column(s) {missing} not found; the data has columns {list(map(str, frame.columns))}. "
            f"{fix}"
        )
    try:
        parts = [frame[c].map(_cell_text) for c in text_columns]
        texts = parts[0] if len(parts) == 1 else pd.Series([" ".join(p for p in row if p) for row in zip(*parts)])
        texts = [_clean_text(t, clean_backslashes) for t in texts]
    except UnicodeEncodeError:  # pandas' Arrow strings refuse a cell that is no text: find its row, named below
        texts = [" ".join(map(_cell_text, row)) for row in zip(*(frame[c].tolist() for c in text_columns))]
        if not any(map(text_problem, texts)):
            raise
    _refuse_non_text(texts, where, name_row)
    return texts


def clean_texts(texts: Iterable[Optional[str]], clean_backslashes: bool, where: str,
                name_row: Callable[[int], str] = row_name) -> list[str]:
    """``texts`` normalised as training normalised its data (:func:`extract_texts`): ends stripped, runs of
    whitespace one space, backslashes spaces with ``clean_backslashes``; None is an empty text.

    Raises:
        DataError: a text is not valid Unicode (:func:`text_problem`), naming ``where`` and its row.
    """
    cleaned = [_clean_text(_cell_text(text), clean_backslashes) for text in texts]
    _refuse_non_text(cleaned, where, name_row)
    return cleaned


def _clean_text(text: str, clean_backslashes: bool) -> str:
    if clean_backslashes:
        # AG News marks line breaks with a lone backslash ("dwindling\band"); a space is what was meant.
        text = text.replace("\\", " ")
    return " ".join(text.split())


def _refuse_non_text(texts: list[str], where: str, name_row: Callable[[int], str]) -> None:
    for row, text in enumerate(texts):
        problem = text_problem(text)
        if problem:
            raise DataError(f"{where}: {name_row(row)}: the text {problem}; "
                            "fix or remove that row")


def text_problem(text: str) -> Optional[str]:
    """Why ``text`` is no text a tokenizer can take, or None: a lone UTF-16 surrogate (``"\\ud800"`` is valid
    JSON) or bytes that were not UTF-8 (Python carries those in command-line arguments as surrogates)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        bad = text[exc.start:exc.end]
        if all(0xDC80 <= ord(c) <= 0xDCFF for c in bad):  # surrogateescape: one surrogate per undecodable byte
            return f"is not valid UTF-8 (bytes {bytes(ord(c) - 0xDC00 for c in bad)!r} at character {exc.start})"
        return (f"holds U+{ord(bad[0]):04X} at character {exc.start}, a lone surrogate, which is no character "
                "(a \\uD800-\\uDFFF escape in JSON must be one of a high-low pair)")


def _cell_text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def label_column(frame: pd.DataFrame, source: DataSource, where: str, fix: str = LABEL_COLUMN_FIX) -> list:
    if source.label_column not in frame.columns:
        raise DataError(
            f"{where}: label column {source.label_column!r} not found; the data has columns "
            f"{list(map(str, frame.columns))}. {fix}"
        )
    return frame[source.label_column].tolist()


def word_counts(texts: list[str]) -> np.ndarray:
    return np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))


def length_histogram(lengths: np.ndarray) -> dict:
    """``{"words": [distinct word counts, ascending], "rows": [rows with that count]}`` for ``data_report.json``."""
    words, rows = np.unique(lengths, return_counts=True)
    return {"words": words.tolist(), "rows": rows.tolist()}


def _drop_empty(texts: list[str], raw_labels: list, where: str, report: dict) -> tuple[list[str], list, list[int]]:
    """The rows whose text is not empty: texts, labels, and their data rows (from 0) in the file."""
    keep = [i for i, t in enumerate(texts) if t]
    dropped = len(texts) - len(keep)
    report[f"{where}_empty_texts_dropped"] = dropped
    if dropped:
        print(f"[data] {where}: dropped {dropped} row(s) whose text is empty or blank")
    if not keep:
        raise DataError(f"{where}: every text is empty; check text_columns")
    return [texts[i] for i in keep], [raw_labels[i] for i in keep], keep


def _load_labelled(source: DataSource, where: str, cfg: DataConfig,
                   report: dict) -> tuple[list[str], list, pd.DataFrame, Callable[[int], str]]:
    """Texts and raw labels of the rows with text, the table read, and how an error names a row kept
    (by its line in a CSV/TSV file, what an editor shows)."""
    frame = read_table(source.path, source.column_names, source.split)
    by_line = _row_namer(source)
    texts = extract_texts(frame, list(source.text_columns), where, cfg.clean_backslashes, name_row=by_line)
    raw = label_column(frame, source, where)
    report[f"{where}_rows_read"] = len(texts)
    texts, raw, kept = _drop_empty(texts, raw, where, report)
    return texts, raw, frame, lambda row: by_line(kept[row])


def prepare_training_data(cfg: DataConfig, seed: int) -> TrainingData:
    """Read train (+ validation, + test, + eval sets), map labels, carve the validation split, filter by length.

    Returns:
        TrainingData whose ``report`` counts rows read, dropped, filtered and per class.
    """
    report: dict = {}
    texts, raw, frame, name_row = _load_labelled(cfg.train, "train", cfg, report)
    names = cfg.label_names or frame.attrs.get("label_names")
    label_map = build_label_map(raw, f"train data {cfg.train.path}", names, cfg.label_base, name_row)
    labels = label_map.encode(raw, f"train data {cfg.train.path}", name_row)
    print(f"[data] {label_map.describe()}")
    absent = np.flatnonzero(np.bincount(labels, minlength=label_map.num_labels) == 0)
    if len(absent):
        # Allowed (data.label_names may list a class the data lacks), but labels 2..5 read as 0-based
        # make classes 0 and 1 this way, silently.
        report["classes_without_training_rows"] = [label_map.names[c] for c in absent]
        print(f"[data] warning: label(s) {', '.join(label_map.raw_label(c) for c in absent)} have no training rows, "
              "so the model cannot learn them; int labels must be 0..K-1 or 1..K (renumber them if they are not)")

    if cfg.max_train_rows is not None and cfg.max_train_rows < len(texts):
        texts, labels = _stratified_take(texts, labels, cfg.max_train_rows, seed)
        report["train_rows_subsampled_to"] = len(texts)

    if cfg.validation is not None:
        val_texts, val_raw, _, name_row = _load_labelled(cfg.validation, "validation", cfg, report)
        validation = Split(val_texts, label_map.encode(val_raw, f"validation data {cfg.validation.path}", name_row))
        train = Split(texts, labels)
    else:
        train, validation = _carve_validation(texts, labels, cfg.validation_size, seed, label_map)
    report["validation_rows"] = len(validation)

    # Word counts before and after the length filter, kept per length so the report can draw both.
    report["train_length_histogram_before_filter"] = length_histogram(word_counts(train.texts))
    train = _length_filter(train, cfg, report)
    if len(set(train.labels)) < 2:
        raise DataError("after the length filter the training data has one class left; widen data.min_words/max_words")
    report["train_rows"] = len(train)
    report["train_class_counts"] = {label_map.names[i]: int(n) for i, n in enumerate(np.bincount(train.labels, minlength=label_map.num_labels))}
    lengths = word_counts(train.texts)
    report["train_words"] = {"median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
                             "min": int(lengths.min()), "max": int(lengths.max())}
    report["train_length_histogram"] = length_histogram(lengths)

    test = None
    if cfg.test is not None:
        test_texts, test_raw, _, name_row = _load_labelled(cfg.test, "test", cfg, report)
        test = Split(test_texts, label_map.encode(test_raw, f"test data {cfg.test.path}", name_row))
    eval_sets = {}
    for name, source in cfg.eval_sets.items():
        set_texts, set_raw, _, name_row = _load_labelled(source, f"eval_sets.{name}", cfg, report)
        eval_sets[name] = Split(set_texts, label_map.encode(set_raw, f"data.eval_sets.{name} data {source.path}",
                                                            name_row))
    if eval_sets:
        report["eval_set_rows"] = {name: len(split) for name, split in eval_sets.items()}
    return TrainingData(train=train, validation=validation, label_map=label_map, report=report, test=test,
                        eval_sets=eval_sets)


def _stratified_take(texts, labels, count, seed):
    idx = np.arange(len(texts))
    try:
        taken, _ = train_test_split(idx, train_size=count, stratify=labels, random_state=seed)
    except ValueError as exc:  # e.g. fewer rows than classes cannot be stratified
        raise DataError(f"data.max_train_rows={count} cannot be a stratified subsample of {len(texts)} rows: "
                        f"{exc}; raise data.max_train_rows or set it to null") from None
    taken = np.sort(taken)
    return [texts[i] for i in taken], [labels[i] for i in taken]


def _carve_validation(texts, labels, size: float, seed: int, label_map: LabelMap) -> tuple[Split, Split]:
    count = int(size) if size >= 1 else size
    if isinstance(count, int) and count >= len(texts):
        raise DataError(f"data.validation_size={count} leaves no training rows (only {len(texts)} rows)")
    # A stratified split puts each class on both sides: a class of one row cannot be split (sklearn's
    # own message names it by class id, not by its label).
    rows_per_class = np.bincount(np.asarray(labels), minlength=label_map.num_labels)
    single = [label_map.raw_label(c) for c in np.flatnonzero(rows_per_class == 1)]
    if single:
        raise DataError(f"label(s) {', '.join(single)} have a single training row, and a stratified validation split "
                        "needs at least two rows of each class; add rows of those classes or remove that row, "
                        "or give a separate validation file (data.validation)")
    idx = np.arange(len(texts))
    try:
        train_idx, val_idx = train_test_split(idx, test_size=count, stratify=labels, random_state=seed)
    except ValueError as exc:  # e.g. a class with a single row cannot be stratified
        raise DataError(f"could not carve a stratified validation split of {size}: {exc}; "
                        "set data.validation_size larger or give data.validation") from None
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return (Split([texts[i] for i in train_idx], [labels[i] for i in train_idx]),
            Split([texts[i] for i in val_idx], [labels[i] for i in val_idx]))


def _length_filter(train: Split, cfg: DataConfig, report: dict) -> Split:
    if cfg.min_words is None and cfg.max_words is None:
        return train
    lengths = word_counts(train.texts)
    keep = np.ones(len(lengths), dtype=bool)
    if cfg.min_words is not None:
        keep &= lengths >= cfg.min_words
    if cfg.max_words is not None:
        keep &= lengths <= cfg.max_words
    removed = int((~keep).sum())
    report["length_filter"] = {"min_words": cfg.min_words, "max_words": cfg.max_words, "removed": removed,
                               "kept": int(keep.sum())}
    print(f"[data] length filter {cfg.min_words}-{cfg.max_words} words removed {removed} of {len(lengths)} training rows")
    if not keep.any():
        raise DataError(f"the length filter {cfg.min_words}-{cfg.max_words} words removes every training row")
    return Split([t for t, k in zip(train.texts, keep) if k], [y for y, k in zip(train.labels, keep) if k])


def load_inference_data(source: DataSource, label_map: Optional[LabelMap], clean_backslashes: bool,
                        need_labels: bool, trained: Optional[DataSource] = None) -> tuple[Split, dict]:
    """Read rows for evaluate/predict: every row is kept in input order (IDs must line up).

    ``trained`` is how the run read its training data (None: ``source`` itself). Where ``source`` reads
    as the run did, two things are read the way a newcomer's file has them (and said): a CSV whose first
    row names the columns is read as having a header row, and a ``text`` column stands in for the run's
    text columns when they are absent (Kaggle's pickle). Errors name rows by their file line (CSV/TSV).
    """
    source = _with_detected_header(source, trained)
    where = f"data {source.path}"
    frame = read_table(source.path, source.column_names, source.split, _inference_names_fix(source))
    texts = extract_texts(frame, _inference_text_columns(frame, source, trained), where, clean_backslashes,
                          CLI_TEXT_COLUMNS_FIX, _row_namer(source))
    empty = sum(1 for t in texts if not t)
    stats = {"rows": len(texts), "empty_texts": empty}
    if empty:
        print(f"[data] {source.path}: {empty} row(s) have empty text; they are classified from an empty input")
    labels = None
    if need_labels:
        labels = label_map.encode(label_column(frame, source, where, CLI_LABEL_COLUMN_FIX), where,
                                  _row_namer(source))
    return Split(texts, labels), stats


def iter_inference_rows(source: DataSource, clean_backslashes: bool, chunk_rows: int = 8192,
                        trained: Optional[DataSource] = None) -> Iterator[tuple[list[str], Optional[list[str]]]]:
    """The rows' texts for predict and their IDs, in input order, ``chunk_rows`` at a time (memory stays flat).

    The IDs are the file's own ``id``/``ID`` column when it has one (Kaggle's files do; said once), else
    None (predict numbers the rows). ``trained`` as for :func:`load_inference_data`.
    """
    source = _with_detected_header(source, trained)
    columns = id_column = None
    names_fix = _inference_names_fix(source)
    first_row = 0
    for frame in iter_table(source.path, source.column_names, source.split, chunk_rows, names_fix):
        if columns is None:
            columns = _inference_text_columns(frame, source, trained)
            id_column = next((c for c in ID_COLUMNS if c in frame.columns and c not in columns), None)
            if id_column is not None:
                print(f"[data] {source.path}: IDs from its {id_column!r} column")
        texts = extract_texts(frame, columns, f"data {source.path}", clean_backslashes, CLI_TEXT_COLUMNS_FIX,
                              _row_namer(source, first_row))
        first_row += len(frame)
        yield texts, (None if id_column is None else [_cell_text(v) for v in frame[id_column]])


def _row_namer(source: DataSource, first_row: int = 0) -> Callable[[int], str]:
    """Names row ``i`` of a chunk starting at data row ``first_row`` in errors: by its line in a CSV/TSV file
    (what an editor shows; a quoted cell may span lines), else by its data row (from 0)."""
    def name(row: int) -> str:
        line = file_line(source.path, source.column_names is None, first_row + row)
        return f"line {line}" if line else row_name(first_row + row)
    return name


ID_COLUMNS = ("id", "ID", "Id")
"""Columns predict takes row IDs from (the first the data has), instead of numbering the rows."""


def _with_detected_header(source: DataSource, trained: Optional[DataSource]) -> DataSource:
    """``source`` read with its header row when it is a CSV/TSV read with the run's column names and its
    first row names the columns expected at inference (each field a column name the run knows, its text
    columns or ``text`` among them); said when it happens. Otherwise ``source`` as it is."""
    names = source.column_names
    if not names or (trained is not None and list(names) != list(trained.column_names or [])):
        return source  # no column names, or the user's own (--column-names): the file is as they say
    first = first_record(source.path)
    if not first:
        return source
    fields = [field.strip() for field in first]
    known = {*names, *source.text_columns, source.label_column, "text", *ID_COLUMNS}
    texts_named = all(c in fields for c in source.text_columns) or "text" in fields
    if len(set(fields)) != len(fields) or not set(fields) <= known or not texts_named:
        return source
    print(f"[data] {source.path}: its first row ({','.join(fields)}) names the columns; read as a header row "
          "(as --header would)")
    return DataSource(path=source.path, split=source.split, column_names=None, text_columns=source.text_columns,
                      label_column=source.label_column)


def _inference_names_fix(source: DataSource) -> str:
    """The fix for a wrong column count at evaluate/predict: the flags that override the run's column names."""
    return (f"if {source.path} has a header row, pass --header (and --text-columns if its text is not in "
            f"{', '.join(source.text_columns)} or text); otherwise name its columns with --column-names")


def _inference_text_columns(frame: pd.DataFrame, source: DataSource, trained: Optional[DataSource]) -> list[str]:
    """The text columns to read: ``source``'s. Where those are the run's own and absent, a ``text`` column
    (Kaggle's pickle has one) is used instead, and that is said; columns the user named (--text-columns)
    are used as named, and their absence is an error."""
    columns = list(source.text_columns)
    own = trained is None or columns == list(trained.text_columns)
    if own and any(c not in frame.columns for c in columns) and "text" in frame.columns:
        print(f"[data] {source.path}: columns {columns} not found, using its 'text' column")
        columns = ["text"]
    return columns
