"""Label mapping: raw labels (ints, 0- or 1-based, or strings) <-> class ids 0..K-1.

The map is saved in the run folder as ``labels.json`` so that evaluate and predict read
labels exactly as training did.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from textlora.errors import DataError

_INT = re.compile(r"^\s*[+-]?\d+\s*$")


def row_name(row: int) -> str:
    """How an error names data row ``row`` (from 0) when nothing better is known: ``row N``."""
    return f"row {row}"


@dataclass(frozen=True)
class LabelMap:
    """How raw labels become class ids.

    Attributes:
        names: class names in id order.
        kind: ``int`` (raw labels are integers, id = raw - base) or ``str`` (raw label is the name).
        base: 0 or 1 for int labels; None for string labels.
    """

    names: tuple[str, ...]
    kind: str
    base: Optional[int] = None

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        if self.kind == "int":
            first, last = self.base, self.base + self.num_labels - 1
            return f"labels are ints {first}..{last} ({self.base}-based), class ids 0..{self.num_labels - 1}: {', '.join(self.names)}"
        return f"labels are strings, class ids 0..{self.num_labels - 1}: {', '.join(self.names)}"

    def raw_label(self, class_id: int) -> str:
        """Class ``class_id`` as the data spells it: ``5`` for class 4 of 1-based ints, ``'Sports'`` for strings."""
        return str(class_id + self.base) if self.kind == "int" else repr(self.names[class_id])

    def encode(self, raw: Sequence, where: str, name_row: Callable[[int], str] = row_name) -> list[int]:
        """Map raw labels to class ids; a label outside the known set is an error naming it and its row
        (``name_row(i)`` for data row ``i``, e.g. ``line 3`` of a CSV).

        Names are accepted for int maps too, so a test file may spell ``Sports`` for ``2``.
        """
        values = normalise_labels(raw, where, name_row)
        by_name = {name: i for i, name in enumerate(self.names)}
        ids, unknown = [], {}
        for row, value in enumerate(values):
            if isinstance(value, int) and self.kind == "int":
                class_id = value - self.base
                ok = 0 <= class_id < self.num_labels
            else:
                class_id = by_name.get(str(value), -1)
                ok = class_id >= 0
            if not ok:
                unknown.setdefault(value, row)
            ids.append(class_id)
        if unknown:
            shown = ", ".join(f"{v!r} ({name_row(r)})" for v, r in list(unknown.items())[:5])
            raise DataError(
                f"{where}: {len(unknown)} label value(s) outside the run's classes: {shown}. "
                f"Known: {self.describe()}.{self._other_base_hint(values)} "
                "Fix the labels or evaluate with data of the same classes"
            )
        return ids

    def _other_base_hint(self, values: Sequence) -> str:
        """A hint when every int label fits the run's classes counted from the other base (0..3 for 1..4)."""
        ints = [v for v in values if isinstance(v, int)]
        if self.kind != "int" or not ints:
            return ""
        other = 1 - self.base
        low, high = min(ints), max(ints)
        if not other <= low <= high <= other + self.num_labels - 1:
            return ""
        return (f" These labels ({low}..{high}) look {other}-based, and the run's are {self.base}-based: "
                f"{'add 1 to' if other == 0 else 'subtract 1 from'} every label, or write the class names.")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "LabelMap":
        from textlora.run.files import read_json

        data = read_json(path)
        return cls(names=tuple(data["names"]), kind=data["kind"], base=data.get("base"))


def normalise_labels(raw: Sequence, where: str, name_row: Callable[[int], str] = row_name) -> list:
    """Turn each raw label into an ``int`` or a ``str``; blanks and mixed kinds are errors naming the rows
    (``name_row`` as for :meth:`LabelMap.encode`)."""
    values, missing = [], []
    for row, value in enumerate(raw):
        if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
            missing.append(row)
            values.append(None)
        elif isinstance(value, bool):
            values.append(int(value))
        elif isinstance(value, (int,)) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
            values.append(int(value))
        elif isinstance(value, float) and value.is_integer():
            values.append(int(value))
        elif isinstance(value, str) and _INT.match(value):
            values.append(int(value))
        else:
            values.append(str(value).strip())
    if missing:
        rows = (f"rows {', '.join(str(r) for r in missing[:5])}" if name_row is row_name else
                ", ".join(name_row(r) for r in missing[:5]))
        raise DataError(f"{where}: {len(missing)} row(s) have no label ({rows}); fill them in or remove those rows")
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        first_int = next(i for i, v in enumerate(values) if isinstance(v, int))
        first_str = next(i for i, v in enumerate(values) if isinstance(v, str))
        raise DataError(
            f"{where}: labels mix integers and strings, e.g. {values[first_int]!r} ({name_row(first_int)}) "
            f"and {values[first_str]!r} ({name_row(first_str)}); use one kind for every row"
        )
    return values


def build_label_map(raw: Sequence, where: str, label_names: Optional[Sequence[str]] = None,
                    label_base: str = "auto", name_row: Callable[[int], str] = row_name) -> LabelMap:
    """Infer the label map from the training labels.

    Int labels are 1-based when ``label_base`` says so, or (``auto``) when 0 never occurs and the
    largest label equals the class count (AG News' 1..4). String labels keep the order of
    ``label_names`` when given, else sorted order.
    """
    values = normalise_labels(raw, where, name_row)
    distinct = sorted(set(values))
    if len(distinct) < 2:
        raise DataError(
            f"{where}: the training data has only one class ({distinct[0]!r}); a classifier needs at least two. "
            "Check the label column and any length filter or row limit"
        )
    if isinstance(distinct[0], str):
        names = tuple(label_names) if label_names else tuple(distinct)
        missing = [v for v in distinct if v not in names]
        if missing:
            raise DataError(f"{where}: labels {missing[:5]} are not in data.label_names {list(names)}; add them or fix the data")
        return LabelMap(names=names, kind="str")
    count = len(label_names) if label_names else None
    if label_base == "auto":
        expected = count or len(distinct)
        base = 1 if (0 not in distinct and distinct[-1] == expected) else 0
    else:
        base = int(label_base)
    if distinct[0] - base < 0:
        raise DataError(f"{where}: label {distinct[0]} is below the label base {base}; set data.label_base to 0 or 1")
    num_labels = count or (distinct[-1] - base + 1)
    if count is None and num_labels - len(distinct) > len(distinct):
        # Ids such as years would otherwise make a head of thousands of never-seen classes (or exhaust memory).
        raise DataError(
            f"{where}: int labels {distinct[:5]}{'...' if len(distinct) > 5 else ''} would make {num_labels} classes "
            f"of which only {len(distinct)} occur; int labels must be 0..K-1 or 1..K. "
            "Set data.label_names to the K class names, or use string labels"
        )
    if distinct[-1] - base >= num_labels:
        allowed = (f"0..{num_labels - 1} or 1..{num_labels}" if label_base == "auto"
                   else f"{base}..{base + num_labels - 1}")
        first = values.index(distinct[-1])
        raise DataError(
            f"{where}: label {distinct[-1]} ({name_row(first)}) is outside the {num_labels} classes of "
            f"data.label_names, labels {allowed}; fix that label, or list every class in data.label_names"
        )
    names = tuple(label_names) if label_names else tuple(f"class_{i}" for i in range(num_labels))
    return LabelMap(names=names, kind="int", base=base)
