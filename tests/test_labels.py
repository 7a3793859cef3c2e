"""Label maps: how raw labels (ints 0- or 1-based, or strings) become class ids, and every way that can fail."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textlora.errors import DataError
from textlora.data.labels import LabelMap, build_label_map

AG = ["World", "Sports", "Business", "Sci/Tech"]


def test_ints_one_to_four_are_one_based():
    label_map = build_label_map([3, 1, 4, 2, 1], "train")
    assert (label_map.kind, label_map.base, label_map.num_labels) == ("int", 1, 4)
    assert label_map.names == ("class_0", "class_1", "class_2", "class_3")
    assert label_map.encode([1, 2, 3, 4], "train") == [0, 1, 2, 3]


def test_ints_zero_to_three_are_zero_based():
    label_map = build_label_map(np.array([0, 3, 2, 1]), "train", AG)
    assert (label_map.base, label_map.names) == (0, tuple(AG))
    assert label_map.encode([0, 3], "eval") == [0, 3]


def test_int_strings_from_a_csv_are_ints():
    label_map = build_label_map(["1", " 2", "3 ", "4"], "train")
    assert (label_map.kind, label_map.base) == ("int", 1)
    assert label_map.encode(["4", 1.0], "eval") == [3, 0]


def test_label_base_override():
    # 1..3 with auto would be 1-based; forcing 0 makes 4 classes with class_0 unseen.
    label_map = build_label_map([1, 2, 3], "train", label_base="0")
    assert (label_map.base, label_map.num_labels) == (0, 4)
    assert build_label_map([0, 1, 2], "train", label_base="auto").base == 0
    with pytest.raises(DataError, match="label 0 is below the label base 1"):
        build_label_map([0, 1, 2], "train", label_base="1")


def test_strings_sorted_or_in_label_names_order():
    raw = ["sports", "world", " business", "sports"]
    assert build_label_map(raw, "train").names == ("business", "sports", "world")
    ordered = build_label_map(raw, "train", ["world", "sports", "business"])
    assert ordered.names == ("world", "sports", "business")
    assert ordered.encode(raw, "train") == [1, 0, 2, 1]
    with pytest.raises(DataError, match=r"\['world'\] are not in data.label_names"):
        build_label_map(raw, "train", ["sports", "business"])


def test_mixed_ints_and_strings_name_both_rows():
    with pytest.raises(DataError) as info:
        build_label_map([1, 2, "3", "sports", 4], "train data x.csv")
    message = str(info.value)
    assert "train data x.csv" in message
    assert "1 (row 0)" in message and "'sports' (row 3)" in message


def test_a_single_class_is_refused():
    with pytest.raises(DataError, match="only one class"):
        build_label_map(["spam", "spam ", "spam"], "train")


def test_missing_labels_give_row_numbers():
    with pytest.raises(DataError, match=r"3 row\(s\) have no label \(rows 1, 3, 4\)"):
        build_label_map([1, None, 2, "  ", float("nan"), 3], "train")


def test_int_label_beyond_label_names():
    with pytest.raises(DataError, match=r"label 5 \(row 3\) is outside the 4 classes.*labels 0..3 or 1..4; fix that label"):
        build_label_map([1, 2, 3, 5], "train", AG)


def test_sparse_int_labels_are_refused_not_expanded():
    # Years or ids as labels would otherwise make a head with thousands of never-seen classes.
    with pytest.raises(DataError, match="2011 classes"):
        build_label_map([1990, 2005, 2010], "train")
    with pytest.raises(DataError, match="label_names"):
        build_label_map(["0", "10000000000"], "train")
    assert build_label_map([1, 3, 4], "train").num_labels == 5  # a few unseen classes are still fine


def test_unknown_label_at_eval_time_is_listed():
    label_map = build_label_map([1, 2, 3, 4], "train")
    with pytest.raises(DataError) as info:
        label_map.encode([1, 5, 2, 0, 5], "test data t.csv")
    message = str(info.value)
    assert "2 label value(s)" in message
    assert "5 (row 1)" in message and "0 (row 3)" in message
    string_map = build_label_map(["a", "b"], "train")
    with pytest.raises(DataError, match="'c' \\(row 2\\)"):
        string_map.encode(["a", "b", "c"], "eval")


def test_names_are_accepted_for_int_maps():
    label_map = build_label_map([1, 2, 3, 4], "train", AG)
    assert label_map.encode(["Sports", "Sci/Tech", "World"], "eval") == [1, 3, 0]
    with pytest.raises(DataError, match="'Politics'"):
        label_map.encode(["Sports", "Politics"], "eval")


@pytest.mark.parametrize("label_map", [
    LabelMap(names=tuple(AG), kind="int", base=1),
    LabelMap(names=("neg", "pos"), kind="str"),
])
def test_save_load_round_trip(tmp_path, label_map):
    path = tmp_path / "labels.json"
    label_map.save(path)
    loaded = LabelMap.load(path)
    assert loaded == label_map
    assert loaded.describe() == label_map.describe()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=6), st.integers(-3, 10**12).map(str)), min_size=2, max_size=12)
       .filter(lambda xs: len(set(xs)) >= 2))
def test_any_labels_map_and_decode_or_fail_cleanly(raw):
    try:
        label_map = build_label_map(raw, "train")
        ids = label_map.encode(raw, "train")
    except DataError:
        return
    assert len(ids) == len(raw)
    assert all(0 <= i < label_map.num_labels for i in ids)
    assert len(set(ids)) >= 2
    for value, class_id in zip(raw, ids):
        if label_map.kind == "str":
            assert label_map.names[class_id] == value.strip()
        else:
            assert class_id + label_map.base == int(value)
