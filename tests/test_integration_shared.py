"""Integration tests on the real models and AG News rows in ../shared (skipped when it is absent; a failure under CI=true)."""

import json

import pytest
from safetensors.torch import load_file

from textlora.model.budget import count_model
from textlora.cli import main
from textlora.config import ModelConfig, load_config

from .conftest import shared_path

pytestmark = pytest.mark.integration

AGNEWS_SOURCE = """
    column_names: [label, title, description]
    text_columns: [title, description]"""


def _write_config(tmp_path, model_dir, train_csv, extra=""):
    path = tmp_path / "real.yaml"
    path.write_text(f"""
model:
  name_or_path: {model_dir}
  max_length: 64
  lora_r: 8
  lora_alpha: 16
  target_modules: [query, value]
data:
  train:
    path: {train_csv}{AGNEWS_SOURCE}
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 100
  max_train_rows: 900
optim: {{lr: 2.0e-3, warmup_ratio: 0.06}}
train:
  epochs: 1
  batch_size: 32
  output_dir: {tmp_path / 'runs'}
  run_name: real
  quiet: true
{extra}""")
    return path


def test_fresh_pooler_of_minilm_l3_is_reported_trained_and_counted():
    model_dir = shared_path("models", "paraphrase-MiniLM-L3-v2")
    breakdown, built = count_model(ModelConfig(name_or_path=str(model_dir)), num_labels=4, pretrained=True)
    # hidden 384: pooler dense 384*384+384; head 384*4+4; LoRA r=8 on q/v of 3 layers: 8*(384+384)*2*3.
    assert built.fresh_modules == ["bert.pooler.dense"]
    assert breakdown.groups["fresh: bert.pooler.dense"] == 147_840
    assert breakdown.groups["head: classifier"] == 1_540
    assert breakdown.total == 147_840 + 1_540 + 36_864
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert any("pooler" in n for n in trainable)


def test_params_counts_the_fresh_pooler_of_minilm_l3_without_loading_it(tmp_path, capsys):
    """The safetensors headers say the pooler is missing: params and plan count it as train does, no --pretrained."""
    model_dir = shared_path("models", "paraphrase-MiniLM-L3-v2")
    config = _write_config(tmp_path, model_dir, "unused.csv")
    assert main(["params", "--config", str(config), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    breakdown, _ = count_model(ModelConfig(name_or_path=str(model_dir)), num_labels=4, pretrained=True)
    assert counts["groups"] == dict(breakdown.groups) and counts["total"] == 147_840 + 1_540 + 36_864
    # QA's case: budget 100,000 with r=4 on q/v. The standard head plus the fresh pooler is over on its own, so
    # the plan picks the linear head; train refused the standard head's pick at 232,324.
    planned = tmp_path / "planned.yaml"
    assert main(["plan", "--budget", "100000", "--config", str(config), "--output", str(planned)]) == 0
    rows = capsys.readouterr().out.split("\n\n")[0].splitlines()
    rows = [row for row in rows if row.split()[0].isdigit()]
    assert rows and all(row.split()[1] == "linear" for row in rows)
    planned_cfg = load_config(planned).model
    total = int(rows[0].split()[7].replace(",", ""))
    assert count_model(planned_cfg, num_labels=4, pretrained=True)[0].total == total <= 100_000


def test_minilm_l6_learns_agnews_from_real_rows(tmp_path):
    """900 real rows, one epoch on the real pretrained encoder: far above chance (0.25) on validation."""
    config = _write_config(tmp_path, shared_path("models", "all-MiniLM-L6-v2"),
                           shared_path("data", "ag_news", "train_subset.csv"))
    assert main(["train", "--config", str(config)]) == 0
    run = tmp_path / "runs" / "real"
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["rows"] == 100
    assert evaluation["accuracy"] > 0.6
    report = json.loads((run / "data_report.json").read_text())
    assert report["train_rows_subsampled_to"] == 900 and report["train_rows"] == 800

    # evaluate on the first rows of the real test split, read with the run's own CSV options
    out = tmp_path / "test_eval.json"
    assert main(["evaluate", str(run), "--data", str(shared_path("data", "ag_news", "test.csv")),
                 "--output", str(out), "--batch-size", "128"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["rows"] == 7600
    assert [metrics["per_class"][n]["support"] for n in metrics["label_names"]] == [1900] * 4
    assert metrics["accuracy"] > 0.6


def test_pooler_weights_are_saved_with_the_adapter(tmp_path):
    config = _write_config(tmp_path, shared_path("models", "paraphrase-MiniLM-L3-v2"),
                           shared_path("data", "ag_news", "train_subset.csv"), extra="  max_steps: 3")
    assert main(["train", "--config", str(config)]) == 0
    weights = load_file(str(tmp_path / "runs" / "real" / "adapter" / "adapter_model.safetensors"))
    assert any("pooler" in name for name in weights)
    budget = json.loads((tmp_path / "runs" / "real" / "budget.json").read_text())
    assert budget["fresh_modules"] == ["bert.pooler.dense"]


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception),
                                         ("false", pytest.skip.Exception)])
def test_missing_shared_is_a_skip_for_a_developer_and_a_failure_under_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no-such-folder-in-shared not found: integration tests need ../shared"):
        shared_path("no-such-folder-in-shared")
