"""`textlora average --toward-start` on the tiny model: the average moved back towards the start of training
(WiSE-FT): LoRA's update scaled, the head interpolated with the probe that training started from."""

import contextlib
import io
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_tiny_config
from tests.test_average import SETS
from textlora.cli import main
from textlora.commands.average import mean_state
from textlora.run.layout import averaged_checkpoints
from textlora.run.load import load_run


@pytest.fixture(scope="module")
def probe_run(tiny_model_dir, tmp_path_factory):
    """A tiny run from a probed mean head, with an eval set, keeping every checkpoint; and its train log."""
    root = tmp_path_factory.mktemp("toward-start")
    config = write_tiny_config(root / "probe.yaml", tiny_model_dir, root / "runs", "probe", data_extra=SETS)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--config", str(config), "model.head=mean", "model.head_init=probe",
                     "train.eval_every_steps=2", "train.keep_last=50", "train.metric_for_best=mean/accuracy",
                     "train.epochs=1"]) == 0
    return root / "runs" / "probe", printed.getvalue()


def _trainable(run_dir):
    return {name: value.detach().float() for name, value in load_run(run_dir, merge=False).model.named_parameters()
            if value.requires_grad or ".lora_" in name or "modules_to_save" in name}


def _last_two(run):
    steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())[-2:]
    return steps, mean_state([load_file(str(run / "checkpoints" / f"step-{s:07d}" / "trainable.safetensors"))
                              for s in steps])


def test_the_start_is_the_probe_training_began_from(probe_run, tmp_path, capsys):
    run, log = probe_run
    steps, _ = _last_two(run)
    out = tmp_path / "start"
    assert main(["average", str(run), "--steps", ",".join(map(str, steps)), "--toward-start", "0",
                 "--output", str(out)]) == 0
    weights = _trainable(out)
    assert all(not value.any() for name, value in weights.items() if ".lora_B." in name)  # the encoder unchanged
    # The head is training's probe, fitted again exactly: the same validation accuracy as the train log reported.
    trained_probe = float(re.search(r"head fitted .* \(validation accuracy (\d\.\d+)\)", log).group(1))
    written = json.loads((out / "eval.json").read_text())["accuracy"]
    assert written == pytest.approx(trained_probe, abs=1e-4)
    assert "the start's head fitted again" in capsys.readouterr().out


def test_a_fraction_scales_lora_update_and_interpolates_the_head(probe_run, tmp_path, capsys):
    run, _ = probe_run
    steps, mean = _last_two(run)
    start, half = tmp_path / "start", tmp_path / "half"
    for fraction, out in (("0", start), ("0.5", half)):
        assert main(["average", str(run), "--steps", ",".join(map(str, steps)), "--toward-start", fraction,
                     "--output", str(out), "--no-test"]) == 0
    assert "average of 2, not moved" in capsys.readouterr().out  # the average before it moved, to compare with
    probe, written = _trainable(start), _trainable(half)
    for name, value in mean.items():
        if ".lora_B." in name:
            expected = 0.5 * value.float()
        elif ".lora_A." in name:
            expected = value.float()
        else:  # the head: halfway between the probe and the trained head
            expected = 0.5 * probe[name] + 0.5 * value.float()
            assert not torch.allclose(probe[name], value.float())  # so the check above can tell them apart
        torch.testing.assert_close(written[name], expected)
    summary = json.loads((half / "summary.json").read_text())
    assert summary["averaged"]["toward_start"] == {"fraction": 0.5, "tried": {"0.5": summary["best_value"]}}
    assert averaged_checkpoints(summary["averaged"]).endswith("(moved back towards the start: 0.5 of the change kept)")
    unmoved = {**summary["averaged"], "toward_start": {"fraction": 1.0, "tried": {"1": 0.9, "0.5": 0.8}}}
    assert "interpolated" not in averaged_checkpoints(unmoved) and "not moved" in averaged_checkpoints(unmoved)


def test_the_best_fraction_on_the_metric_is_written(probe_run, tmp_path, capsys):
    run, _ = probe_run
    out = tmp_path / "scan"
    assert main(["average", str(run), "--greedy", "--toward-start", "0,0.5,1", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    moved = summary["averaged"]["toward_start"]
    assert set(moved["tried"]) == {"1", "0.5", "0"}
    best = max(moved["tried"].values())
    assert summary["best_value"] == best == moved["tried"][f"{moved['fraction']:g}"]
    # A tie keeps the larger fraction: the model nearer what was trained.
    assert moved["fraction"] == max(float(f) for f, v in moved["tried"].items() if v == best)
    assert "toward the start (the fraction of the change kept; 1: the average, 0: the start)" in printed
    assert "test accuracy of the average" in printed
    assert "moved towards the start, 1 of the change kept" not in printed  # the soup's own score is reused for 1
    kept = "not moved towards the start" if moved["fraction"] == 1 else f"{moved['fraction']:g} of the change kept"
    assert kept in printed


def test_refused_without_a_probed_start_or_outside_zero_to_one(probe_run, tiny_model_dir, tmp_path, capsys):
    run, _ = probe_run
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as exited:
        main(["average", str(run), "--toward-start", "1.5", "--output", str(out)])
    assert exited.value.code == 2
    assert "every fraction must lie from 0" in capsys.readouterr().err
    config = write_tiny_config(tmp_path / "plain.yaml", tiny_model_dir, tmp_path / "runs", "plain")
    assert main(["train", "--config", str(config), "train.max_steps=4", "train.eval_every_steps=2",
                 "train.keep_last=5"]) == 0
    assert main(["average", str(tmp_path / "runs" / "plain"), "--toward-start", "0.5", "--output", str(out)]) == 2
    assert "needs a run trained with model.head_init=probe" in capsys.readouterr().err
    assert not out.exists()


def test_fractions_are_labelled_exactly_so_the_kept_one_is_named():
    from textlora.commands.toward_start import fraction_label

    assert [fraction_label(f) for f in (1.0, 0.5, 0.0)] == ["1", "0.5", "0"]
    labels = [fraction_label(f) for f in (0.5555555, 0.5555556)]  # ":g" would print both as 0.555556
    assert len(set(labels)) == 2 and [float(label) for label in labels] == [0.5555555, 0.5555556]
