"""On-disk token cache: a second run reads what the first wrote; damage or a changed key re-tokenizes."""

from transformers import AutoTokenizer

from textlora.data import batching
from textlora.data import token_cache
from textlora.data.token_cache import tokenize_cached

TEXTS = ["Stocks fell on Wall Street", "The team won the cup final", "", "NASA launches a probe " * 30]


def test_second_call_reads_the_cache_and_equals_tokenizing(tmp_path, tiny_model_dir, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = tokenize_cached(tokenizer, TEXTS, 16, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    expected = batching.tokenize(tokenizer, TEXTS, 16)
    monkeypatch.setattr(token_cache, "tokenize", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-tokenized")))
    second = tokenize_cached(tokenizer, TEXTS, 16, tmp_path)
    assert first.ids == second.ids == expected.ids
    assert second.truncated == expected.truncated == 1


def test_changed_texts_or_length_or_damage_retokenize(tmp_path, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenize_cached(tokenizer, TEXTS, 16, tmp_path)
    tokenize_cached(tokenizer, TEXTS, 32, tmp_path)
    tokenize_cached(tokenizer, TEXTS[:2], 16, tmp_path)
    entries = sorted(tmp_path.glob("*.npz"))
    assert len(entries) == 3
    for entry in entries:
        entry.write_bytes(b"not an npz")
    again = tokenize_cached(tokenizer, TEXTS, 32, tmp_path)
    assert again.ids == batching.tokenize(tokenizer, TEXTS, 32).ids
