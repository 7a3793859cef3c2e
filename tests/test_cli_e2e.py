"""One end-to-end test per CLI command, on the tiny model: checks the files written and the numbers in them."""

import csv
import json
import pickle
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from textlora.cli import main

from .conftest import AGNEWS_SMALL


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def trained_run(tiny_config_yaml, tmp_path):
    assert main(["train", "--config", str(tiny_config_yaml)]) == 0
    return tmp_path / "runs" / "tiny"


def test_train_log_names_layer_lrs_that_set_no_learning_rate(tiny_config_yaml, capsys):
    # LoRA on layer 1 only: the layer-0 LR (as S2's "0-3"/"4-7" with LoRA on 8-11) has nothing to apply to.
    argv = ["train", "--config", str(tiny_config_yaml), "model.layers=1", "optim.layer_lrs.0-0=1e-5",
            "optim.layer_lrs.1-1=1e-3", "train.epochs=1", "train.max_steps=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[optim]")]
    assert lines == ["[optim] optim.layer_lrs 0-0: no effect, no trainable parameter takes these learning rates "
                     "(trainable parameters are only in layers 1; a layer takes the first range that contains it)"]


def test_train_writes_a_self_describing_run_folder(trained_run):
    run = trained_run
    for name in ("config.yaml", "labels.json", "budget.json", "data_report.json", "metrics.jsonl", "eval.json",
                 "summary.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "tokenizer/tokenizer_config.json"):
        assert (run / name).is_file(), name
    labels = json.loads((run / "labels.json").read_text())
    assert labels == {"names": ["World", "Sports", "Business", "Sci/Tech"], "kind": "int", "base": 1}

    report = json.loads((run / "data_report.json").read_text())
    assert report["train_rows_read"] == 242
    assert report["validation_rows"] == 40
    assert report["train_rows"] == 202
    assert sum(report["train_class_counts"].values()) == 202

    # 202 rows / batch 16 = 13 steps per epoch, 2 epochs; a train line every 2 steps, an eval per epoch.
    lines = _read_jsonl(run / "metrics.jsonl")
    train_lines = [l for l in lines if l["kind"] == "train"]
    evals = [l for l in lines if l["kind"] == "eval"]
    assert [l["step"] for l in evals] == [13, 26]
    assert train_lines[-1]["step"] == 26 and all(l["loss"] > 0 for l in train_lines)
    assert all(l["samples_per_s"] > 0 for l in train_lines)

    budget = json.loads((run / "budget.json").read_text())
    # tiny BERT: LoRA r=4 on query/value (32x32) in 2 layers = 4*(32+32)*2*2; head 32*4+4 = 132.
    assert budget["groups"] == {"lora: attention.self.query": 512, "lora: attention.self.value": 512,
                                "head: classifier": 132}
    assert budget["total"] == 1156

    # The adapter holds LoRA and head weights only (the base model is never copied).
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert sum(w.numel() for w in weights.values()) == 1156

    summary = json.loads((run / "summary.json").read_text())
    best_eval = max(evals, key=lambda l: (l["accuracy"], -l["step"]))
    assert summary["best_step"] == best_eval["step"]
    assert summary["best_value"] == pytest.approx(best_eval["accuracy"])
    eval_json = json.loads((run / "eval.json").read_text())
    assert eval_json["accuracy"] == pytest.approx(best_eval["accuracy"])
    assert np.trace(eval_json["confusion_matrix"]) == round(eval_json["accuracy"] * 40)
    assert (run / "checkpoints").is_dir() and len(list((run / "checkpoints").iterdir())) <= 3


def test_evaluate_writes_metrics_that_agree_with_each_other(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(trained_run), "--data", str(AGNEWS_SMALL), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 242 == metrics["rows"]
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / 242)
    for i, name in enumerate(metrics["label_names"]):
        assert metrics["per_class"][name]["support"] == matrix[i].sum()
        recall = matrix[i, i] / matrix[i].sum()
        assert metrics["per_class"][name]["recall"] == pytest.approx(recall)
        assert 0 <= metrics["per_class"][name]["roc_auc"] <= 1
    assert "confusion matrix" in capsys.readouterr().out


def test_predict_turns_a_pickled_dataset_into_a_submission(trained_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    with AGNEWS_SMALL.open(newline="") as handle:
        texts = [f"{r[1]} {r[2]}" for r in csv.reader(handle)]
    pkl = tmp_path / "test_unlabelled.pkl"
    pkl.write_bytes(pickle.dumps(datasets.Dataset.from_dict({"text": texts})))
    out = tmp_path / "submission.csv"
    assert main(["predict", str(trained_run), "--data", str(pkl), "--output", str(out), "--names", "--probs"]) == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(texts)
    assert list(rows[0])[:3] == ["ID", "Label", "LabelName"]
    assert [int(r["ID"]) for r in rows] == list(range(len(texts)))
    names = ["World", "Sports", "Business", "Sci/Tech"]
    for row in rows:
        probs = [float(row[f"prob_{n}"]) for n in names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert int(row["Label"]) == int(np.argmax(probs)) and row["LabelName"] == names[int(row["Label"])]


def test_classify_prints_label_and_probabilities(trained_run, capsys):
    assert main(["classify", str(trained_run), "Stocks fell on Wall Street", "The team won the cup", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in results] == ["Stocks fell on Wall Street", "The team won the cup"]
    for r in results:
        assert r["label"] in r["probabilities"] and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)


def test_params_counts_and_refuses_over_budget(tiny_config_yaml, capsys):
    assert main(["params", "--config", str(tiny_config_yaml), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["total"] == 1156 and counts["fits"]
    assert main(["params", "--config", str(tiny_config_yaml), "model.max_trainable_params=1000"]) == 2
    err = capsys.readouterr().err
    assert "over the budget of 1,000" in err and "Nearest configurations that fit" in err


def test_train_after_another_accelerator_set_a_different_precision(tiny_config_yaml, tmp_path):
    """A notebook that ran Trainer first has fixed accelerate's precision for the process; textlora still trains
    with its own, and the summary says which it used.

    Each case runs in a fresh interpreter, as a notebook's kernel is: what is checked is textlora's handling of a
    process whose accelerate state someone else set, not how accelerate treats a second Accelerator in one process.
    """
    import subprocess
    import sys

    for earlier, precision, name in (("bf16", "no", "fp32"), ("no", "bf16", "bf16")):
        run = f"tiny-{name}"
        notebook = ("from accelerate import Accelerator; from textlora.cli import main; "
                    f"Accelerator(cpu=True, mixed_precision={earlier!r}); "
                    f"raise SystemExit(main(['train', '--config', {str(tiny_config_yaml)!r}, "
                    f"'train.mixed_precision={precision}', 'train.run_name={run}']))")
        done = subprocess.run([sys.executable, "-c", notebook], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads((tmp_path / "runs" / run / "summary.json").read_text())
        assert (summary["precision"], summary["device"]) == (name, "cpu")


def test_resume_continues_exactly(tiny_config_yaml, tmp_path):
    """Resuming from the epoch-1 checkpoint ends with the same weights as the uninterrupted run."""
    assert main(["train", "--config", str(tiny_config_yaml), "train.keep_last=5"]) == 0
    full = tmp_path / "runs" / "tiny"
    resumed = tmp_path / "runs" / "tiny-resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000026")
    assert main(["train", "--resume", str(resumed)]) == 0
    a = load_file(str(full / "checkpoints" / "step-0000026" / "trainable.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-0000026" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    # Same losses and accuracies logged at every step (throughput numbers naturally differ).
    assert _logged_numbers(full) == _logged_numbers(resumed)


def _logged_numbers(run):
    return [(l["kind"], l["step"], l["loss"], l.get("accuracy")) for l in _read_jsonl(run / "metrics.jsonl")]


def test_fast_cpu_dropout_is_the_default_and_can_be_turned_off(tiny_config_yaml, tmp_path, capsys):
    """train.fast_cpu_dropout (on by default) is installed and reported; false trains with torch's dropout instead."""
    for setting in ("true", "false"):
        assert main(["train", "--config", str(tiny_config_yaml), f"train.fast_cpu_dropout={setting}",
                     "train.max_steps=3", f"train.run_name=dropout-{setting}"]) == 0
    assert capsys.readouterr().out.count("dropout on CPU from 15-bit integer masks") == 1
    fast, stock = (_logged_numbers(tmp_path / "runs" / f"dropout-{s}") for s in ("true", "false"))
    assert [r[:2] for r in fast] == [r[:2] for r in stock] and fast != stock  # same steps, other dropout masks
