"""train.speedups=false: nothing from textlora.speed touches the model, and the run still trains and writes
the same run folder; the one door (textlora.model.speedups) is the only way in."""

import ast
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

import textlora
from textlora.cli import main
from textlora.config import load_config
from textlora.model.speedups import apply_speedups

from .conftest import write_tiny_config

SRC = Path(textlora.__file__).parent


def _fail(*args, **kwargs):
    raise AssertionError("textlora.speed.apply was called with train.speedups=false")


def test_training_without_speedups_applies_nothing_and_writes_the_same_files(tmp_path, tiny_model_dir, tiny_run,
                                                                            monkeypatch, capsys):
    import textlora.speed

    monkeypatch.setattr(textlora.speed, "apply", _fail)
    config = write_tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, tmp_path / "runs")
    assert main(["train", "--config", str(config), "train.speedups=false"]) == 0
    out = capsys.readouterr().out
    assert "[speed] speedups off (train.speedups=false)" in out
    assert "dropout on CPU from 15-bit integer masks" not in out and "first token only" not in out
    run = tmp_path / "runs" / "tiny"

    def files(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                      if p.is_file() and "checkpoints" not in p.parts and "evaluations" not in p.parts)

    assert files(run) == files(tiny_run)  # the same run folder as with the speedups
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [line["loss"] for line in lines if line["kind"] == "train"]
    assert all(0 < loss < 10 for loss in train)
    # It trained: LoRA B starts at zero and the optimizer moved it (26 steps of the tiny model barely move the loss).
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in weights.items())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 26 and "prefix_cache" not in summary


def test_the_door_applies_nothing_when_switched_off(tiny_model_dir, tmp_path):
    from textlora.data.labels import LabelMap
    from textlora.model.build import build_model
    from textlora.speed.cpu_dropout import CPUDropout
    from textlora.speed.first_token import is_restricted

    yaml = write_tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, tmp_path / "runs")
    for switch, expect in (("false", []), ("true", ["first_token", "cpu_dropout"])):
        config = load_config(yaml, (f"train.speedups={switch}",))
        model = build_model(config.model, LabelMap(names=("a", "b", "c", "d"), kind="str")).model
        applied = apply_speedups(model, config, torch.device("cpu"), training=True)
        assert [n for n in applied.names if n != "allocator"] == expect
        assert is_restricted(model) == (switch == "true")
        assert any(isinstance(m, CPUDropout) for m in model.modules()) == (switch == "true")


def test_core_reaches_speed_only_through_the_door():
    """Deleting textlora/speed leaves a working library: only model/speedups.py imports it."""
    importers = []
    for path in SRC.rglob("*.py"):
        if "speed" in path.relative_to(SRC).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n == "textlora.speed" or n.startswith("textlora.speed.") for n in names):
                importers.append(str(path.relative_to(SRC)))
    assert sorted(set(importers)) == ["model/speedups.py"]
