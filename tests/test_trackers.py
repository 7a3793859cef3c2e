"""Experiment trackers: TensorBoard receives exactly the metrics.jsonl numbers; a missing package is a clear error."""

import importlib.util
import json

import pytest

from textlora.cli import main


def test_tensorboard_tracker_logs_the_metrics(tiny_config_yaml, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", "--config", str(tiny_config_yaml), "train.trackers=[tensorboard]", "train.epochs=1"]) == 0
    run = tmp_path / "runs" / "tiny"
    folders = [p.parent for p in (run / "tensorboard").rglob("events.out.tfevents.*")]
    assert folders, "no TensorBoard event file"
    events = EventAccumulator(str(folders[0]))
    events.Reload()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if l["kind"] == "train"]
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [l["step"] for l in train]
    assert [e.value for e in logged] == pytest.approx([l["loss"] for l in train], rel=1e-6)
    evals = [l for l in lines if l["kind"] == "eval"]
    assert [e.value for e in events.Scalars("eval/accuracy")] == pytest.approx([l["accuracy"] for l in evals])


def test_missing_tracker_package_is_refused_before_anything_trains(tiny_config_yaml, tmp_path, capsys):
    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    assert main(["train", "--config", str(tiny_config_yaml), "train.trackers=[mlflow]"]) == 2
    err = capsys.readouterr().err
    assert "'mlflow' package is not installed" in err and "textlora[mlflow]" in err
    assert not (tmp_path / "runs" / "tiny").exists()
    assert main(["train", "--config", str(tiny_config_yaml), "train.trackers=[wandb]"]) == 2
    assert "train.trackers" in capsys.readouterr().err
