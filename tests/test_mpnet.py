"""MPNet (attention.attn.q/k/v/o, one relative-position bias for all layers): exact counts of all-mpnet-base-v2 on
the meta device, and every command on a tiny MPNet, from a run folder whose base model has moved (--base-model)."""

import csv
import json
import re
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer, MPNetConfig, MPNetModel, MPNetTokenizer

from textlora.model.budget import count_model, enforce_budget
from textlora.cli import main
from textlora.config import ModelConfig
from textlora.errors import BudgetError, ConfigError
from textlora.commands.plan import enumerate_candidates

from .conftest import AGNEWS_SMALL, write_tiny_config
from .test_lora_math import _SUGGESTION
from .test_plan import _candidate

# models/all-mpnet-base-v2/config.json (scripts/get-base-model.sh), the shape counted here without its weights.
ALL_MPNET_BASE_V2 = {
    "architectures": ["MPNetForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "eos_token_id": 2,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 514, "model_type": "mpnet",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1, "relative_attention_num_buckets": 32,
    "vocab_size": 30527,
}
HEAD = 768 * 768 + 768 + 768 * 4 + 4  # MPNetClassificationHead: dense + out_proj, as RoBERTa's
NAMES = ["World", "Sports", "Business", "Sci/Tech"]


@pytest.fixture(scope="module")
def mpnet_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpnet-shape") / "all-mpnet-base-v2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(ALL_MPNET_BASE_V2))
    return str(folder)


def test_all_mpnet_base_v2_counts_the_s1_and_s2_layouts_exactly(mpnet_base):
    s1 = ModelConfig(name_or_path=mpnet_base, lora_r=4, lora_alpha=96, target_modules=["query", "key", "value"])
    breakdown, built = count_model(s1, num_labels=4)
    assert breakdown.total == 814_852 and breakdown.fits
    assert dict(breakdown.groups) == {"lora: attention.attn.k": 73_728, "lora: attention.attn.q": 73_728,
                                      "lora: attention.attn.v": 73_728, "head: classifier": HEAD}
    assert built.target_modules == ["q", "k", "v"] and "adapts [q, k, v]" in built.targets_note
    assert "attention.attn.o (attention-output)" in built.targets_note
    # Named as MPNet names them: the same count, nothing to map.
    breakdown, built = count_model(replace(s1, target_modules=["q", "k", "v"]), num_labels=4)
    assert breakdown.total == 814_852 and built.targets_note is None
    s2 = ModelConfig(name_or_path=mpnet_base, lora_r=8, lora_alpha=32, target_modules=["query", "value"], layers="8-11")
    breakdown, _ = count_model(s2, num_labels=4)
    assert breakdown.total == 691_972 == 8 * (768 + 768) * 2 * 4 + HEAD
    # plan builds its target lists from the model's own names.
    candidates = enumerate_candidates(ModelConfig(name_or_path=mpnet_base), num_labels=4, ranks=(4, 8),
                                      heads=("standard",))
    s1_plan = _candidate(candidates, "standard", 4, "q,k,v", None)
    assert s1_plan.total == 814_852 and s1_plan.target_modules == ("q", "k", "v")
    assert _candidate(candidates, "standard", 8, "q,v", "8-11").total == 691_972
    ffn = _candidate(candidates, "standard", 4, "ffn-in,ffn-out", None)  # MPNet's output.dense is the FFN's alone
    assert ffn.target_modules == ("intermediate.dense", "output.dense") and ffn.lora == 4 * 12 * (2 * (768 + 3072))


def test_over_budget_suggestions_name_mpnets_modules_and_fit(mpnet_base):
    cfg = ModelConfig(name_or_path=mpnet_base, lora_r=8, target_modules=["query", "key", "value"])
    breakdown, built = count_model(cfg, num_labels=4)
    assert breakdown.total == 8 * 1536 * 3 * 12 + HEAD == 1_036_036 and not breakdown.fits
    with pytest.raises(BudgetError) as info:
        enforce_budget(cfg, breakdown, built)
    suggestions = _SUGGESTION.findall(str(info.value))
    assert suggestions and "adapts [q, k, v]" in str(info.value)
    for listed, r, layers, targets in suggestions:
        assert set(targets.split(",")) <= {"q", "k", "v"}, targets
        rebuilt = ModelConfig(name_or_path=mpnet_base, lora_r=int(r), target_modules=targets.split(","),
                              layers=None if layers == "null" else layers)
        assert count_model(rebuilt, num_labels=4)[0].total == int(listed.replace(",", "")) <= 1_000_000


def test_a_target_that_names_no_module_or_role_lists_mpnets_modules(mpnet_base):
    with pytest.raises(ConfigError) as info:
        count_model(ModelConfig(name_or_path=mpnet_base, target_modules=["query", "qury"]), num_labels=4)
    message = str(info.value)
    assert "model.target_modules" in message and "'qury'" in message
    assert "attention.attn.q (query)" in message and "output.dense (ffn-out)" in message


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory, tiny_model_dir):
    """A 2-layer MPNet (hidden 32) saved as the real one is (encoder + pooler, no head), with an MPNet tokenizer
    on the tiny BERT's word pieces, in ``ROOT/models/all-mpnet-base-v2``; returns ROOT."""
    root = tmp_path_factory.mktemp("mpnet-root")
    folder = root / "models" / "all-mpnet-base-v2"
    folder.mkdir(parents=True)
    pieces = [w for w in AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab() if not w.startswith("[")]
    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] + pieces)}  # <pad> = 1
    MPNetTokenizer(vocab=vocab).save_pretrained(folder)
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=130)
    torch.manual_seed(0)
    MPNetModel(config).save_pretrained(folder)
    return root


def _train(root, tmp_path, run_name, monkeypatch, capsys, *overrides):
    """Train on the tiny MPNet named by the relative path models/all-mpnet-base-v2, from ``root``."""
    monkeypatch.chdir(root)
    config = write_tiny_config(tmp_path / f"{run_name}.yaml", "models/all-mpnet-base-v2", tmp_path / "runs", run_name)
    assert main(["train", "--config", str(config), *overrides]) == 0
    return tmp_path / "runs" / run_name, capsys.readouterr().out


def test_params_and_plan_on_a_tiny_mpnet(tiny_mpnet, monkeypatch, capsys):
    monkeypatch.chdir(tiny_mpnet)
    assert main(["params", "model.name_or_path=models/all-mpnet-base-v2", "--json"]) == 0
    captured = capsys.readouterr()
    counts = json.loads(captured.out)
    assert counts["groups"] == {"lora: attention.attn.q": 8 * 64 * 2, "lora: attention.attn.v": 8 * 64 * 2,
                                "head: classifier": 32 * 32 + 32 + 32 * 4 + 4}
    assert "model.target_modules=[query, value] adapts [q, v]" in captured.err
    assert main(["plan", "--budget", "5000", "--model", "models/all-mpnet-base-v2", "--head", "standard",
                 "--targets", "query,key,value", "--ranks", "4"]) == 0
    captured = capsys.readouterr()
    assert "--targets query,key,value is q,k,v" in captured.err
    assert re.search(r"standard\s+4\s+q,k,v\s+all\s+1,536\s+1,188\s+2,724", captured.out), captured.out
    assert "target_modules:\n  - q\n  - k\n  - v\n" in captured.out


def test_train_top_layer_only_caches_the_prefix_and_restricts_the_last_layer(tiny_mpnet, tmp_path, monkeypatch,
                                                                              capsys):
    run, out = _train(tiny_mpnet, tmp_path, "top", monkeypatch, capsys, "model.layers=1", "train.max_steps=4")
    assert "[model] model.target_modules=[query, value] adapts [q, v]" in out
    assert "last layer runs for the first token only" in out
    assert "attention dropout among them: the model applies it as a module" in out
    assert "prefix cache on: embeddings + layers 0-0 run once per text" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["prefix_cache"]["start_layer"] == 1 and summary["trainable_params"] == 2 * 4 * 64 + 1_188
    budget = json.loads((run / "budget.json").read_text())
    assert budget["lora"]["target_modules"] == ["q", "v"] and budget["lora"]["layers"] == "1"
    # Validation on the cached prefix agrees with evaluate's uncached forward (fp16 cache: to a few 1e-3).
    assert main(["evaluate", str(run), "--data", str(AGNEWS_SMALL), "--precision", "fp32"]) == 0
    evaluated = json.loads((run / "evaluations" / "agnews_240.json").read_text())
    assert evaluated["rows"] == 242 and 0 <= evaluated["accuracy"] <= 1


def test_every_command_on_mpnet_from_a_moved_run_with_base_model(tiny_mpnet, tmp_path, monkeypatch, capsys):
    from .test_serve import running_server

    httpx = pytest.importorskip("httpx")
    run, out = _train(tiny_mpnet, tmp_path, "all", monkeypatch, capsys)
    assert "prefix cache off" in out and "last layer runs for the first token only" in out
    saved = (run / "config.yaml").read_text()
    assert "name_or_path: models/all-mpnet-base-v2\n" in saved  # as given, not this machine's absolute path
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] is None and sorted(adapter["target_modules"]) == ["q", "v"]
    assert main(["evaluate", str(run), "--data", str(AGNEWS_SMALL)]) == 0
    reference = json.loads((run / "evaluations" / "agnews_240.json").read_text())

    # Another machine: the run folder elsewhere, the base model in another folder, the current directory elsewhere.
    moved = shutil.copytree(run, tmp_path / "elsewhere" / "all")
    base = shutil.move(str(tiny_mpnet / "models" / "all-mpnet-base-v2"), str(tmp_path / "copy-of-mpnet"))
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["classify", str(moved), "Stocks fell"]) == 2
        error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "trained on base model 'models/all-mpnet-base-v2'" in error[0]
        assert "bash scripts/get-base-model.sh" in error[0] and "--base-model PATH_OR_ID" in error[0]
        flag = ["--base-model", base]
        assert main(["evaluate", str(moved), "--data", str(AGNEWS_SMALL), "--output", "eval.json", *flag]) == 0
        again = json.loads((tmp_path / "eval.json").read_text())
        assert again["accuracy"] == reference["accuracy"] and again["loss"] == pytest.approx(reference["loss"])
        assert main(["predict", str(moved), "--data", str(AGNEWS_SMALL), "--output", "sub.csv", *flag]) == 0
        with open(tmp_path / "sub.csv", newline="") as handle:
            assert len(list(csv.reader(handle))) == 1 + 242
        capsys.readouterr()
        assert main(["classify", str(moved), "Stocks fell on Wall Street", "--json", *flag]) == 0
        assert json.loads(capsys.readouterr().out)[0]["label"] in NAMES
        assert main(["report", str(moved)]) == 0 and (moved / "report" / "report.md").is_file()
        assert main(["export", str(moved), "--out", "exported", "--onnx", *flag]) == 0
        exported = json.loads((tmp_path / "exported" / "config.json").read_text())
        assert exported["model_type"] == "mpnet" and str(tmp_path) not in json.dumps(exported)
        assert json.loads((tmp_path / "exported" / "textlora.json").read_text())["onnx_max_abs_diff"] < 1e-4
        with running_server(moved, *flag, log_path=tmp_path / "serve.log") as url:
            served = httpx.post(f"{url}/v1/classify", json={"texts": ["Stocks fell on Wall Street"]}, timeout=30)
        assert served.status_code == 200, served.text
    finally:
        shutil.move(base, str(tiny_mpnet / "models" / "all-mpnet-base-v2"))
