"""model.head_init=probe (LP-FT): the head starts as the logistic regression of the frozen features that scores best
on validation, exactly (the model's own predictions agree with the probe's), and only where it can."""

import csv
import re

import numpy as np
import pytest
import torch

from textlora.cli import main
from textlora.config import ModelConfig
from textlora.data.batching import tokenize
from textlora.errors import ConfigError
from textlora.model.build import build_model, load_tokenizer
from textlora.model.forward import predict_proba
from textlora.training.head_probe import fit_head_by_probe

from .conftest import AGNEWS_SMALL, shared_path, write_tiny_config
from .test_prefix_cache import LABELS


def _rows():
    with AGNEWS_SMALL.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return [r[1] + " " + r[2] for r in rows], [int(r[0]) - 1 for r in rows]


@pytest.mark.parametrize("head", ["linear", "mean"])
def test_the_probed_head_predicts_what_the_probe_predicts(head):
    """On the real all-MiniLM-L6-v2 (../shared): its frozen features classify AG News well above chance."""
    minilm = str(shared_path("models", "all-MiniLM-L6-v2"))
    texts, labels = _rows()
    tokenizer = load_tokenizer(minilm)
    train, val = tokenize(tokenizer, texts[:180], 64), tokenize(tokenizer, texts[180:], 64)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name_or_path=minilm, head=head, head_init="probe"), LABELS).model
    before = predict_proba(model, val, tokenizer.pad_token_id).argmax(1)
    note = fit_head_by_probe(model, head, 4, (train, labels[:180]), (val, labels[180:]), tokenizer.pad_token_id,
                             torch.device("cpu"))
    probe_accuracy = float(re.search(r"validation accuracy (\d\.\d+)", note).group(1))
    after = predict_proba(model, val, tokenizer.pad_token_id).argmax(1)
    accuracy = float(np.mean(after == np.asarray(labels[180:])))
    assert accuracy == pytest.approx(probe_accuracy, abs=1e-4)  # the head is the probe, copied exactly
    assert accuracy > 0.6  # four classes: a head that was not fitted scores about 0.25
    assert not np.array_equal(before, after)  # and not the random head it replaced
    assert "180 training rows" in note and model.training


def test_probe_needs_a_head_of_one_linear(tiny_model_dir):
    with pytest.raises(ConfigError, match="model.head_init.*probe needs model.head linear or mean"):
        ModelConfig(name_or_path=str(tiny_model_dir), head_init="probe")
    with pytest.raises(ConfigError, match="allowed values are random, probe"):
        ModelConfig(name_or_path=str(tiny_model_dir), head="mean", head_init="zeros")


def test_training_from_a_probed_head_logs_it(tmp_path, tiny_model_dir, capsys):
    config = write_tiny_config(tmp_path / "probe.yaml", tiny_model_dir, tmp_path / "runs", "probe")
    assert main(["train", "--config", str(config), "model.head=mean", "model.head_init=probe",
                 "train.max_steps=4", "train.eval_every_steps=2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"head fitted on the frozen encoder before training \(model.head_init=probe\): logistic "
                     r"regression on \d+ training rows, C=[\d.]+ chosen on validation", out)


def test_training_fits_the_probe_on_the_rows_and_strengths_the_config_names(tmp_path, tiny_model_dir, capsys):
    config = write_tiny_config(tmp_path / "probe.yaml", tiny_model_dir, tmp_path / "runs", "probe")
    assert main(["train", "--config", str(config), "model.head=mean", "model.head_init=probe",
                 "model.probe_rows=50", "model.probe_cs=[0.02]", "train.max_steps=2"]) == 0
    assert "logistic regression on 50 training rows, C=0.02 chosen on validation" in capsys.readouterr().out
    assert main(["train", "--config", str(config), "model.head=mean", "model.head_init=probe",
                 "model.probe_rows=0", "train.max_steps=2", "train.run_name=all"]) == 0
    assert "logistic regression on 202 training rows" in capsys.readouterr().out  # 0: every row of the split


@pytest.mark.parametrize("override, message", [("model.probe_rows=-1", "'model.probe_rows': must be >= 0"),
                                               ("model.probe_cs=[]", "'model.probe_cs': name at least one"),
                                               ("model.probe_cs=[0.1,0]", "'model.probe_cs': name at least one")])
def test_probe_rows_and_strengths_are_checked(tmp_path, tiny_model_dir, capsys, override, message):
    config = write_tiny_config(tmp_path / "probe.yaml", tiny_model_dir, tmp_path / "runs", "probe")
    assert main(["train", "--config", str(config), "model.head=mean", "model.head_init=probe", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs" / "probe").exists()
