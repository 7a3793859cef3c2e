"""Data-parallel training: ``torchrun --nproc_per_node 2`` (CPU, gloo) equals one process at the same global batch.

``train.batch_size`` is the global batch and each process takes every second row of it, so both
runs see the same batches, take the same steps and follow the same schedule. With dropout off
(the per-process dropout masks cannot match one process's) they agree to float rounding: the
logged losses to all 6 printed decimals, the adapter weights to 1e-6 (measured: 7e-8), the
difference coming only from the order in which the two halves' gradients are summed.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from textlora.data.batching import LengthGroupedBatches
from textlora.cli import main
from textlora.training.distributed import ShardedBatches

from .conftest import AGNEWS_SMALL, REPO


@pytest.fixture(scope="module")
def no_dropout_config(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("ddp")
    model = folder / "tiny-no-dropout"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    path = folder / "ddp.yaml"
    # 202 training rows, global batch 8: 25 full batches and one of 2, so every batch halves evenly.
    # fp32 on every CPU: auto picks bf16 where the CPU has AMX, and bf16 sums in another order differ by ~1e-4.
    path.write_text(f"""
model: {{name_or_path: {model}, max_length: 48, lora_r: 4, lora_alpha: 8, lora_dropout: 0.0}}
data:
  train: {{path: {AGNEWS_SMALL}, column_names: [label, title, description], text_columns: [title, description]}}
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 40
optim: {{lr: 2.0e-3, warmup_steps: 2}}
train: {{epochs: 1, batch_size: 8, log_every_steps: 2, num_threads: 1, mixed_precision: 'no', output_dir: {folder / 'runs'}, quiet: true}}
""")
    return path, folder / "runs"


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_equal_one_process(no_dropout_config):
    config, runs = no_dropout_config
    assert main(["train", "--config", str(config), "train.run_name=single"]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "textlora.cli", "train", "--config", str(config), "train.run_name=ddp"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    single, ddp = runs / "single", runs / "ddp"

    a, b = _records(single), _records(ddp)
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    assert [r["step"] for r in a if r["kind"] == "train"][-1] == 26  # 26 steps in both: same global batches
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5), (x, y)
        assert x.get("accuracy") == y.get("accuracy")
    # Every row counted once per epoch, whichever process saw it.
    assert json.loads((ddp / "summary.json").read_text())["steps"] == 26

    wa = load_file(str(single / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(ddp / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    moved = 0.0
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6)
        moved = max(moved, float(wa[name].abs().max()))
    assert moved > 1e-3  # the weights did train: agreement is not two untouched initialisations

    # Only the main process wrote: one copy of every log line, no leftovers.
    assert len(b) == len(a)
    assert not [p for p in ddp.rglob("*") if p.name.endswith((".tmp", ".old"))]


def test_sharded_batches_split_every_batch_between_processes():
    lengths = np.random.default_rng(0).integers(5, 60, size=97)  # 12 batches of 8 and one of 1
    batches = LengthGroupedBatches(lengths, batch_size=8, seed=1)
    shards = [ShardedBatches(batches, 3, rank) for rank in range(3)]
    orders = []
    for epoch in (0, 1):
        for shard in shards:
            shard.set_epoch(epoch)  # reaches the shared sampler: every process reshuffles alike
        whole = list(batches)
        orders.append(whole)
        parts = [list(shard) for shard in shards]
        assert all(len(p) == len(whole) for p in parts)
        for i, batch in enumerate(whole):
            got = [parts[rank][i] for rank in range(3)]
            if len(batch) >= 3:
                assert sorted(sum(got, [])) == sorted(batch)  # each row on exactly one process
            else:  # too few rows: no process runs an empty step
                assert all(len(g) == 1 and g[0] in batch for g in got)
    assert orders[0] != orders[1]
    assert any(len(batch) < 3 for batch in orders[0])  # the short-batch branch did run


def test_tiny_batch_is_shared_not_emptied():
    class Fixed(list):
        def set_epoch(self, epoch):
            pass

    shards = [list(ShardedBatches(Fixed([[7, 8, 9], [4]]), 2, rank)) for rank in range(2)]
    assert shards == [[[7, 9], [4]], [[8], [4]]]
