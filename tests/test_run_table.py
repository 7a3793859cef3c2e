"""benchmarks/run_table.py: results tables are read from run folders, never typed in."""

import json

import pytest

from textlora.model.precision import cpu_name


def test_run_table_reads_run_folders_and_names_what_each_changed(tiny_run, tmp_path, capsys):
    import shutil

    from benchmarks import run_table

    other = shutil.copytree(tiny_run, tmp_path / "lr-run")
    config = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(config.replace("lr: 0.005", "lr: 0.001"))
    summary = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**summary, "test_accuracy": 0.5, "cpu_threads": 2,
                                                    "train_seconds": 1800}))
    assert run_table.main([str(tiny_run), str(other), "--key", "t", "--title", "T", "--cost"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| run | changes from the first | validation |") and "CPU-hours" in rows[0]
    assert rows[2].startswith("| tiny | baseline |")
    # What trained it is recorded with the run, so costs taken on different machines are told apart.
    assert "compute" in rows[0] and f"{summary['precision']} on {cpu_name()} |" in rows[2]
    assert rows[3].startswith("| lr-run | optim.lr=0.001 |") and rows[3].endswith("| 1 |")  # 1800 s on 2 threads
    with pytest.raises(SystemExit):
        run_table.main([str(tmp_path), "--key", "t", "--title", "T"])
    assert "not finished run folders" in capsys.readouterr().err


def test_run_table_reads_a_committed_results_record_beside_a_run_folder(tiny_run, tmp_path, capsys):
    # A run whose folder is gone is kept as benchmarks/results/<run>-<date>.json; the table takes it too.
    from benchmarks import run_table

    record = tmp_path / "quickstart-2026-01-01.json"
    record.write_text(json.dumps({"config": "configs/quickstart.yaml", "train_rows": 9000, "epochs": 1,
                                  "trainable_params": 75268, "test_accuracy": 0.9, "validation_accuracy": 0.89,
                                  "eval_sets": {"shifted": {"accuracy": 0.915}}, "best_step": 250, "steps": 282,
                                  "train_seconds": 150.0, "wall_seconds": 168.0}))
    assert run_table.main([str(record), str(tiny_run), "--key", "t", "--title", "T", "--cost", "--no-changes"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[2].startswith("| quickstart | 0.89 | 0.915 | 0.9 |") and "| 9,000 | 1 | 250 of 282 | n/a | 3 min |" in rows[2]
    assert rows[3].startswith("| tiny |")


def test_a_run_kept_under_a_dated_folder_is_named_for_the_run(tiny_run, tmp_path):
    import shutil

    from benchmarks import run_table

    kept = shutil.copytree(tiny_run, tmp_path / "s2-layout-2026-12-04")
    assert run_table.read_run(kept)["run"] == "s2-layout"


def test_run_table_says_a_row_is_an_average_of_checkpoints(tiny_run, tmp_path, capsys):
    # `textlora average` keeps the source's config; its summary says which checkpoints were averaged.
    import shutil

    from benchmarks import run_table

    averaged = shutil.copytree(tiny_run, tmp_path / "tiny-avg")
    summary = json.loads((averaged / "summary.json").read_text())
    summary["averaged"] = {"steps": [10, 20, 30], "method": "greedy", "metric": "mean/accuracy"}
    (averaged / "summary.json").write_text(json.dumps(summary))
    assert run_table.main([str(tiny_run), str(averaged), "--key", "t", "--title", "T", "--cost"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "checkpoints=greedy average of steps 10+20+30 (chosen on mean/accuracy)" in rows[3]
    assert "| mean of 3 of " in rows[3]
