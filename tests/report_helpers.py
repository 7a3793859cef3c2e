"""Tiny-model configs for the report, compare, sweep, plan and tracker tests (a variant of conftest's)."""

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

from .conftest import AGNEWS_SMALL, write_tiny_config


def tiny_yaml(path: Path, model_dir: Path, output_dir: Path, run_name: str = "tiny", extra: str = "") -> Path:
    """Config for the tiny model on the fixture rows, with the rows also as data.test and a length filter."""
    return write_tiny_config(path, model_dir, output_dir, run_name, data_extra=f"""  test:
    path: {AGNEWS_SMALL}
    column_names: [label, title, description]
    text_columns: [title, description]
  min_words: 20
  max_words: 60
""", extra=extra)


def tiny_roberta_dir(folder: Path, tiny_model_dir: Path) -> Path:
    """A 2-layer RoBERTa (hidden 32) sharing the tiny BERT's WordPiece tokenizer: a RoBERTa-style head to replace."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(folder)
    vocab = len(tokenizer)
    # pad_token_id 0 matches the WordPiece [PAD]; positions start after it, hence 48 + 2 positions at least.
    config = RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=0, type_vocab_size=1)
    torch.manual_seed(0)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def tiny_bert_without_pooler_dir(folder: Path, tiny_model_dir: Path, shard: bool = False) -> Path:
    """The tiny BERT saved without pooler weights, as the real MiniLMs are: a classifier gets a fresh pooler.

    ``shard`` saves it as several safetensors files with a ``model.safetensors.index.json``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    config = BertConfig.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder, max_shard_size="20KB" if shard else "5GB")
    return folder
