"""Checkpoints: a full round trip (weights, optimizer, scheduler, RNG), corrupt ones skipped, pruning, temp folders."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from textlora.training import checkpoint as ckpt
from textlora.config import OptimConfig
from textlora.training.optim import build_optimizer, build_scheduler


def _setup(seed: int = 0):
    """A small model with a frozen first layer (like a LoRA base), AdamW and a warm-up schedule."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1), [])
    scheduler = build_scheduler(optimizer, OptimConfig(warmup_steps=3), total_steps=20)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(4, 6)).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _save(root: Path, step: int, parts) -> Path:
    return ckpt.save_checkpoint(root / f"step-{step:07d}", *parts, {"step": step})


def test_round_trip_restores_everything(tmp_path):
    model, optimizer, scheduler = _setup()
    _train(model, optimizer, scheduler, 5)
    folder = ckpt.save_checkpoint(tmp_path / "step-0000005", model, optimizer, scheduler,
                                  {"step": 5, "epoch": 1, "best_value": 0.75})
    saved = {n: p.detach().clone() for n, p in model.state_dict().items()}
    saved_exp_avg = [optimizer.state[p]["exp_avg"].clone() for p in model[2].parameters()]
    saved_lr = scheduler.get_last_lr()
    expected_draws = (torch.rand(3), random.random(), np.random.rand())

    assert set(load_file(str(folder / "trainable.safetensors"))) == {"2.weight", "2.bias"}  # frozen layer not saved
    _train(model, optimizer, scheduler, 4)  # move everything on, including the RNGs
    assert not torch.equal(model[2].weight, saved["2.weight"])

    fresh, fresh_opt, fresh_sched = _setup(seed=1)  # different random weights everywhere
    fresh[0].load_state_dict({"weight": saved["0.weight"], "bias": saved["0.bias"]})  # the base model is stock
    loop = ckpt.load_checkpoint(folder, fresh, fresh_opt, fresh_sched)
    assert loop == {"step": 5, "epoch": 1, "best_value": 0.75}
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, saved[name]), name
    for param, exp_avg in zip(fresh[2].parameters(), saved_exp_avg):
        assert torch.equal(fresh_opt.state[param]["exp_avg"], exp_avg)
    assert fresh_opt.state[fresh[2].weight]["step"] == 5
    assert fresh_sched.last_epoch == 5 and fresh_sched.get_last_lr() == saved_lr
    assert torch.equal(torch.rand(3), expected_draws[0])
    assert random.random() == expected_draws[1] and np.random.rand() == expected_draws[2]


def test_manifest_lists_every_file_with_its_size(tmp_path):
    folder = _save(tmp_path, 1, _setup())
    files = json.loads((folder / ckpt.MANIFEST).read_text())["files"]
    assert sorted(files) == ["loop.json", "optim.pt", "rng.pt", "trainable.safetensors"]
    assert all(files[name]["bytes"] == (folder / name).stat().st_size for name in files)
    assert ckpt.is_valid(folder)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_manifest", "bad_manifest"])
def test_damaged_latest_falls_back_to_previous(tmp_path, damage):
    parts = _setup()
    first = _save(tmp_path, 10, parts)
    latest = _save(tmp_path, 20, parts)
    assert ckpt.latest_valid(tmp_path) == latest
    weights = latest / "trainable.safetensors"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # same size, different bytes
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "no_manifest":
        (latest / ckpt.MANIFEST).unlink()
    else:
        (latest / ckpt.MANIFEST).write_text("{not json")
    assert not ckpt.is_valid(latest)
    with pytest.warns(UserWarning, match="step-0000020 is incomplete or corrupt"):
        assert ckpt.latest_valid(tmp_path) == first


def test_no_valid_checkpoint(tmp_path):
    assert ckpt.latest_valid(tmp_path / "missing") is None
    folder = _save(tmp_path, 1, _setup())
    (folder / "optim.pt").unlink()
    with pytest.warns(UserWarning):
        assert ckpt.latest_valid(tmp_path) is None


def test_prune_keeps_last_k_and_the_best(tmp_path):
    parts = _setup()
    folders = [_save(tmp_path, step, parts) for step in (10, 20, 30, 40, 50)]
    ckpt.prune(tmp_path, keep_last=2, keep=folders[1])
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000020", "step-0000040", "step-0000050"]
    ckpt.prune(tmp_path, keep_last=2, keep=None)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000040", "step-0000050"]
    ckpt.prune(tmp_path, keep_last=1, keep=tmp_path / "step-0000050")  # the best is also the newest
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000050"]


def test_leftover_tmp_folder_is_ignored_and_replaced(tmp_path):
    parts = _setup()
    done = _save(tmp_path, 20, parts)
    leftover = tmp_path / "step-0000030.tmp"  # a save interrupted before its rename
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"half written")
    (tmp_path / "step-0000040.old").mkdir()
    assert ckpt.list_checkpoints(tmp_path) == [done]
    assert ckpt.latest_valid(tmp_path) == done
    ckpt.prune(tmp_path, keep_last=1, keep=None)
    assert leftover.is_dir() and done.is_dir()
    # Saving the same step again clears the leftover and produces a valid checkpoint.
    again = _save(tmp_path, 30, parts)
    assert not leftover.exists() and ckpt.is_valid(again)
    assert ckpt.latest_valid(tmp_path) == again


def test_trainable_state_is_a_snapshot_not_a_view():
    # The best model's weights are kept with trainable_state while training goes on; on CPU a
    # view would silently turn "the best model" into the last one.
    model, optimizer, scheduler = _setup()
    snapshot = ckpt.trainable_state(model)
    before = {n: t.clone() for n, t in snapshot.items()}
    _train(model, optimizer, scheduler, 3)
    assert not torch.equal(model[2].weight, before["2.weight"])
    for name, value in snapshot.items():
        assert torch.equal(value, before[name]), name
