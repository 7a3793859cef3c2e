"""The hub path the seed configs take (``model.name_or_path: roberta-base``, ``data.train.path: ag_news``), offline.

A temporary Hugging Face cache holds a tiny RoBERTa saved as ``roberta-base`` (the hub cache layout
``models--roberta-base/{refs/main, snapshots/<commit>/}``) and a tiny ``ag_news`` with train and test
splits. ``textlora train`` and ``textlora predict`` then run in a subprocess whose environment points
HF_HOME / HF_HUB_CACHE / HF_DATASETS_CACHE at it (set before anything imports huggingface_hub, which
reads them at import), with the hub switched off and every proxy pointing at a closed port.

How ``datasets`` (5.x) loads a dataset by name offline: with HF_DATASETS_OFFLINE=1 it never reads the
hub cache's ``datasets--NAME`` snapshot (``dataset_module_factory`` raises OfflineModeIsEnabled before
``hf_hub_download``); it falls back to the prepared Arrow cache that an earlier online
``load_dataset(NAME)`` left in HF_DATASETS_CACHE (``NAME/default/0.0.0/<commit>/``). So the fixture
writes both: the raw parquet snapshot, as the hub download leaves it, and the prepared Arrow cache,
made from that snapshot by the parquet builder under the dataset's name.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import AGNEWS_SMALL

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]


def _rows():
    with AGNEWS_SMALL.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return [f"{r[1]} {r[2]}" for r in rows], [int(r[0]) - 1 for r in rows]


def _snapshot(hub: Path, kind: str, repo: str) -> Path:
    """``HUB/<kind>s--<repo>/snapshots/<COMMIT>/`` with ``refs/main`` naming it, as a hub download leaves it."""
    root = hub / f"{kind}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def _tiny_roberta(snapshot: Path, texts) -> None:
    """A randomly initialised 2-layer RoBERTa (hidden 32) and a byte-level BPE vocabulary of the fixture texts."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = RobertaTokenizerFast(vocab=model["vocab"], merges=merges)
    assert len(tokenizer) == len(model["vocab"]) and tokenizer("Oil prices rise")["input_ids"][0] == 0
    tokenizer.save_pretrained(snapshot)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=130)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(snapshot)


def _tiny_ag_news(hub: Path, datasets_cache: Path, texts, labels) -> None:
    """``ag_news`` (text, label as a ClassLabel), 200 train rows and the other 42 as test: the hub snapshot
    and the prepared cache."""
    import datasets
    import pandas as pd
    from datasets.packaged_modules.parquet.parquet import Parquet

    data = _snapshot(hub, "dataset", "ag_news") / "data"
    data.mkdir()
    files = {"train": data / "train-00000-of-00001.parquet", "test": data / "test-00000-of-00001.parquet"}
    pd.DataFrame({"text": texts[:200], "label": labels[:200]}).to_parquet(files["train"])
    pd.DataFrame({"text": texts[200:], "label": labels[200:]}).to_parquet(files["test"])
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABEL_NAMES)})
    builder = Parquet(cache_dir=str(datasets_cache), dataset_name="ag_news", config_name="default", hash=COMMIT,
                      data_files={split: str(path) for split, path in files.items()}, features=features)
    builder.download_and_prepare()
    # An online load names the prepared folder after the hub config ("default"); a local builder adds a
    # hash of its data files to the name: give it the online name.
    prepared = Path(builder.cache_dir).parents[1]
    prepared.rename(prepared.with_name("default"))


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hf-home")
    texts, labels = _rows()
    _tiny_roberta(_snapshot(home / "hub", "model", "roberta-base"), texts)
    _tiny_ag_news(home / "hub", home / "datasets", texts, labels)
    return home


def _offline_env(home: Path) -> dict:
    closed = "http://127.0.0.1:9"  # the discard port: any request that slips past offline mode fails at once
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return {**env, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_DATASETS_CACHE": str(home / "datasets"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed,
            "NO_PROXY": "", "no_proxy": "", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}


def _textlora(args, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from textlora.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *args], env=_offline_env(home), cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"textlora {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_train_and_predict_on_hub_names_from_the_cache_alone(hub_home, tmp_path):
    hub_source = "{path: ag_news, split: %s, text_columns: [text], label_column: label}"
    config = tmp_path / "hub.yaml"
    config.write_text(f"""
model:
  name_or_path: roberta-base
  max_length: 48
  lora_r: 4
  lora_alpha: 8
  target_modules: [query, value]
data:
  train: {hub_source % 'train'}
  test: {hub_source % 'test'}
  validation_size: 40
optim: {{lr: 5.0e-3, warmup_steps: 2}}
train: {{epochs: 1, batch_size: 16, output_dir: {tmp_path / 'runs'}, run_name: hub, quiet: true}}
""")
    _textlora(["train", "--config", str(config)], hub_home, tmp_path)
    run = tmp_path / "runs" / "hub"
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert json.loads((run / "test_eval.json").read_text())["split"] == "test"
    # The label names came from the dataset's ClassLabel feature, as ag_news's do on the hub.
    assert LABEL_NAMES[0] in (run / "labels.json").read_text()

    out = tmp_path / "test_predictions.csv"
    _textlora(["predict", str(run), "--data", "ag_news", "--split", "test", "--output", str(out)],
              hub_home, tmp_path)
    with out.open(newline="") as handle:
        predicted = list(csv.DictReader(handle))
    assert len(predicted) == len(_rows()[0]) - 200  # every test row, in order
    # Nothing was fetched: the cache holds only what the fixture wrote (no new repo, no new snapshot).
    repos = sorted(p.name for p in (hub_home / "hub").iterdir() if p.is_dir())
    assert repos == ["datasets--ag_news", "models--roberta-base"]
