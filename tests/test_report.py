"""`textlora report` / `compare` / `sweep` end to end on the tiny model: files written and the numbers in them."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from textlora.cli import main
from textlora.commands.report import hardest_errors

from .report_helpers import tiny_yaml

FIGURES = ("class_distribution.png", "length_distribution.png", "training_curves.png", "budget.png",
           *(f"{name}_{split}.png" for split in ("test", "validation")
             for name in ("confusion_matrix", "per_class_accuracy", "roc_curves")))


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """One trained tiny run (with a test split and a 20-60-word filter); its report is written by training."""
    root = tmp_path_factory.mktemp("report")
    config = tiny_yaml(root / "tiny.yaml", tiny_model_dir, root / "runs")
    assert main(["train", "--config", str(config)]) == 0
    return root / "runs" / "tiny"


def _png(path):
    image = imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400, path
    assert image.std() > 0.01, f"{path} is blank"


def test_training_saves_predictions_and_length_histograms(run, tiny_model_dir):
    report = json.loads((run / "data_report.json").read_text())
    before, after = report["train_length_histogram_before_filter"], report["train_length_histogram"]
    assert sum(after["rows"]) == report["train_rows"]
    assert sum(before["rows"]) == report["train_rows"] + report["length_filter"]["removed"]
    assert min(after["words"]) >= 20 and max(after["words"]) <= 60 and min(before["words"]) < 20

    test_eval = json.loads((run / "test_eval.json").read_text())
    predictions = pd.read_csv(run / "predictions" / "test.csv", keep_default_na=False)
    assert len(predictions) == test_eval["rows"] == 242
    probs = predictions[[f"prob_{n}" for n in test_eval["label_names"]]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (predictions["pred"] == probs.argmax(axis=1)).all()
    assert (predictions["label"] == predictions["pred"]).mean() == pytest.approx(test_eval["accuracy"])
    validation = pd.read_csv(run / "predictions" / "validation.csv", keep_default_na=False)
    eval_json = json.loads((run / "eval.json").read_text())
    assert len(validation) == 40
    assert (validation["label"] == validation["pred"]).mean() == pytest.approx(eval_json["accuracy"])

    summary = json.loads((run / "summary.json").read_text())
    # The full model is the stock classifier: encoder + pooler + the 4-class Linear, LoRA excluded.
    from transformers import AutoConfig, AutoModelForSequenceClassification

    stock = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_model_dir, num_labels=4))
    assert summary["model_params"] == sum(p.numel() for p in stock.parameters())
    assert summary["model_params"] > summary["trainable_params"]


def test_training_writes_the_report_with_every_figure_and_its_numbers(run):
    folder = run / "report"
    for name in FIGURES:
        _png(folder / name)
    text = (folder / "report.md").read_text()
    for name in FIGURES:
        assert f"({name})" in text, name
    test_eval = json.loads((run / "test_eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert f"test accuracy (242 rows) | **{test_eval['accuracy']:.4f}**" in text
    assert f"trainable parameters | {summary['trainable_params']:,}" in text
    for name, row in test_eval["per_class"].items():  # ROC-AUC from the curves agrees with evaluate's
        assert re.search(rf"\| {re.escape(name)} \| {row['precision']:.4f} \| {row['recall']:.4f} \| "
                         rf"{row['f1']:.4f} \| {row['roc_auc']:.4f} \|", text), name
    report = json.loads((run / "data_report.json").read_text())
    assert f"length filter 20–60 words: removed {report['length_filter']['removed']:,}" in text

    predictions = pd.read_csv(run / "predictions" / "test.csv", keep_default_na=False)
    errors = predictions[predictions["label"] != predictions["pred"]]
    shown = hardest_errors(predictions)
    assert len(shown) == min(10, len(errors))
    assert shown["confidence"].iloc[0] == errors["confidence"].max()
    assert f"{len(errors):,} errors, the {len(shown)} most confident shown" in text
    assert f"| {shown['row'].iloc[0]} | {shown['label_name'].iloc[0]} | {shown['pred_name'].iloc[0]} |" in text
    adapter = sum(f.stat().st_size for f in (run / "adapter").rglob("*") if f.is_file())
    assert f"full model: {summary['model_params']:,} parameters" in text
    assert "adapter on disk" in text and adapter > 0


def test_report_draws_the_validation_split_too_each_figure_named_after_its_split(run):
    # S1 drew its confusion matrix and ROC curves on its evaluation split: the report has them for validation
    # as well as for test, in files and sections that say which split.
    text = (run / "report" / "report.md").read_text()
    assert not (run / "report" / "confusion_matrix.png").exists() and not (run / "report" / "roc_curves.png").exists()
    validation = json.loads((run / "eval.json").read_text())
    test_section = text.index("## Evaluation on the test split (242 rows)")
    section = text.index("## Evaluation on the validation split (40 rows)")
    assert test_section < section
    body = text[section:text.index("\n## ", section + 1)]
    for name in ("confusion_matrix", "per_class_accuracy", "roc_curves"):
        assert f"({name}_validation.png)" in body, name
        assert f"({name}_test.png)" not in body, name
        assert (run / "report" / f"{name}_validation.png").read_bytes() != \
            (run / "report" / f"{name}_test.png").read_bytes(), name
    for name, row in validation["per_class"].items():  # the validation table holds eval.json's numbers
        auc = f"{row['roc_auc']:.4f}" if row.get("roc_auc") is not None else "n/a"
        assert f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {auc} |" in body, name
    predictions = pd.read_csv(run / "predictions" / "validation.csv", keep_default_na=False)
    wrong = int((predictions["label"] != predictions["pred"]).sum())
    assert f"Hardest misclassified examples (validation: {wrong:,} errors" in body


def test_report_command_redraws_from_the_folder_and_degrades_without_predictions(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "old-run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "report", "predictions"))
    assert main(["report", str(copy)]) == 0
    text = (copy / "report" / "report.md").read_text()
    assert "No predictions/test.csv" in text and "No predictions/validation.csv" in text
    assert "a published run leaves them out" in text and "retrain" not in text  # the reason, not a wrong fix
    assert not list((copy / "report").glob("roc_curves*.png"))
    _png(copy / "report" / "confusion_matrix_test.png")
    _png(copy / "report" / "confusion_matrix_validation.png")
    assert not (copy / "report.tmp").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sweep_trains_the_grid_and_compares(tiny_model_dir, tmp_path, capsys):
    config = tiny_yaml(tmp_path / "tiny.yaml", tiny_model_dir, tmp_path / "runs", run_name="s")
    argv = ["sweep", str(config), "train.epochs=1", "--grid", "optim.name=adamw,rmsprop"]
    assert main(argv) == 0
    runs = [tmp_path / "runs" / "s-name=adamw", tmp_path / "runs" / "s-name=rmsprop"]
    for folder in runs:
        assert (folder / "summary.json").is_file() and (folder / "report" / "report.md").is_file()
    assert "rmsprop" in (runs[1] / "config.yaml").read_text()
    out = tmp_path / "runs" / "s-sweep"
    _png(out / "curves.png")
    _png(out / "curves_by_epoch.png")  # S2's view: the same curves against epochs
    assert (out / "curves_by_epoch.png").read_bytes() != (out / "curves.png").read_bytes()
    compared = json.loads((out / "compare.json").read_text())
    assert [r["run"] for r in compared["runs"]] == ["s-name=adamw", "s-name=rmsprop"]
    for row, folder in zip(compared["runs"], runs):
        summary = json.loads((folder / "summary.json").read_text())
        assert row["validation_accuracy"] == summary["validation_accuracy"]
        assert row["test_accuracy"] == summary["test_accuracy"]
        assert row["trainable_params"] == summary["trainable_params"] == 1156
        # Validation loss: the kept model's (eval.json), the last evaluation's and the lowest (metrics.jsonl).
        evals = [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
        assert row["validation_loss"] == json.loads((folder / "eval.json").read_text())["loss"]
        assert row["final_validation_loss"] == evals[-1]["loss"]
        assert row["min_validation_loss"] == min(r["loss"] for r in evals)
    assert compared["differences"] == {"optim.name": ["adamw", "rmsprop"]}
    text = (out / "compare.md").read_text()
    assert "| `optim.name` | `adamw` | `rmsprop` |" in text
    assert f"{compared['runs'][0]['validation_accuracy']:.4f}" in text
    assert "| val loss | final val loss | min val loss |" in text and "(curves_by_epoch.png)" in text
    assert f"| {compared['runs'][1]['min_validation_loss']:.4f} |" in text

    capsys.readouterr()
    assert main(argv) == 0  # a second sweep keeps the finished runs
    assert capsys.readouterr().out.count("is finished already") == 2
    # ... but only when they are its runs: with another setting shared by all of them it refuses, up front.
    before = (runs[0] / "summary.json").read_text()
    assert main(argv[:3] + ["model.lora_r=8"] + argv[3:]) == 2
    err = capsys.readouterr().err
    assert f"{runs[0]} holds a run of another configuration" in err and "model.lora_r: 4 there, 8 now" in err
    assert (runs[0] / "summary.json").read_text() == before

    # compare on its own, into a chosen folder; one run is not a comparison.
    assert main(["compare", str(runs[0]), str(runs[1]), "--output", str(tmp_path / "cmp")]) == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == compared
    assert main(["compare", str(runs[0])]) == 2


def test_sweep_rejects_a_bad_grid_before_training(tiny_model_dir, tmp_path, capsys):
    config = tiny_yaml(tmp_path / "tiny.yaml", tiny_model_dir, tmp_path / "runs")
    assert main(["sweep", str(config), "--grid", "optim.name=adamw,adam"]) == 2
    assert "optim.name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["sweep", str(config), "--grid", "optim.name"]) == 2
    # One combination, or a key given twice, would train and then have nothing to compare.
    assert main(["sweep", str(config), "--grid", "optim.name=adamw"]) == 2
    assert "the grid has one combination" in capsys.readouterr().err
    assert main(["sweep", str(config), "--grid", "optim.lr=1e-3", "optim.lr=2e-3"]) == 2
    assert "--grid names optim.lr twice" in capsys.readouterr().err
