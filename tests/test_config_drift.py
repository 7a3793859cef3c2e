"""scripts/config_drift.py: whether a kept run folder still matches the config file it was trained from."""

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _drift_module():
    spec = importlib.util.spec_from_file_location("config_drift", REPO / "scripts" / "config_drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_matches_its_config_and_an_edit_since_is_named(tiny_run, tmp_path, monkeypatch, capsys):
    drift = _drift_module()
    config = tiny_run.parent.parent / "tiny.yaml"
    assert drift.main([str(config), str(tiny_run)]) == 0 and capsys.readouterr().out == ""
    # The same config written with a relative data path (the run records it absolute), then edited.
    data = Path(next(line for line in config.read_text().splitlines() if "train: {path:" in line)
                .split("path: ")[1].split(",")[0])
    monkeypatch.chdir(data.parent)
    edited = tmp_path / "edited.yaml"
    edited.write_text(config.read_text().replace(str(data), os.path.basename(data)).replace("max_length: 48",
                                                                                         "max_length: 64"))
    assert drift.main([str(edited), str(tiny_run)]) == 1
    assert capsys.readouterr().out.splitlines() == ["model.max_length: 48 -> 64"]
