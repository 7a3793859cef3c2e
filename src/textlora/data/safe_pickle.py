"""Load a pickled pandas DataFrame or Hugging Face ``datasets.Dataset`` without running its code.

Why this exists: datasets are often shared as pickles (Kaggle's ``test_unlabelled.pkl`` is a pickled
``datasets.Dataset``), and unpickling can import and call anything the file names. ``pd.read_pickle``
would run a hostile file's payload. Here every global a pickle asks for is checked against an exact
(module, name) allow-list, harvested by pickling real DataFrames and Datasets (pandas 1.5-3, numpy
1.26-2, datasets 2-5, protocols 0-5) and recording the globals they use. Anything else is refused
before it is imported. Three allowed globals are swapped for checked versions (see ``_SHIMS``).

This guards against code execution, not resource exhaustion: a crafted file can still ask for a
huge allocation.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import functools
import importlib
import os
import pickle
import sys
import warnings
from pathlib import Path

import pandas as pd

from textlora.errors import DataError

_CONVERT_HINT = (
    "convert the data to CSV, Parquet or JSONL on a machine you trust "
    "(df.to_parquet('data.parquet') or ds.to_parquet('data.parquet')) and use that file instead"
)

_NULLABLE = "Int8Dtype Int16Dtype Int32Dtype Int64Dtype UInt8Dtype UInt16Dtype UInt32Dtype UInt64Dtype"
# Exact (module, name) pairs, written as module -> names. A module being here admits nothing else in it.
_ALLOWED_NAMES = {
    # Stdlib: protocols <5 spell bytearrays and bytes as calls; protocols 0 and 1 rebuild instances
    # as copyreg._reconstructor(cls, object or dict, state); pandas pickles slices (block
    # placements) and tz-aware columns (datetime.timezone(timedelta)).
    "builtins": "bytearray slice object dict",
    "copyreg": "_reconstructor",
    "_codecs": "encode",
    "datetime": "timedelta timezone",
    # numpy arrays and scalars; numpy 1.x wrote numpy.core, numpy 2 writes numpy._core.
    "numpy": "dtype ndarray",
    "numpy.core.multiarray": "_reconstruct scalar",
    "numpy.core.numeric": "_frombuffer",
    "numpy._core.multiarray": "_reconstruct scalar",
    "numpy._core.numeric": "_frombuffer",
    # pandas reconstructors used by DataFrame pickles of every version.
    "pandas._libs.arrays": "__pyx_unpickle_NDArrayBacked",
    "pandas._libs.internals": "_unpickle_block",
    "pandas.core.indexes.base": "_new_Index Index",
    "pandas.core.internals.managers": "BlockManager SingleBlockManager",
    # pandas 3 pickles public classes under their public names. Series is here only so that a
    # pickled Series gets a "wrong type" message rather than a "refused global" one.
    "pandas": "DataFrame Series Index RangeIndex MultiIndex Categorical CategoricalDtype DatetimeTZDtype "
    f"StringDtype BooleanDtype Float32Dtype Float64Dtype NA {_NULLABLE}",
    "pandas.arrays": "ArrowStringArray StringArray IntegerArray FloatingArray BooleanArray DatetimeArray "
    "TimedeltaArray",
    # pandas 1.x/2.x pickled the same classes under their defining modules.
    "pandas.core.frame": "DataFrame",
    "pandas.core.series": "Series",
    "pandas.core.indexes.range": "RangeIndex",
    "pandas.core.indexes.multi": "MultiIndex",
    "pandas.core.arrays.categorical": "Categorical",
    "pandas.core.dtypes.dtypes": "CategoricalDtype DatetimeTZDtype",
    "pandas.core.arrays.string_": "StringDtype StringArray",
    "pandas.core.arrays.string_arrow": "ArrowStringArray",
    "pandas.core.arrays.integer": f"IntegerArray {_NULLABLE}",
    "pandas.core.arrays.floating": "FloatingArray Float32Dtype Float64Dtype",
    "pandas.core.arrays.boolean": "BooleanArray BooleanDtype",
    "pandas.core.arrays.datetimes": "DatetimeArray",
    "pandas.core.arrays.timedeltas": "TimedeltaArray",
    "pandas._libs.missing": "NA",
    # pyarrow: Dataset tables and pandas' Arrow-backed string columns (the default in pandas 3).
    "pyarrow.lib": "_reconstruct_table _reconstruct_record_batch _restore_array chunked_array field schema "
    "py_buffer type_for_alias list_ struct timestamp",
    # datasets: the Dataset, its metadata and its tables; DatasetDict only to refuse it clearly.
    "datasets.arrow_dataset": "Dataset",
    "datasets.dataset_dict": "DatasetDict",
    "datasets.info": "DatasetInfo",
    "datasets.utils.version": "Version",
    "datasets.features.features": "Features Value ClassLabel List Sequence",
    "datasets.splits": "NamedSplit SplitDict SplitInfo",
    "datasets.table": "InMemoryTable ConcatenationTable MemoryMappedTable",
}
_ALLOWED = frozenset((module, name) for module, names in _ALLOWED_NAMES.items() for name in names.split())

# Classes pandas 2 removed; pandas' own pickle_compat reroutes pandas 1.x pickles the same way.
_RENAMES = {
    ("pandas.core.indexes.numeric", "Int64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "UInt64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "Float64Index"): ("pandas", "Index"),
    ("pandas.core.internals.blocks", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
}

# MemoryMappedTable replays these (its own recorded operations) by name with getattr on the table;
# any other name is a gadget: "__getattribute__", "mro", "__subclasses__", ... reach subprocess.Popen.
_REPLAYS = frozenset(
    "slice filter flatten combine_chunks cast replace_schema_metadata add_column append_column "
    "remove_column set_column rename_columns drop select".split()
)


class _Refused(Exception):
    """A global or a table replay outside the allow-lists; args[0] says which."""


class _MissingCache(Exception):
    """A memory-mapped Dataset table names an Arrow file that is not there; args[0] is its path."""


def _latin1_encode(text, encoding="latin1"):
    # Protocol 2 writes bytes as _codecs.encode(str, "latin1"); no other codec is needed.
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _validated_restore_array(data):
    # pyarrow rebuilds arrays from raw buffers and offsets without checking them; a crafted offset
    # would read out of bounds later. Full validation rejects it here.
    from pyarrow.lib import _restore_array

    array = _restore_array(data)
    array.validate(full=True)
    return array


@functools.cache
def _safe_memory_mapped_table():
    from datasets.table import MemoryMappedTable

    class SafeMemoryMappedTable(MemoryMappedTable):
        """Checks the replay names and the file before MemoryMappedTable's own unpickling uses them."""

        def __setstate__(self, state):
            for replay in state["replays"] or ():
                if type(replay[0]) is not str or replay[0] not in _REPLAYS:
                    raise _Refused(f"datasets.table.MemoryMappedTable replay {replay[0]!r}")
            if not os.path.isfile(state["path"]):
                raise _MissingCache(state["path"])
            super().__setstate__(state)

    return SafeMemoryMappedTable


# Allowed globals handed out as checked stand-ins (built lazily: datasets is slow to import).
_SHIMS = {
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("pyarrow.lib", "_restore_array"): lambda: _validated_restore_array,
    ("datasets.table", "MemoryMappedTable"): _safe_memory_mapped_table,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # Protocol <3 pickles use Python 2 names (__builtin__.bytearray); pickle maps them the same way.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = _RENAMES.get((module, name), (module, name))
        if key not in _ALLOWED:
            raise _Refused(f"{module}.{name}")
        if key in _SHIMS:
            return _SHIMS[key]()
        with warnings.catch_warnings():  # numpy 2 warns on the numpy.core spelling old pickles use
            warnings.simplefilter("ignore", DeprecationWarning)
            return getattr(importlib.import_module(key[0]), key[1])


def read_pickled_table(path: Path) -> pd.DataFrame:
    """Load a pickled pandas DataFrame or Hugging Face ``datasets.Dataset`` without running its code.

    Args:
        path: a plain, uncompressed pickle file (unlike ``pd.read_pickle``, no .gz/.zip/...).

    Returns:
        The DataFrame itself, or the Dataset converted with ``Dataset.to_pandas()``.

    Raises:
        DataError: the file is missing, empty, not a pickle, truncated or corrupt; it names a global
            outside the allow-list (refused before anything is imported or called); it holds something
            other than a DataFrame or Dataset (a DatasetDict is refused with its split names); or it is
            a memory-mapped Dataset whose Arrow cache file is missing.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            obj = _RestrictedUnpickler(handle).load()
    except _Refused as exc:
        raise DataError(
            f"{path}: refused to load this pickle: it asks for {exc.args[0]}, which is not on the "
            "allow-list of what pickled DataFrames and datasets.Datasets use, and unpickling it would "
            "import or call it. "
            f"If you trust the file's source, {_CONVERT_HINT}."
        ) from None
    except _MissingCache as exc:
        raise DataError(
            f"{path}: this pickled datasets.Dataset holds no data, only a reference to the Arrow cache "
            f"file {exc.args[0]}, which does not exist on this machine. On the machine that wrote it, "
            "save the data itself with ds.to_parquet('data.parquet') and use that file instead."
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}).") from exc
    except Exception as exc:  # UnpicklingError, EOFError and whatever a corrupt stream makes a class raise
        if isinstance(exc, EOFError) and path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty; expected a pickled DataFrame or Dataset.") from None
        raise DataError(
            f"{path}: cannot be unpickled ({type(exc).__name__}: {' '.join(str(exc).split())}). The file is not a "
            f"pickle, is truncated or corrupt, or was written by incompatible library versions; {_CONVERT_HINT}."
        ) from exc
    return _to_frame(obj, path)


def _to_frame(obj, path: Path) -> pd.DataFrame:
    if isinstance(obj, pd.DataFrame):
        return obj
    hf = sys.modules.get("datasets")  # imported only if the pickle named one of its classes
    if hf is not None and isinstance(obj, hf.DatasetDict):
        split = next(iter(obj), "test")
        raise DataError(
            f"{path}: the pickle holds a datasets.DatasetDict with splits {', '.join(map(repr, obj))}, "
            f"not one table; pickle a single split (pickle.dump(dd[{split!r}], f)) or use "
            f"dd[{split!r}].to_parquet()."
        )
    if hf is not None and isinstance(obj, hf.Dataset):
        # The Dataset's attributes came from the file; check they are tables before using them.
        data, indices = obj.__dict__.get("_data"), obj.__dict__.get("_indices")
        if not isinstance(data, hf.table.Table) or not isinstance(indices, (hf.table.Table, type(None))):
            raise DataError(f"{path}: the pickled datasets.Dataset is corrupt: its data is not a table.")
        try:
            return obj.to_pandas()
        except Exception as exc:
            raise DataError(f"{path}: the pickled datasets.Dataset cannot be converted ({exc}).") from exc
    raise DataError(
        f"{path}: the pickle holds a {type(obj).__module__}.{type(obj).__qualname__}, not a pandas DataFrame "
        "or datasets.Dataset; pickle a DataFrame (pd.DataFrame({'text': texts})) or use CSV/Parquet/JSONL."
    )
