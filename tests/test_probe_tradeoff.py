"""benchmarks/probe_tradeoff.py on the tiny model: the probe it marks as training's is the one training fits."""

import re

import numpy as np
import pytest
import torch

from benchmarks import probe_tradeoff
from tests.test_toward_start import probe_run  # noqa: F401  (a fixture: a tiny run from a probed mean head)
from textlora.cli import main
from textlora.commands.toward_start import is_lora_update
from textlora.data.batching import tokenize
from textlora.data.prepare import prepare_training_data
from textlora.model.precision import autocast_factory
from textlora.run.load import load_run
from textlora.training import head_probe

FEWER = 64  # fewer than the tiny run's 202 training rows, so which rows are drawn matters


def _training_probe(run_dir):
    """The head training's probe sets on the run's frozen encoder, fitted on ``FEWER`` rows; and its log line."""
    run = load_run(run_dir, merge=False)
    with torch.no_grad():
        for name, param in run.model.named_parameters():
            if is_lora_update(name):
                param.zero_()
    config, length = run.config, run.config.model.max_length
    data = prepare_training_data(config.data, config.train.seed)
    line = head_probe.fit_head_by_probe(
        run.model, config.model.head, run.label_map.num_labels,
        (tokenize(run.tokenizer, data.train.texts, length), data.train.labels),
        (tokenize(run.tokenizer, data.validation.texts, length), data.validation.labels),
        run.tokenizer.pad_token_id, run.device, autocast_factory(run.device, run.precision), config.train.seed,
        FEWER, config.model.probe_cs)
    linear = head_probe.head_linears(run.model, run.label_map.num_labels)[0]
    return linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy(), line


def test_the_marked_probe_is_training_own_fitted_on_the_same_rows_with_the_same_c(probe_run):  # noqa: F811
    run, _ = probe_run
    weight, bias, line = _training_probe(run)
    trained_c = float(re.search(r"C=([\d.]+) chosen", line).group(1))

    features, config = probe_tradeoff.frozen_features(run, "cpu", 0)
    assert len(features.train[1]) == 202 > FEWER
    table = probe_tradeoff.probe_table(features, [FEWER, 202], [0.01, *head_probe.PROBE_CS],
                                       (FEWER, head_probe.PROBE_CS))
    marked = [row for row in table if row["own"]]
    assert len(marked) == 1 and marked[0]["rows"] == FEWER and marked[0]["C"] == trained_c
    fit = marked[0]["fit"]
    np.testing.assert_allclose(fit.coef_, weight[fit.classes_], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.intercept_, bias[fit.classes_], rtol=1e-5, atol=1e-6)
    # Other rows of the draw give another probe: the comparison above can tell them apart.
    other = [row for row in table if row["rows"] == 202 and row["C"] == trained_c][0]["fit"]
    assert not np.allclose(other.coef_, fit.coef_, atol=1e-4)


def test_the_table_names_each_set_and_marks_training_probe_once(probe_run, capsys):  # noqa: F811
    run, _ = probe_run
    assert probe_tradeoff.main([str(run), "--rows", "4096", "0", "100000", "--cs", "0.01", "1",
                                "--out", "none"]) == 0
    out = capsys.readouterr().out
    table = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")]
    header, rows = table[0], table[2:]
    assert header[2] == "validation" and header[-1] == "test |"  # then each eval set of the run
    assert len(rows) == 2  # 4096, 0 and 100000 rows are all the tiny run's 202: one block
    assert not any("(training's probe)" in row[1] for row in rows)  # not every C training tries was tried


def test_a_folder_whose_features_are_not_the_frozen_encoder_is_refused(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "exported")]) == 0
    with pytest.raises(SystemExit) as exit_:
        probe_tradeoff.main([str(tmp_path / "exported"), "--out", "none"])
    assert exit_.value.code == 2 and "no LoRA weights to set aside" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the tiny run's standard head reads a trained dense layer
        probe_tradeoff.main([str(tiny_run), "--out", "none"])
    assert exit_.value.code == 2 and "model.head=standard" in capsys.readouterr().err
