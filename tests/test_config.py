"""Configuration: defaults < YAML < key=value overrides, and every bad value is a ConfigError naming its key."""

from pathlib import Path

import pytest

from textlora.config import RunConfig, load_config
from textlora.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path):
    defaults = RunConfig()
    path = _yaml(tmp_path, "model:\n  lora_r: 4\noptim:\n  lr: 1.0e-3\n  layer_lrs: {'0-3': 1.0e-5}\n")
    config = load_config(path, ("optim.lr=2e-3", "train.batch_size=7"))
    assert config.model.lora_r == 4                           # YAML over default 8
    assert config.optim.lr == pytest.approx(2e-3)             # override over YAML 1e-3
    assert config.train.batch_size == 7                       # override over default 32
    assert config.optim.layer_lrs == {"0-3": pytest.approx(1e-5)}
    assert config.model.lora_alpha == defaults.model.lora_alpha == 16.0  # untouched default
    assert config.model.target_modules == ["query", "value"]
    assert load_config(None, ()) == defaults


def test_yaml_nested_source_is_read(tmp_path):
    path = _yaml(tmp_path, "data:\n  train:\n    path: a.csv\n    column_names: [label, title, description]\n"
                           "    text_columns: [title, description]\n")
    config = load_config(path)
    assert config.data.train.path == "a.csv"
    assert config.data.train.column_names == ["label", "title", "description"]
    assert config.data.validation is None


@pytest.mark.parametrize("yaml_text, key", [
    ("bogus: 1\n", "bogus"),
    ("model:\n  lora_rank: 4\n", "lora_rank"),
    ("data:\n  train:\n    colums: [a]\n", "colums"),
])
def test_unknown_key_in_yaml_is_named(tmp_path, yaml_text, key):
    with pytest.raises(ConfigError, match=key):
        load_config(_yaml(tmp_path, yaml_text))


@pytest.mark.parametrize("override, key", [
    ("bogus=1", "bogus"),
    ("model.bogus_key=3", "model.bogus_key"),
    ("model.lora_r=abc", "model.lora_r"),
    ("train.batch_size=1.5", "train.batch_size"),
    ("optim.name=adam", "optim.name"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("model.lora_dropout=1.5", "model.lora_dropout"),
    ("model.lora_r=0", "model.lora_r"),
    ("model.layers=11-8", "model.layers"),
    ("model.layers=eight", "model.layers"),
    ("optim.layer_lrs.5-2=1e-4", "optim.layer_lrs.5-2"),
    ("data.validation_size=0", "data.validation_size"),
    ("data.label_base=2", "data.label_base"),
    ("train.metric_for_best=f1", "train.metric_for_best"),
    ("train.length_pool_batches=0", "train.length_pool_batches"),
])
def test_bad_override_names_its_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, (override,))
    assert f"'{key}'" in str(info.value)


def test_an_error_names_the_layer_it_comes_from_the_file_or_the_override(tmp_path):
    path = _yaml(tmp_path, "optim:\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ("optim.lrr=1e-3",))
    assert "in the override 'optim.lrr=1e-3'" in str(info.value) and str(path) not in str(info.value)
    bad = _yaml(tmp_path, "optim:\n  lrr: 1.0e-3\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, ("train.epochs=2",))
    assert f"in {bad}" in str(info.value) and "override" not in str(info.value)


def test_a_scalar_where_a_list_belongs_says_how_to_write_a_list():
    with pytest.raises(ConfigError) as info:
        load_config(None, ("data.label_names=World",))
    message = str(info.value)
    assert "'data.label_names'" in message and "data.label_names=[a,b]" in message and "AnyNode" not in message


def test_allowed_values_are_listed():
    with pytest.raises(ConfigError, match="adamw, rmsprop, sgd"):
        load_config(None, ("optim.name=adam",))


def test_fp32_spelled_as_yaml_reads_it(tmp_path):
    """`no` is accelerate's name for fp32, but YAML reads a bare `no` as false: every spelling means fp32."""
    for spelling in ("no", "'no'", "false", "fp32"):
        assert load_config(_yaml(tmp_path, f"train:\n  mixed_precision: {spelling}\n")).train.mixed_precision == "no"
    assert load_config(None, ("train.mixed_precision=no",)).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(None, ("train.mixed_precision=yes",))


def test_min_words_above_max_words():
    with pytest.raises(ConfigError, match="data.min_words.*data.max_words"):
        load_config(None, ("data.min_words=50", "data.max_words=10"))
    assert load_config(None, ("data.min_words=10", "data.max_words=10")).data.min_words == 10


def test_override_without_equals():
    with pytest.raises(ConfigError, match="'model.lora_r' is not of the form key=value"):
        load_config(None, ("model.lora_r",))


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; pass a YAML file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_yaml(tmp_path, "model: [unclosed\n  lora_r: 4\n"))
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(_yaml(tmp_path, "- model\n- data\n"))
    assert load_config(_yaml(tmp_path, "")) == RunConfig()  # an empty file is all defaults


SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_folder_is_not_empty():
    # Each shipped config reproduces a published figure; the upper bound keeps one-off variants out of configs/
    # (they are overrides on the command line, recorded in their run's config.yaml).
    assert 1 <= len(SHIPPED) <= 9, [p.name for p in SHIPPED]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_loads_and_says_how_to_run_it(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.data.train.path, "a shipped config names its training data"
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# textlora"), first_line
