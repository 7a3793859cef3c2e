"""Run folders written before the package layout changed still load, predict, evaluate and report.

``fixtures/run-2026-12-03`` is the tiny model (conftest's ``tiny_model_dir``, seeded) trained for 26 steps by
the code of 2026-12-03; its checkpoints and figures were deleted to keep it small. Its config names the base
model by a path that no longer exists, so every command points it at this session's copy with --base-model.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from textlora.cli import main

from .conftest import AGNEWS_SMALL

OLD_RUN = Path(__file__).parent / "fixtures" / "run-2026-12-03"


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A copy of the old run folder (commands write evaluations/ and report/ into it)."""
    return Path(shutil.copytree(OLD_RUN, tmp_path / "run-2026-12-03"))


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_old_run_predicts_what_it_predicted_when_it_was_trained(old_run, tiny_model_dir, tmp_path):
    summary = json.loads((old_run / "summary.json").read_text())
    assert summary["base_dtype"] == "bf16"  # the frozen base was stored in bf16: agreement to its rounding
    saved = _rows(old_run / "predictions" / "validation.csv")
    names = json.loads((old_run / "labels.json").read_text())["names"]
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(old_run), "--data", str(old_run / "predictions" / "validation.csv"), "--header",
                 "--text-columns", "text", "--output", str(out), "--probs",
                 "--base-model", str(tiny_model_dir), "--device", "cpu"]) == 0
    now = _rows(out)
    assert len(now) == len(saved) == 40
    then_probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in saved])
    now_probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in now])
    np.testing.assert_allclose(now_probs, then_probs, atol=2e-3)  # bf16 keeps ~3 significant digits
    assert [int(r["Label"]) for r in now] == [int(r["pred"]) for r in saved]


def test_old_run_evaluates_and_reports(old_run, tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(old_run), "--data", str(old_run / "predictions" / "validation.csv"), "--header",
                 "--text-columns", "text", "--label-column", "label_name", "--output", str(out),
                 "--base-model", str(tiny_model_dir), "--device", "cpu"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["rows"] == 40
    assert metrics["accuracy"] == pytest.approx(json.loads((old_run / "eval.json").read_text())["accuracy"])
    assert main(["report", str(old_run)]) == 0
    report = (old_run / "report" / "report.md").read_text()
    assert "run-2026-12-03" in report or "accuracy" in report
    assert (old_run / "report" / "confusion_matrix_validation.png").is_file()


def test_public_api_on_the_old_run(old_run, tiny_model_dir, tmp_path):
    import textlora

    base = str(tiny_model_dir)
    results = textlora.classify(old_run, ["Stocks rallied as the Fed held rates."], base_model=base)
    assert results[0]["label"] in json.loads((old_run / "labels.json").read_text())["names"]
    loaded = textlora.load_run(old_run, device="cpu", base_model=base)
    assert loaded.label_map.names == ("World", "Sports", "Business", "Sci/Tech")
    assert textlora.report(old_run).name == "report.md"
    assert "load_config" in textlora.__all__ and textlora.load_config(None).train.speedups is True
    metrics = textlora.evaluate(old_run, AGNEWS_SMALL, tmp_path / "eval.json", base_model=base)
    assert metrics["rows"] == 242 and json.loads((tmp_path / "eval.json").read_text())["rows"] == 242
    written = textlora.predict(old_run, AGNEWS_SMALL, tmp_path / "submission.csv", base_model=base)
    assert written["rows"] == 242 and len(_rows(tmp_path / "submission.csv")) == 242
