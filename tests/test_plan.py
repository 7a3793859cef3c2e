"""`textlora plan` and light heads: exact counts (shipped configs included), YAML that trains, heads that reload."""

import json
from dataclasses import replace

import numpy as np
import pytest

from textlora.model.budget import count_model
from textlora.cli import main
from textlora.config import ModelConfig, load_config
from textlora.commands.plan import enumerate_candidates, layer_ranges, plan

from .conftest import AGNEWS_SMALL, REPO, write_tiny_config
from .report_helpers import tiny_bert_without_pooler_dir, tiny_roberta_dir, tiny_yaml


def _candidate(candidates, head, r, matched, layers):
    found = [c for c in candidates if (c.head, c.r, c.matched, c.layers) == (head, r, matched, layers)]
    assert len(found) == 1, (head, r, matched, layers)
    return found[0]


def test_plan_counts_equal_the_built_models_including_the_shipped_configs():
    candidates = enumerate_candidates(ModelConfig(), num_labels=4, ranks=(4, 8))
    for name, expected in (("agnews-roberta-r4-qkv.yaml", 814_852), ("agnews-roberta-r8-qv-top4-rmsprop.yaml", 691_972),
                           ("agnews-roberta-r8-qv-top4-adamw.yaml", 691_972)):
        cfg = load_config(REPO / "configs" / name).model
        matched = ",".join({"query": "q", "key": "k", "value": "v"}[t] for t in cfg.target_modules)
        assert _candidate(candidates, "standard", cfg.lora_r, matched, cfg.layers).total == expected, name
    # Light head: roberta-base's 593,668-parameter head becomes 768 x 4 + 4.
    light = _candidate(candidates, "linear", 4, "q,k,v", None)
    assert light.head_params == 3_076 and light.total == 814_852 - 593_668 + 3_076
    built, _ = count_model(light.model_config(ModelConfig()), num_labels=4)
    assert built.total == light.total and built.groups["head: classifier"] == 3_076
    # "output.dense" also matches attention.output.dense: the plan says so instead of hiding it.
    ffn = _candidate(candidates, "standard", 4, "o,ffn-in,ffn-out", None)
    assert ffn.lora == 4 * 12 * ((768 + 768) + (768 + 3072) + (3072 + 768))


def test_layer_ranges():
    assert layer_ranges(12) == [None, "4-11", "6-11", "8-11", "9-11", "11"]
    assert layer_ranges(2) == [None, "1"]


def test_plan_cli_reproduces_a_shipped_count(capsys):
    assert main(["plan", "--budget", "1000000", "--ranks", "4", "--head", "standard", "--targets", "query,key,value",
                 "--top", "20"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if " q,k,v " in line and " all " in line]
    assert row and "814,852" in row[0] and "81.5%" in row[0]
    assert main(["plan", "--budget", "100000", "--head", "standard"]) == 2  # the head alone is 593,668
    assert "no configuration of roberta-base fits a budget of 100,000" in capsys.readouterr().err


@pytest.fixture(scope="module")
def roberta_dir(tiny_model_dir, tmp_path_factory):
    return tiny_roberta_dir(tmp_path_factory.mktemp("tiny-roberta"), tiny_model_dir)


def test_plan_picks_a_light_head_and_its_yaml_trains_and_reloads(roberta_dir, tmp_path, capsys):
    base = tiny_yaml(tmp_path / "base.yaml", roberta_dir, tmp_path / "runs", run_name="light")
    planned = tmp_path / "planned.yaml"
    # Budget 1,300: the stock RoBERTa head (32x32 + 32 + 32x4 + 4 = 1,188) leaves 112 for LoRA; the linear head
    # (132) leaves 1,168, enough for r=1 on every Linear of both layers.
    assert main(["plan", "--budget", "1300", "--config", str(base), "--num-labels", "4", "--output", str(planned)]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[1].split()
    assert first[:5] == ["1", "linear", "1", "q,k,v,o,ffn-in,ffn-out", "all"] and first[7] == "1,028"
    config = load_config(planned)
    assert config.model.head == "linear" and config.model.max_trainable_params == 1300
    assert config.data.train.path == str(AGNEWS_SMALL)  # the rest of the base config is kept

    assert main(["train", "--config", str(planned)]) == 0
    run = tmp_path / "runs" / "light"
    budget = json.loads((run / "budget.json").read_text())
    assert budget["total"] == 1028 and budget["groups"]["head: classifier"] == 132
    # evaluate rebuilds the linear head from the run's config: same accuracy as training measured on test.
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--data", str(AGNEWS_SMALL), "--output", str(out_json)]) == 0
    evaluated = json.loads(out_json.read_text())
    trained = json.loads((run / "test_eval.json").read_text())
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]
    assert evaluated["loss"] == pytest.approx(trained["loss"], abs=1e-4)


def test_linear_head_on_bert_replaces_the_pooler(tiny_model_dir):
    from textlora.model.heads import FirstToken
    from textlora.model.build import build_model

    built = build_model(ModelConfig(name_or_path=str(tiny_model_dir), lora_r=4, head="linear"), None, num_labels=4)
    base = built.model.get_base_model()
    assert isinstance(base.bert.pooler, FirstToken) and built.fresh_modules == []
    import torch

    ids = torch.tensor([[2, 10, 11, 3]])
    hidden = base.bert(input_ids=ids).last_hidden_state
    classifier = built.model.base_model.model.classifier
    base.eval()
    np.testing.assert_allclose(base(input_ids=ids).logits.detach().numpy(),
                               classifier(hidden[:, 0]).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def no_pooler_dir(tiny_model_dir, tmp_path_factory):
    return tiny_bert_without_pooler_dir(tmp_path_factory.mktemp("tiny-bert-no-pooler"), tiny_model_dir)


def _train_time_groups(model_cfg):
    """Trainable groups as train counts them: the model built from the checkpoint, fresh modules found by loading."""
    from textlora.model.budget import trainable_breakdown
    from textlora.model.build import build_model

    built = build_model(model_cfg, None, pretrained=True, num_labels=4)
    return dict(trainable_breakdown(built, model_cfg.max_trainable_params).groups)


@pytest.mark.parametrize("shard", [False, True], ids=["one-file", "sharded"])
def test_params_counts_a_fresh_pooler_from_the_safetensors_headers_as_train_does(
        no_pooler_dir, tiny_model_dir, tmp_path, capsys, shard):
    model_dir = no_pooler_dir if not shard else \
        tiny_bert_without_pooler_dir(tmp_path / "sharded", tiny_model_dir, shard=True)
    assert (model_dir / "model.safetensors.index.json").is_file() == shard
    config = write_tiny_config(tmp_path / "tiny.yaml", model_dir, tmp_path / "runs")
    assert main(["params", "--config", str(config), "--json"]) == 0  # meta device: no weights read
    counts = json.loads(capsys.readouterr().out)
    # LoRA r=4 on q/v of 2 layers: 4 * (32 + 32) * 2 * 2; head 32 * 4 + 4; the fresh pooler 32 * 32 + 32.
    assert counts["groups"]["fresh: bert.pooler.dense"] == 1_056 and "note" not in counts
    assert counts["total"] == 1_024 + 132 + 1_056
    assert counts["groups"] == _train_time_groups(load_config(config).model)
    # The linear head replaces the pooler: nothing fresh is left, here as in training.
    light = load_config(config, ("model.head=linear",)).model
    assert count_model(light, num_labels=4)[0].groups == _train_time_groups(light)


def test_plan_with_a_fresh_pooler_picks_what_train_accepts(no_pooler_dir, tmp_path, capsys):
    base = write_tiny_config(tmp_path / "base.yaml", no_pooler_dir, tmp_path / "runs", run_name="planned")
    planned = tmp_path / "planned.yaml"
    # Budget 1,100: the standard head (132) and the fresh pooler (1,056) alone are over; the linear head is not.
    assert main(["plan", "--budget", "1100", "--config", str(base), "--output", str(planned)]) == 0
    out = capsys.readouterr().out
    rows = out.split("\n\n")[0].splitlines()
    rows = [row for row in rows if row.split()[0].isdigit()]
    assert rows and all(row.split()[1] == "linear" for row in rows), out
    assert "note:" not in out
    total = int(rows[0].split()[7].replace(",", ""))
    assert main(["train", "--config", str(planned), "train.epochs=1", "train.max_steps=1"]) == 0
    assert json.loads((tmp_path / "runs" / "planned" / "budget.json").read_text())["total"] == total


def test_without_readable_weight_names_the_counts_say_fresh_modules_are_not_counted(capsys):
    # roberta-base here is the bundled architecture: no checkpoint to read, so what it lacks is unknown.
    assert main(["params", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert "fresh modules not counted" in counts["note"] and "--pretrained" in counts["note"]
    assert main(["params"]) == 0
    assert "note: fresh modules not counted" in capsys.readouterr().out
    assert main(["plan", "--budget", "1000000", "--ranks", "4", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "note: fresh modules not counted" in out and "--pretrained" in out


def _shortlist_rows(out):
    return [row.split() for row in out.split("\n\n")[0].splitlines() if row.split() and row.split()[0].isdigit()]


def test_plan_suggests_only_what_would_make_something_fit(tiny_model_dir, no_pooler_dir, capsys):
    # --head linear given: suggesting it again would change nothing; only the budget can.
    # (Tiny BERT: the smallest is the linear head's 132 + r=1 on one layer's query or value, 64.)
    assert main(["plan", "--budget", "150", "--model", str(tiny_model_dir), "--head", "linear"]) == 2
    err = capsys.readouterr().err
    assert "fits a budget of 150" in err and "raise --budget to at least 196" in err and "--head" not in err
    # --head standard on BERT with its pooler: the linear head counts the same, so it would not help either.
    assert main(["plan", "--budget", "150", "--model", str(tiny_model_dir), "--head", "standard"]) == 2
    err = capsys.readouterr().err
    assert "raise --budget to at least 196" in err and "--head" not in err
    # Without its pooler the standard head needs a fresh one (1,056 more): there the linear head is the fix.
    assert main(["plan", "--budget", "1100", "--model", str(no_pooler_dir), "--head", "standard"]) == 2
    err = capsys.readouterr().err
    assert "drop --head standard (the linear head's smallest configuration has 196)" in err
    # Ranks the search left out are suggested only when they fit.
    assert main(["plan", "--budget", "200", "--model", str(tiny_model_dir), "--ranks", "4,8"]) == 2
    assert "add rank 1 to --ranks (its smallest configuration has 196)" in capsys.readouterr().err


def test_plan_lists_no_row_twice_when_both_heads_count_the_same(tiny_model_dir, capsys):
    # BERT: the linear head replaces the (frozen) pooler and keeps the stock classifier, so both heads count the
    # same; the shortlist keeps one row per configuration, the standard head's.
    assert main(["plan", "--budget", "100000", "--model", str(tiny_model_dir), "--top", "50"]) == 0
    rows = _shortlist_rows(capsys.readouterr().out)
    numbers = [tuple(row[2:]) for row in rows]  # r, LoRA on, layers, counts
    assert rows and len(numbers) == len(set(numbers)) and {row[1] for row in rows} == {"standard"}


def test_plan_output_never_replaces_its_config(tiny_model_dir, tmp_path, capsys):
    config = write_tiny_config(tmp_path / "base.yaml", tiny_model_dir, tmp_path / "runs")
    before = config.read_text()
    assert main(["plan", "--budget", "100000", "--config", str(config), "--output", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"--output {config} is the input {config}" in err and config.read_text() == before


@pytest.mark.parametrize("pick", [1, 2, 5])
def test_plans_pick_counts_as_built_and_its_yaml_loads_back(pick, tmp_path, capsys):
    """What plan once checked at run time: the pick, built for real on the meta device and counted by the
    train-time code path, has the total plan printed, and the printed YAML loads as the picked config."""
    planned = tmp_path / "planned.yaml"
    ranked = plan(1_000_000, ranks=(2, 4), pick=pick, output=planned)
    capsys.readouterr()
    chosen = ranked[pick - 1]
    expected = chosen.model_config(replace(ModelConfig(), max_trainable_params=1_000_000))
    breakdown, _ = count_model(expected, num_labels=4)
    assert breakdown.total == chosen.total
    assert load_config(planned).model == expected
