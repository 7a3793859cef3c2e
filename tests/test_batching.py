"""Tokenizing once and batching by length: coverage, determinism, padding saved, and the padded tensors."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from textlora.data.batching import LengthGroupedBatches, PadCollator, TokenDataset, make_loader, tokenize

LENGTHS = np.random.default_rng(0).integers(5, 200, size=1000)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _waste(batches, lengths) -> float:
    """Fraction of padded positions that are padding."""
    padded = sum(len(b) * lengths[b].max() for b in map(np.array, batches))
    return 1 - lengths.sum() / padded


def test_tokenize_counts_truncated_texts(tokenizer):
    # With [CLS] and [SEP], 14 words fill max_length=16 exactly; 15 words are cut.
    texts = ["the world", "the " * 14, "the " * 15, "", "oil prices rise as the market falls in new york today"]
    tokens = tokenize(tokenizer, texts, max_length=16)
    assert tokens.lengths.tolist() == [4, 16, 16, 2, 16]
    assert tokens.truncated == 2
    assert tokens.ids[0][0] == tokenizer.cls_token_id and tokens.ids[0][-1] == tokenizer.sep_token_id
    assert tokens.ids[2][-1] == tokenizer.sep_token_id  # truncation keeps the closing special token
    assert tokenize(tokenizer, texts, max_length=16, chunk=2).ids == tokens.ids  # chunking changes nothing


def test_every_index_exactly_once_per_epoch():
    sampler = LengthGroupedBatches(LENGTHS, batch_size=16, seed=0, pool_batches=8)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert all(1 <= len(b) <= 16 for b in batches)
        assert len(sampler) == len(batches)


def test_same_seed_and_epoch_same_batches_other_epoch_differs():
    a = LengthGroupedBatches(LENGTHS, batch_size=16, seed=5)
    b = LengthGroupedBatches(LENGTHS, batch_size=16, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(4)
    assert list(a) != first
    assert list(LengthGroupedBatches(LENGTHS, batch_size=16, seed=6)) != list(LengthGroupedBatches(LENGTHS, 16, seed=5))


def test_batches_waste_less_padding_than_random_batches():
    grouped = list(LengthGroupedBatches(LENGTHS, batch_size=16, seed=0, pool_batches=8))
    order = np.random.default_rng(1).permutation(len(LENGTHS))
    random_batches = [order[i:i + 16].tolist() for i in range(0, len(order), 16)]
    grouped_waste, random_waste = _waste(grouped, LENGTHS), _waste(random_batches, LENGTHS)
    assert random_waste > 0.3
    assert grouped_waste < 0.5 * random_waste, (grouped_waste, random_waste)  # measured: 0.10 vs 0.44


def test_pools_of_one_batch_are_batches_of_random_rows():
    """train.length_pool_batches=1: no length grouping, each batch padded only to its own longest."""
    sampler = LengthGroupedBatches(LENGTHS, batch_size=16, seed=0, pool_batches=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    # The rows of each batch are those of one 16-row slice of the epoch's shuffle.
    order = np.random.default_rng(0).permutation(len(LENGTHS))
    slices = {frozenset(order[i:i + 16].tolist()) for i in range(0, len(order), 16)}
    assert {frozenset(b) for b in batches} == slices
    assert _waste(batches, LENGTHS) > 0.3  # as much padding as random batches (0.44 measured for those)


def test_batches_are_not_ordered_by_length():
    maxima = [LENGTHS[b].max() for b in LengthGroupedBatches(LENGTHS, batch_size=16, seed=0)]
    steps = np.diff(maxima)
    assert (steps > 0).any() and (steps < 0).any()


def test_max_tokens_caps_rows_times_longest():
    sampler = LengthGroupedBatches(LENGTHS, batch_size=64, seed=0, max_tokens=1000)
    batches = list(sampler)
    assert all(len(b) * LENGTHS[b].max() <= 1000 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    # Short texts still fill a batch to batch_size when the cap allows it.
    assert max(len(b) for b in batches) > 40
    assert max(len(b) for b in LengthGroupedBatches(LENGTHS, batch_size=64, seed=0)) == 64


def test_no_shuffle_is_longest_first():
    batches = list(LengthGroupedBatches(LENGTHS, batch_size=16, seed=0, shuffle=False))
    flat = LENGTHS[[i for b in batches for i in b]]
    assert (np.diff(flat) <= 0).all()
    assert LENGTHS[batches[0]].max() == LENGTHS.max()
    assert [len(b) for b in batches] == [16] * 62 + [8]


def test_pad_collator_pads_with_pad_id_and_masks():
    rows = [(7, [2, 10, 11, 3], 1), (3, [2, 3], 0), (9, [2, 12, 13, 14, 15, 3], 2)]
    batch = PadCollator(pad_id=99)(rows)
    assert batch["input_ids"].shape == (3, 6)
    assert batch["input_ids"].tolist() == [[2, 10, 11, 3, 99, 99], [2, 3, 99, 99, 99, 99], [2, 12, 13, 14, 15, 3]]
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 2, 6]
    assert torch.equal(batch["attention_mask"].bool(), batch["input_ids"] != 99)
    assert batch["labels"].tolist() == [1, 0, 2] and batch["index"].tolist() == [7, 3, 9]


def test_loader_returns_every_row_unchanged(tokenizer):
    texts = ["short", "a somewhat longer text about oil", "the market", "world news today in new york"]
    tokens = tokenize(tokenizer, texts, max_length=32)
    seen = {}
    for batch in make_loader(tokens, [0, 1, 2, 3], batch_size=3, pad_id=tokenizer.pad_token_id):
        for row, index, label in zip(batch["input_ids"], batch["index"], batch["labels"]):
            n = len(tokens.ids[index])
            assert row[:n].tolist() == tokens.ids[index] and (row[n:] == tokenizer.pad_token_id).all()
            seen[int(index)] = int(label)
    assert seen == {0: 0, 1: 1, 2: 2, 3: 3}
    assert len(TokenDataset(tokens)) == 4 and TokenDataset(tokens)[1][2] == -1
