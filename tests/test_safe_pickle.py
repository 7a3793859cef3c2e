"""read_pickled_table loads genuine pickled DataFrames/Datasets and refuses hostile pickles unexecuted."""

import builtins
import json
import os
import pickle
import shutil
import subprocess

import datasets
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textlora.errors import DataError
from textlora.data.safe_pickle import read_pickled_table

datasets.disable_progress_bars()


def _write(tmp_path, obj, name="data.pkl", protocol=pickle.HIGHEST_PROTOCOL):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _texts(n):
    return [f"review {i}: ünïcödé, \"quotes\", commas\nand newlines" for i in range(n)]


@pytest.mark.parametrize("protocol", range(6))
def test_dataset_with_one_text_column_round_trips(tmp_path, protocol):
    # The shape of Kaggle's test_unlabelled.pkl: a datasets.Dataset with one "text" column.
    texts = _texts(50)
    path = _write(tmp_path, datasets.Dataset.from_dict({"text": texts}), protocol=protocol)
    df = read_pickled_table(path)
    assert list(df.columns) == ["text"]
    assert df["text"].tolist() == texts


def test_dataset_with_classlabel_round_trips(tmp_path):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    labels = [i % 2 for i in range(50)]
    ds = datasets.Dataset.from_dict({"text": _texts(50), "label": labels}, features=features)
    df = read_pickled_table(_write(tmp_path, ds))
    pd.testing.assert_frame_equal(df, ds.to_pandas())


def test_dataset_after_map_and_select_round_trips(tmp_path):
    # select() leaves an indices mapping beside the table; the rows must come back in its order.
    ds = datasets.Dataset.from_dict({"text": _texts(20)}).map(lambda row: {"n": len(row["text"])})
    ds = ds.select([7, 3, 19, 0])
    df = read_pickled_table(_write(tmp_path, ds))
    assert df["text"].tolist() == [_texts(20)[i] for i in (7, 3, 19, 0)]
    assert df["n"].tolist() == [len(t) for t in df["text"]]


def test_memory_mapped_dataset_loads_and_missing_cache_is_a_clear_error(tmp_path):
    datasets.Dataset.from_dict({"text": _texts(10)}).save_to_disk(tmp_path / "saved")
    ds = datasets.load_from_disk(tmp_path / "saved").select([2, 1])
    path = _write(tmp_path, ds)
    assert read_pickled_table(path)["text"].tolist() == [_texts(10)[2], _texts(10)[1]]
    del ds
    shutil.rmtree(tmp_path / "saved")
    with pytest.raises(DataError, match=r"Arrow cache file .*saved.*does not exist") as info:
        read_pickled_table(path)
    assert str(path) in str(info.value)


def test_dataframe_round_trips_with_dtypes(tmp_path):
    df = pd.DataFrame(
        {
            "text": ["a", "b", None],
            "obj": pd.Series(["x", 1, None], dtype=object),
            "n": [1, 2, 3],
            "f": [0.5, float("nan"), 2.5],
            "cat": pd.Categorical(["x", "y", "x"]),
        },
        index=pd.Index(["r1", "r2", "r3"]),
    )
    for protocol in range(6):
        pd.testing.assert_frame_equal(read_pickled_table(_write(tmp_path, df, protocol=protocol)), df)
    ranged = df.reset_index(drop=True)
    pd.testing.assert_frame_equal(read_pickled_table(_write(tmp_path, ranged)), ranged)


class _Payload:
    """Unpickling this calls func(*args): what a hostile pickle does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _global_name(func):
    return f"{func.__module__}.{func.__name__}"


def _in_dataset_info(payload):
    ds = datasets.Dataset.from_dict({"text": ["ok"]})
    ds.info.description = payload
    return ds


def _in_attrs(payload):
    df = pd.DataFrame({"text": ["ok"]})
    df.attrs["note"] = payload
    return df


_HOSTILE = {
    "os.system": lambda sentinel: _Payload(os.system, f"touch {sentinel}"),
    "eval": lambda sentinel: _Payload(builtins.eval, f"open({str(sentinel)!r}, 'w')"),
    "exec": lambda sentinel: _Payload(builtins.exec, f"open({str(sentinel)!r}, 'w')"),
    "subprocess.call": lambda sentinel: _Payload(subprocess.call, ["touch", str(sentinel)]),
    "pandas.read_pickle": lambda sentinel: _Payload(pd.read_pickle, str(sentinel)),
    "getattr": lambda sentinel: _Payload(builtins.getattr, "text", "upper"),
    "__import__": lambda sentinel: _Payload(builtins.__import__, "os"),
    # Hidden inside genuine tables: a DataFrame cell, DataFrame.attrs, a Dataset's info.
    "in-cell": lambda sentinel: pd.DataFrame({"text": ["ok", _Payload(os.system, f"touch {sentinel}")]}),
    "in-attrs": lambda sentinel: _in_attrs(_Payload(os.system, f"touch {sentinel}")),
    "in-dataset-info": lambda sentinel: _in_dataset_info(_Payload(os.system, f"touch {sentinel}")),
}


@pytest.mark.parametrize("make_payload", _HOSTILE.values(), ids=_HOSTILE.keys())
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_hostile_pickle_is_refused_without_running(tmp_path, make_payload, protocol):
    sentinel = tmp_path / "SENTINEL"
    payload = make_payload(sentinel)
    path = _write(tmp_path, payload, protocol=protocol)
    with pytest.raises(DataError) as info:
        read_pickled_table(path)
    message = str(info.value)
    func = payload.func if isinstance(payload, _Payload) else os.system
    assert _global_name(func) in message, message
    assert str(path) in message and "CSV" in message
    assert not sentinel.exists()


def test_memory_mapped_table_replay_gadget_is_refused(tmp_path):
    # datasets' MemoryMappedTable replays getattr(table, name)(*args) on unpickling; these names
    # walk from the table to subprocess.Popen. The safe loader must refuse the first foreign name.
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(tmp_path / "saved")
    ds = datasets.load_from_disk(tmp_path / "saved")
    sentinel = tmp_path / "SENTINEL"
    index = object.__subclasses__().index(subprocess.Popen)
    ds._data.replays = [
        ("__getattribute__", ("__class__",), {}), ("mro", (), {}), ("__getitem__", (-1,), {}),
        ("__subclasses__", (), {}), ("__getitem__", (index,), {}),
        ("__call__", (["touch", str(sentinel)],), {}),
    ]
    with pytest.raises(DataError, match="replay '__getattribute__'"):
        read_pickled_table(_write(tmp_path, ds))
    assert not sentinel.exists()


def test_refusal_is_exact_name_not_module_prefix(tmp_path):
    # numpy and pandas are allowed modules, but only specific names in them.
    import numpy

    for func in (numpy.load, pd.read_pickle, pd.eval):
        with pytest.raises(DataError, match=_global_name(func).replace(".", r"\.")):
            read_pickled_table(_write(tmp_path, _Payload(func, "x")))


def test_non_pickle_bytes_are_a_clear_error(tmp_path):
    path = tmp_path / "notes.pkl"
    path.write_text("text,label\nhello,1\n")
    with pytest.raises(DataError, match="not a pickle") as info:
        read_pickled_table(path)
    assert str(path) in str(info.value)


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_pickled_table(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_pickled_table(tmp_path / "nope.pkl")


@pytest.mark.parametrize("make", [pd.DataFrame, datasets.Dataset.from_dict])
def test_truncated_pickle_is_a_clear_error(tmp_path, make):
    obj = make({"text": _texts(50)})
    data = pickle.dumps(obj)
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_pickled_table(path)


@pytest.mark.parametrize(
    ("obj", "found"),
    [(["a", "b"], "builtins.list"), ({"text": ["a"]}, "builtins.dict"), (pd.Series(["a"]), "pandas")],
)
def test_wrong_top_level_type_names_what_was_found(tmp_path, obj, found):
    with pytest.raises(DataError, match=f"holds a {found}.*not a pandas DataFrame"):
        read_pickled_table(_write(tmp_path, obj))


def test_dataset_dict_is_refused_with_its_splits(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                               "test": datasets.Dataset.from_dict({"text": ["b"]})})
    with pytest.raises(DataError, match=r"DatasetDict with splits 'train', 'test'.*dd\['train'\]"):
        read_pickled_table(_write(tmp_path, dd))


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.text(), max_size=20), dtype=st.sampled_from([None, object, "string"]))
def test_arbitrary_unicode_text_round_trips(tmp_path_factory, texts, dtype):
    # None is pandas' default string storage (Arrow-backed in pandas 3); object is pandas 2's.
    path = _write(tmp_path_factory.mktemp("prop"), pd.DataFrame({"text": texts}, dtype=dtype))
    df = read_pickled_table(path)
    assert df["text"].tolist() == texts


def test_arrow_array_with_decreasing_offsets_is_rejected(tmp_path):
    # pyarrow unpickles arrays from raw buffers with only cheap checks; a string of length -1 would
    # be read out of bounds. The loader fully validates every array.
    import numpy
    import pyarrow as pa

    good = pa.array(["ab", "c"])
    offsets = pa.py_buffer(numpy.array([0, 3, 2], dtype=numpy.int32).tobytes())
    bad = pa.Array.from_buffers(pa.string(), 2, [None, offsets, good.buffers()[2]])
    with pytest.raises(DataError, match="ArrowInvalid"):
        read_pickled_table(_write(tmp_path, _in_attrs(bad)))


def test_protocol_2_bytes_may_only_use_latin1(tmp_path):
    # Protocol 2 spells bytes as _codecs.encode(text, "latin1"); other codecs are refused.
    import codecs

    with pytest.raises(DataError, match="_codecs.encode with encoding 'rot13'"):
        read_pickled_table(_write(tmp_path, _Payload(codecs.encode, "text", "rot13")))


# --- model weights and checkpoints: tensors only, never code ---------------------------------------------


def test_hostile_model_weights_are_refused_without_running(tmp_path, tiny_model_dir, capsys):
    # A model folder from a stranger whose pytorch_model.bin would run a command when unpickled.
    from textlora.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").unlink()
    sentinel = tmp_path / "SENTINEL"
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload(os.system, f"touch {sentinel}")},
               model / "pytorch_model.bin")
    assert main(["params", "--pretrained", f"model.name_or_path={model}", "model.max_trainable_params=10000000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "refused without running it" in err and "safetensors" in err
    assert "Traceback" not in err and not sentinel.exists()


def test_hostile_checkpoint_is_refused_without_running(tmp_path):
    # A checkpoint whose optim.pt would run a command; its manifest is made to match, so only
    # torch.load(weights_only=True) stands in the way.
    from textlora.training import checkpoint as ckpt
    from textlora.config import OptimConfig
    from textlora.errors import RunFolderError
    from textlora.training.optim import build_optimizer, build_scheduler

    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, OptimConfig(), [])
    scheduler = build_scheduler(optimizer, OptimConfig(), total_steps=4)
    folder = ckpt.save_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000001", model, optimizer, scheduler,
                                  {"step": 1})
    sentinel = tmp_path / "SENTINEL"
    torch.save({"optimizer": _Payload(os.system, f"touch {sentinel}")}, folder / "optim.pt")
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    manifest["files"]["optim.pt"] = {"bytes": (folder / "optim.pt").stat().st_size,
                                     "sha256": ckpt._sha256(folder / "optim.pt")}
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.latest_valid(folder.parent) == folder
    with pytest.raises(RunFolderError, match="refused without running it"):
        ckpt.load_checkpoint(folder, model, optimizer, scheduler)
    assert not sentinel.exists()


def test_no_unrestricted_deserialisation_in_the_package():
    # Every torch.load asks for weights_only=True; pickle is only ever read through the restricted loader.
    import re
    from pathlib import Path

    import textlora

    package = Path(textlora.__file__).parent
    for path in package.rglob("*.py"):
        source = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        if path.name != "safe_pickle.py":
            assert not re.search(r"\bpickle\.loads?\(|\bpd\.read_pickle\(|\.Unpickler\(", source), path.name
