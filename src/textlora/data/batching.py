"""Tokenize once, then batch by length: dynamic padding over batches of similar-length texts.

Padding every batch to its own longest text (instead of a fixed or per-chunk length) is where
most of the speed over the notebook stack comes from; batches are drawn from length-sorted
pools and then shuffled, so training is not ordered by length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch


@dataclass
class Tokenized:
    """Token ids per text (unpadded) and how many texts were cut at ``max_length``."""

    ids: list[list[int]]
    truncated: int

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def tokenize(tokenizer, texts: Sequence[str], max_length: int, chunk: int = 4096) -> Tokenized:
    """Tokenize ``texts`` with special tokens, truncating to ``max_length`` tokens.

    Returns:
        Tokenized with one id list per text (length <= max_length).
    """
    ids: list[list[int]] = []
    truncated = 0
    for start in range(0, len(texts), chunk):
        batch = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_length,
                          return_overflowing_tokens=False, return_attention_mask=False)
        ids.extend(batch["input_ids"])
        # A fast tokenizer keeps what truncation cut off in `overflowing`.
        encodings = getattr(batch, "encodings", None) or []
        truncated += sum(1 for e in encodings if e.overflowing)
    return Tokenized(ids=ids, truncated=truncated)


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of indices whose texts have similar lengths, reshuffled every epoch.

    Each epoch: shuffle all indices (seeded by ``seed + epoch``), cut them into pools of
    ``pool_batches`` batches, sort each pool by length, cut it into batches, shuffle the batches.
    With ``max_tokens`` a batch also ends before its padded size (rows x longest) exceeds it.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool = True,
                 pool_batches: int = 64, max_tokens: Optional[int] = None):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.pool_batches = pool_batches
        self.max_tokens = max_tokens
        self.epoch = 0
        self._cached: Optional[list[list[int]]] = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._cached = epoch, None

    def batches(self) -> list[list[int]]:
        if self._cached is not None:
            return self._cached
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            self._cached = self._cut(order)
            return self._cached
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(n)
        pool = self.batch_size * self.pool_batches
        batches: list[list[int]] = []
        for start in range(0, n, pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(self._cut(chunk))
        perm = rng.permutation(len(batches))
        self._cached = [batches[i] for i in perm]
        return self._cached

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        batches, current, longest = [], [], 0
        for index in order.tolist():
            length = int(self.lengths[index])
            too_many_tokens = self.max_tokens and current and max(longest, length) * (len(current) + 1) > self.max_tokens
            if len(current) == self.batch_size or too_many_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, length)
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, tokens: Tokenized, labels: Optional[Sequence[int]] = None):
        self.ids = tokens.ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return index, self.ids[index], (-1 if self.labels is None else self.labels[index])


class PadCollator:
    """Pad a batch to its longest row; returns input_ids/attention_mask ``[B, T]``, labels and row indices ``[B]``.

    With a prefix cache (see prefix_cache.py) the batch also carries ``hidden`` ``[B, T, H]`` (fp16): the
    cached states of the rows, which replace running the frozen bottom layers.
    """

    def __init__(self, pad_id: int, cache=None):
        self.pad_id = pad_id
        self.cache = cache

    def __call__(self, rows) -> dict:
        longest = max(len(ids) for _, ids, _ in rows)
        input_ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (_, ids, _) in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, :len(ids)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.tensor([label for _, _, label in rows], dtype=torch.long),
            "index": torch.tensor([index for index, _, _ in rows], dtype=torch.long),
        }
        if self.cache is not None:
            batch["hidden"] = self.cache.gather([index for index, _, _ in rows], longest)
        return batch


def make_loader(tokens: Tokenized, labels, batch_size: int, pad_id: int, seed: int = 0, shuffle: bool = False,
                max_tokens: Optional[int] = None, pin_memory: bool = False, cache=None,
                pool_batches: int = 64) -> torch.utils.data.DataLoader:
    """Length-grouped batches of ``tokens`` (shuffled per epoch if ``shuffle``, else longest first)."""
    sampler = LengthGroupedBatches(tokens.lengths, batch_size, seed, shuffle=shuffle, pool_batches=pool_batches,
                                   max_tokens=max_tokens)
    return torch.utils.data.DataLoader(TokenDataset(tokens, labels), batch_sampler=sampler,
                                       collate_fn=PadCollator(pad_id, cache), pin_memory=pin_memory)
