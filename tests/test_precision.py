"""Precision: how auto resolves per device, and inference following the precision the run trained in."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from textlora.model import precision as prec
from textlora.cli import main
from textlora.errors import ConfigError
from textlora.run.load import load_run

from .conftest import AGNEWS_SMALL, write_tiny_config


def test_auto_on_cpu_is_bf16_only_with_amx(monkeypatch):
    for has_amx, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(prec, "cpu_has_amx", lambda has=has_amx: has)
        assert prec.resolve_precision("auto", "cpu") == expected
    assert prec.resolve_precision("auto", "mps") == "no"
    assert prec.resolve_precision("bf16", "cpu") == "bf16" and prec.resolve_precision("no", "cuda") == "no"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        prec.resolve_precision("fp16", "cpu")
    # A run trained in fp16 on a GPU is still usable on a CPU: inference falls back to fp32 there.
    assert prec.inference_precision("run", "fp16", "cpu") == "no"
    assert prec.inference_precision("fp32", "auto", "cuda") == "no"
    assert prec.inference_precision("bf16", "no", "cpu") == "bf16"


def test_autocast_factory_runs_matmuls_in_the_precision_asked():
    weight = torch.randn(8, 8)
    with prec.autocast_factory(torch.device("cpu"), "bf16")():
        assert (torch.ones(2, 8) @ weight).dtype == torch.bfloat16
    with prec.autocast_factory(torch.device("cpu"), "no")():
        assert (torch.ones(2, 8) @ weight).dtype == torch.float32


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("bf16")
    config = write_tiny_config(folder / "tiny.yaml", tiny_model_dir, folder / "runs", run_name="bf16",
                               extra="  mixed_precision: bf16\n")
    assert main(["train", "--config", str(config)]) == 0
    return folder / "runs" / "bf16"


def test_inference_follows_the_run_precision_unless_told(bf16_run, tmp_path):
    assert json.loads((bf16_run / "summary.json").read_text())["precision"] == "bf16"
    run, fp32_run = load_run(bf16_run, device="cpu"), load_run(bf16_run, device="cpu", precision="fp32")
    assert (run.precision, fp32_run.precision) == ("bf16", "no")

    # Inference in the run's precision is what validation ran in training (there unmerged, here merged).
    saved = pd.read_csv(bf16_run / "predictions" / "validation.csv")
    probs_columns = [c for c in saved.columns if c.startswith("prob_")]
    bf16_probs, _ = run.probabilities(saved["text"].tolist(), 32)
    fp32_probs, _ = fp32_run.probabilities(saved["text"].tolist(), 32)
    np.testing.assert_allclose(bf16_probs, saved[probs_columns].to_numpy(), atol=2e-2)
    np.testing.assert_allclose(bf16_probs, fp32_probs, atol=2e-2)
    assert not np.array_equal(bf16_probs, fp32_probs)  # within bf16 rounding, not the same numbers

    output = tmp_path / "eval.json"
    assert main(["evaluate", str(bf16_run), "--data", str(AGNEWS_SMALL), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["precision"] == "bf16"
    assert main(["evaluate", str(bf16_run), "--data", str(AGNEWS_SMALL), "--output", str(output),
                 "--precision", "fp32"]) == 0
    assert json.loads(output.read_text())["precision"] == "fp32"
