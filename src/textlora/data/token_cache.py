"""Tokenize once across runs: token ids on disk, keyed by the tokenizer, ``max_length`` and the texts.

A sweep or a re-run over the same data skips tokenization (AG News' 120k texts: seconds each time).
The cache lives in ``$TEXTLORA_CACHE_DIR/tokens`` (default ``~/.cache/textlora/tokens``); deleting
it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from textlora.data.batching import Tokenized, tokenize


def cache_root() -> Path:
    base = os.environ.get("TEXTLORA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "textlora")
    return Path(base) / "tokens"


def _key(tokenizer, texts: Sequence[str], max_length: int) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # The fast tokenizer's JSON is its complete definition (vocabulary, normalizer, special tokens),
    # less the truncation/padding state that the last call left in it.
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        identity = json.dumps(definition, sort_keys=True)
    else:
        identity = repr(sorted(tokenizer.get_vocab().items()))
    digest.update(identity.encode())
    digest.update(f"|{max_length}|{len(texts)}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def tokenize_cached(tokenizer, texts: Sequence[str], max_length: int, root: Optional[Path] = None) -> Tokenized:
    """:func:`textlora.data.batching.tokenize`, read from / written to the on-disk cache under ``root``."""
    root = Path(root) if root is not None else cache_root()
    path = root / f"{_key(tokenizer, texts, max_length)}.npz"
    if path.is_file():
        try:
            with np.load(path) as saved:
                bounds = np.concatenate([[0], np.cumsum(saved["lengths"])])
                flat = saved["ids"].tolist()
                ids = [flat[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
                return Tokenized(ids=ids, truncated=int(saved["truncated"]))
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is simply re-made below
    tokens = tokenize(tokenizer, texts, max_length)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=np.fromiter((t for row in tokens.ids for t in row), dtype=np.int32),
                 lengths=tokens.lengths.astype(np.int32), truncated=np.int64(tokens.truncated))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full disk only costs the next run a re-tokenization
    return tokens
