"""``train.compile``: a compiled model trains, its run folder holds the trained adapter, and CPU runs are warned."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from textlora.cli import main
from textlora.speed import COMPILE_ON_CPU_NOTE

from .conftest import write_tiny_config


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch.compile's inductor needs a C++ compiler on CPU")
def test_a_compiled_model_trains_and_its_run_folder_is_usable(tmp_path, tiny_model_dir, capsys):
    # ~1 minute on 2 cores, most of it inductor compiling the tiny model's forward and backward.
    config = write_tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, tmp_path / "runs",
                               extra="  compile: true\n  max_steps: 3\n")
    assert main(["train", "--config", str(config)]) == 0
    assert f"[speed] {COMPILE_ON_CPU_NOTE}" in capsys.readouterr().out
    run = tmp_path / "runs" / "tiny"

    # The adapter is saved from the model inside the compile wrapper: plain peft names, trained values
    # (LoRA B starts at zero, so three steps at lr 5e-3 must have moved it).
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert not any("_orig_mod" in name for name in weights)
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)
    assert json.loads((run / "summary.json").read_text())["best_step"] == 3

    assert main(["classify", str(run), "Stocks fell on Wall Street", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in {"World", "Sports", "Business", "Sci/Tech"}
