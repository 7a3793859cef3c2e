"""`textlora export`: a plain Hugging Face folder whose outputs equal the unmerged adapter's."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from textlora.cli import main
from textlora.run.load import load_run

TEXTS = ["Stocks fell on Wall Street as oil prices rose", "The team won the cup after extra time",
         "NASA launches a new probe to Mars", "Leaders meet to discuss the peace plan in the region",
         "short"]
NAMES = ["World", "Sports", "Business", "Sci/Tech"]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-export"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    return out


def _unmerged_logits(run_dir, texts):
    # In fp32 (base included), as the export merges: the comparison is then exact up to float reordering.
    run = load_run(run_dir, device="cpu", merge=False, precision="fp32")
    assert type(run.model).__name__ == "PeftModelForSequenceClassification"  # really the unmerged adapter
    batch = run.tokenizer(texts, padding=True, truncation=True, max_length=run.config.model.max_length,
                          return_tensors="pt")
    with torch.inference_mode():
        return run.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()


def test_export_writes_a_stock_model_equal_to_the_unmerged_adapter(tiny_run, exported, tiny_model_dir):
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "textlora.json"):
        assert (exported / name).is_file(), name
        assert (exported / name).stat().st_mode & 0o444 == 0o444, name  # readable by all, like any model folder
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {str(i): n for i, n in enumerate(NAMES)}
    assert config["label2id"] == {n: i for i, n in enumerate(NAMES)}
    info = json.loads((exported / "textlora.json").read_text())
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert info["labels"] == NAMES and info["trainable_params"] == summary["trainable_params"] == 1156
    assert info["metrics"]["validation_accuracy"] == summary["validation_accuracy"]
    assert info["max_length"] == 48

    # No LoRA tensors are left, and the query weights really moved away from the base model's.
    weights = load_file(str(exported / "model.safetensors"))
    assert not any("lora" in k for k in weights)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(weights[f"bert.{key}"], base[key])

    model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer.model_max_length == 48  # the run's max_length, so pipelines truncate the same way
    batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        merged = model(**batch).logits.numpy()
    unmerged = _unmerged_logits(tiny_run, TEXTS)
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=1e-4)

    predictions = pipeline("text-classification", model=str(exported), device="cpu")(TEXTS)
    assert [p["label"] for p in predictions] == [NAMES[i] for i in unmerged.argmax(axis=1)]


def test_exported_model_loads_without_textlora_or_peft(exported):
    code = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        f"out = pipeline('text-classification', model={str(exported)!r}, device='cpu')(['The team won the cup'])\n"
        "assert 'peft' not in sys.modules and 'textlora' not in sys.modules, sorted(m for m in sys.modules if 'peft' in m or 'textlora' in m)\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])[0]["label"] in NAMES


def test_onnx_export_matches_pytorch(tiny_run, exported, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "with-onnx"
    assert main(["export", str(tiny_run), "--out", str(out), "--onnx"]) == 0
    assert json.loads((out / "textlora.json").read_text())["onnx_max_abs_diff"] < 1e-4
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    for texts in (TEXTS[:1], TEXTS, TEXTS * 3):  # other batch sizes and lengths than the export traced
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
        got = session.run(["logits"], {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
        with torch.inference_mode():
            want = model(input_ids=torch.from_numpy(batch["input_ids"]),
                         attention_mask=torch.from_numpy(batch["attention_mask"])).logits.numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_refuses_an_existing_folder_and_a_non_run(tiny_run, exported, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(exported)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    assert main(["export", str(not_a_run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no config.yaml" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_head_stock_transformers_cannot_load(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "linear-head-run"
    shutil.copytree(tiny_run, run)
    config = (run / "config.yaml").read_text()
    assert "head: standard" in config
    (run / "config.yaml").write_text(config.replace("head: standard", "head: linear"))
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model.head='linear'" in err and "textlora serve" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_export_force_replaces_only_an_earlier_export(tiny_run, tmp_path, capsys):
    # --force replaces the folder whole: a user's folder of other files must never be deleted by it.
    mine = tmp_path / "my-models"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    (mine / "config.json").write_text("{}\n")
    assert main(["export", str(tiny_run), "--out", str(mine), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "no textlora.json" in err and "would delete what it holds" in err
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "notes.txt"]
    # An earlier export is replaced with --force; once a file is added to it, it is not.
    out = tmp_path / "export"
    for _ in range(2):
        assert main(["export", str(tiny_run), "--out", str(out), "--force"]) == 0
        assert (out / "textlora.json").is_file() and (out / "model.safetensors").is_file()
    (out / "notes.txt").write_text("keep me\n")
    assert main(["export", str(tiny_run), "--out", str(out), "--force"]) == 2
    assert "it also holds notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me\n" and (out / "textlora.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "my-models"]  # no temp folders left


def test_the_documented_pipeline_call_truncates_as_textlora_classify_does(tiny_run, exported, capsys):
    from textlora.commands.predict import classify

    # Far beyond the run's 48 tokens and the model's 128 positions: a pipeline that did not truncate would fail.
    long_text = ("Stocks fell on Wall Street as oil prices rose while the team won the cup. " * 300)[:20_000]
    texts = [long_text, TEXTS[0]]
    # The call README's Serving section shows (top_k=None: every class's score).
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert 'pipeline("text-classification", model="exported/quickstart", truncation=True)' in readme
    classifier = pipeline("text-classification", model=str(exported), truncation=True, device="cpu")
    got = classifier(texts, top_k=None)
    want = classify(tiny_run, texts, as_json=True, device="cpu", precision="fp32")
    capsys.readouterr()
    for scores, expected in zip(got, want):
        assert {s["label"]: s["score"] for s in scores} == pytest.approx(expected["probabilities"], abs=1e-5)


def test_classify_predict_and_evaluate_take_an_exported_folder(tiny_run, exported, tmp_path, capsys):
    from .conftest import AGNEWS_SMALL

    # The export records how the run read its data (headerless AG News rows, 1-based labels): --data reads alike.
    info = json.loads((exported / "textlora.json").read_text())
    assert info["data"]["column_names"] == ["label", "title", "description"] and info["label_map"]["base"] == 1
    results = {}
    for name, folder in (("run", tiny_run), ("export", exported)):
        submission, evaluation = tmp_path / f"{name}.csv", tmp_path / f"{name}.json"
        assert main(["classify", str(folder), *TEXTS, "--json", "--precision", "fp32"]) == 0
        classified = json.loads(capsys.readouterr().out)
        assert main(["predict", str(folder), "--data", str(AGNEWS_SMALL), "--output", str(submission), "--probs",
                     "--precision", "fp32"]) == 0
        assert main(["evaluate", str(folder), "--data", str(AGNEWS_SMALL), "--output", str(evaluation),
                     "--precision", "fp32"]) == 0
        capsys.readouterr()
        results[name] = (classified, submission.read_text().splitlines(), json.loads(evaluation.read_text()))
    (run_classified, run_rows, run_eval), (export_classified, export_rows, export_eval) = results["run"], results["export"]
    for a, b in zip(run_classified, export_classified):
        assert a["label"] == b["label"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert len(export_rows) == len(run_rows) == run_eval["rows"] + 1 > 200
    assert [row.split(",")[:2] for row in export_rows] == [row.split(",")[:2] for row in run_rows]
    assert export_eval["rows"] == run_eval["rows"] and export_eval["accuracy"] == pytest.approx(run_eval["accuracy"])
    assert export_eval["confusion_matrix"] == run_eval["confusion_matrix"]
