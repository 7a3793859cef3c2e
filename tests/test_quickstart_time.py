"""benchmarks/quickstart_time.py: its arguments, the command it times and the JSON it writes (without training)."""

import json
import re
import sys
import time
from pathlib import Path

from benchmarks import common as bc
from benchmarks import quickstart_time as qt


def test_defaults_time_the_quickstart_config_into_a_dated_result():
    args = qt.parse_args([])
    assert Path(args.config) == bc.REPO / "configs/quickstart.yaml"
    assert Path(args.out) == bc.REPO / f"benchmarks/results/quickstart-{time.strftime('%Y-%m-%d')}.json"
    assert qt.parse_args(["--out", "x.json", "--threads", "2", "train.epochs=2"]).overrides == ["train.epochs=2"]


def test_the_timed_command_is_the_readmes_quiet_and_into_the_given_folder(tmp_path):
    command = qt.train_command("configs/quickstart.yaml", tmp_path, "qs-timed", ["train.seed=1"])
    assert command[-7:] == ["train", "--config", "configs/quickstart.yaml", "train.quiet=true",
                            "train.run_name=qs-timed", f"train.output_dir={tmp_path}", "train.seed=1"]
    assert "textlora" in command[0] or command[1:3] == ["-m", "textlora.cli"]


def test_the_result_has_the_headline_figures_and_where_they_were_measured(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/quickstart_time.py"])
    summary = {"test_accuracy": 0.9, "validation_accuracy": 0.91, "train_seconds": 100.0, "train_samples_per_s": 150.0,
               "precision": "fp32", "base_dtype": "bf16", "memory_allocator": "tcmalloc", "config": "configs/q.yaml"}
    record = qt.result_record(summary, {"wall_s": 130.5, "peak_rss_mb": 900.0, "returncode": 0}, ["textlora"], None)
    assert set(qt.RESULT_KEYS) <= set(record)
    assert record["process_wall_s"] == 130.5 and record["peak_rss_mb"] == 900.0 and record["allocator"] == "tcmalloc"
    assert record["cpu_cores"] >= 1 and record["versions"]["torch"]
    assert record["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", record["git_commit"])
    json.dumps(record)


def test_committed_results_have_the_shape():
    for path in (bc.REPO / "benchmarks/results").glob("quickstart-*.json"):
        record = json.loads(path.read_text())
        assert set(qt.RESULT_KEYS) <= set(record), path
        assert 0.25 < record["test_accuracy"] <= 1.0, path
