"""Shared fixtures: a tiny BERT built in memory (2 layers, hidden 32), small real AG News rows, ../shared.

Nothing here touches the network: the hub is switched off for the whole session.
"""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Token ids cached by training runs go to a fresh folder, never the user's ~/.cache.
os.environ["TEXTLORA_CACHE_DIR"] = tempfile.mkdtemp(prefix="textlora-test-cache-")

import csv
import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
AGNEWS_SMALL = FIXTURES / "agnews_240.csv"
SHARED = REPO.parent / "shared"

torch.set_num_threads(2)


def skip_or_fail(reason: str) -> None:
    """Skip with the reason on a developer's machine; under ``CI=true`` a missing requirement is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def shared_path(*parts: str) -> Path:
    """A path in ../shared, or a skip with the reason when ../shared is not beside the repo (a failure under CI=true)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        skip_or_fail(f"{path} not found: integration tests need ../shared (real AG News data and models)")
    return path


def write_tiny_config(path: Path, model_dir: Path, output_dir: Path, run_name: str = "tiny", data_extra: str = "",
                      extra: str = "") -> Path:
    """The one tiny-model training config on the fixture rows; ``data_extra`` / ``extra`` add YAML lines
    under ``data:`` / at the end."""
    path.write_text(f"""
model:
  name_or_path: {model_dir}
  max_length: 48
  lora_r: 4
  lora_alpha: 8
  target_modules: [query, value]
data:
  train:
    path: {AGNEWS_SMALL}
    column_names: [label, title, description]
    text_columns: [title, description]
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 40
{data_extra}optim:
  lr: 5.0e-3
  warmup_steps: 2
train:
  epochs: 2
  batch_size: 16
  log_every_steps: 2
  output_dir: {output_dir}
  run_name: {run_name}
  quiet: true
{extra}""")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) and a WordPiece vocabulary from the fixture texts."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    words: dict[str, int] = {}
    with AGNEWS_SMALL.open(newline="") as handle:
        for row in csv.reader(handle):
            for word in re.findall(r"\w+|[^\w\s]", (row[1] + " " + row[2]).lower()):
                words[word] = words.get(word, 0) + 1
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [chr(c) for c in range(97, 123)] + [f"##{chr(c)}" for c in range(97, 123)] + list("0123456789")
    common = [w for w, n in sorted(words.items(), key=lambda kv: -kv[1]) if n >= 2][:600]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + pieces + common))}
    tokenizer = BertTokenizer(vocab=vocab)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertForSequenceClassification(config).bert.save_pretrained(folder)  # encoder only: the head is fresh
    return folder


@pytest.fixture
def tiny_config_yaml(tmp_path, tiny_model_dir) -> Path:
    """A complete training config for the tiny model on the fixture rows (runs in seconds)."""
    return write_tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, tmp_path / "runs")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished tiny run folder, trained once per session (for tests that only read a run: export, serve)."""
    from textlora.cli import main

    folder = tmp_path_factory.mktemp("tiny-run")
    config = folder / "tiny.yaml"
    config.write_text(f"""
model: {{name_or_path: {tiny_model_dir}, max_length: 48, lora_r: 4, lora_alpha: 8, target_modules: [query, value]}}
data:
  train: {{path: {AGNEWS_SMALL}, column_names: [label, title, description], text_columns: [title, description]}}
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 40
optim: {{lr: 5.0e-3, warmup_steps: 2}}
train: {{epochs: 2, batch_size: 16, output_dir: {folder / 'runs'}, run_name: tiny, quiet: true}}
""")
    assert main(["train", "--config", str(config)]) == 0
    return folder / "runs" / "tiny"
