"""data.eval_sets on the tiny model: extra sets scored at every evaluation, picking the best model, written to the run
folder, report, compare and trackers; and `evaluate` with several --data, never replacing another data's evaluation."""

import csv
import json
import shutil

import pandas as pd
import pytest

from textlora.cli import main
from textlora.config import load_config
from textlora.errors import ConfigError
from textlora.training.trackers import tracker_values

from .conftest import AGNEWS_SMALL, write_tiny_config

# Settings under which the tiny model's accuracy on the sets moves from one evaluation to the next.
OVERRIDES = ["optim.lr=5e-2", "train.epochs=4", "train.eval_every_steps=4"]
HEADLINE = {"loss", "accuracy", "macro_f1"}


def _rows():
    with AGNEWS_SMALL.open(newline="") as handle:
        return list(csv.reader(handle))


def _sets_yaml(folder) -> str:
    """Two eval sets: descriptions only, with a header row (``label,text``); titles only, read like train."""
    shifted = folder / "shifted.csv"
    with shifted.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        writer.writerows([row[0], row[2]] for row in _rows()[::3])
    return f"""  eval_sets:
    shifted: {{path: {shifted}, text_columns: [text], label_column: label}}
    titles: {{path: {AGNEWS_SMALL}, column_names: [label, title, description], text_columns: [title]}}
"""


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evals(run):
    return [line for line in _read_jsonl(run / "metrics.jsonl") if line["kind"] == "eval"]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Two trained tiny runs with eval sets: best by shifted/accuracy, and by min/accuracy with patience 3."""
    root = tmp_path_factory.mktemp("eval-sets")
    config = write_tiny_config(root / "sets.yaml", tiny_model_dir, root / "runs", data_extra=_sets_yaml(root))
    for name, extra in (("by-shifted", ["train.metric_for_best=shifted/accuracy"]),
                        ("by-min", ["train.metric_for_best=min/accuracy", "train.patience=3"])):
        assert main(["train", "--config", str(config), f"train.run_name={name}", *OVERRIDES, *extra]) == 0
    return {"shifted": root / "runs" / "by-shifted", "min": root / "runs" / "by-min", "root": root}


def test_eval_records_keep_the_validation_keys_and_add_each_set(runs):
    evals = _evals(runs["shifted"])
    assert len(evals) == 13  # 13 steps per epoch, 4 epochs, every 4 steps (and the last)
    for line in evals:
        assert set(line) == {"kind", "step", "epoch", "loss", "accuracy", "macro_f1", "best", "sets"}
        assert list(line["sets"]) == ["shifted", "titles"]
        for metrics in line["sets"].values():
            assert set(metrics) == HEADLINE and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    report = json.loads((runs["shifted"] / "data_report.json").read_text())
    assert report["eval_set_rows"] == {"shifted": 81, "titles": 242}


def test_the_named_sets_metric_picks_the_best_model(runs):
    run = runs["shifted"]
    evals = _evals(run)
    shifted = [line["sets"]["shifted"]["accuracy"] for line in evals]
    assert len(set(shifted)) > 1, "the sets' accuracy must move for this test to mean anything"
    best = shifted.index(max(shifted))  # the first evaluation that reached the highest value
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_metric"] == "shifted/accuracy"
    assert summary["best_step"] == evals[best]["step"] and summary["best_value"] == pytest.approx(max(shifted))
    assert [line["best"] for line in evals] == [v > max(shifted[:i], default=-1) for i, v in enumerate(shifted)]

    for name, rows in (("shifted", 81), ("titles", 242)):
        final = json.loads((run / "eval_sets" / f"{name}.json").read_text())
        assert (final["rows"], final["step"], final["split"]) == (rows, summary["best_step"], name)
        # The best model, evaluated again at the end, gives what was logged at its step.
        assert final["accuracy"] == pytest.approx(evals[best]["sets"][name]["accuracy"])
        assert summary["eval_sets"][name] == {key: final[key] for key in HEADLINE}
        predictions = pd.read_csv(run / "predictions" / "eval_sets" / f"{name}.csv", keep_default_na=False)
        assert len(predictions) == rows
        assert (predictions["label"] == predictions["pred"]).mean() == pytest.approx(final["accuracy"])
    assert json.loads((run / "eval_sets" / "titles.json").read_text())["data"] == str(AGNEWS_SMALL)


def test_min_accuracy_picks_the_best_worst_case_and_drives_early_stopping(runs):
    run = runs["min"]
    evals = _evals(run)
    lowest = [min(line["accuracy"], *(s["accuracy"] for s in line["sets"].values())) for line in evals]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_step"] == evals[lowest.index(max(lowest))]["step"]
    assert summary["best_value"] == pytest.approx(max(lowest))
    # patience 3: training stops at the third evaluation in a row that did not raise the lowest accuracy.
    best, stale, stop = None, 0, len(lowest) - 1
    for i, value in enumerate(lowest):
        best, stale = (value, 0) if best is None or value > best else (best, stale + 1)
        if stale == 3:
            stop = i
            break
    assert len(evals) == stop + 1 and summary["steps"] == evals[-1]["step"] < 52


@pytest.mark.parametrize("overrides, fragments", [
    (["train.metric_for_best=shifted/accuracy"], ["train.metric_for_best", "shifted", "data.eval_sets has no sets"]),
    (["train.metric_for_best=shifted/acc"], ["train.metric_for_best", "SET/accuracy", "min/accuracy"]),
    (["train.metric_for_best=min/loss"], ["combinations are over accuracy or macro_f1"]),
    (["train.metric_for_best=mean/accuracy"], ["data.eval_sets", "which is empty"]),
    (["data.eval_sets={validation: {path: a.csv}}"], ["data.eval_sets.validation", "reserved"]),
    (["data.eval_sets={min: {path: a.csv}}"], ["data.eval_sets.min", "reserved"]),
    (["data.eval_sets={.hidden: {path: a.csv}}"], ["data.eval_sets..hidden", "start with '.'"]),
])
def test_bad_eval_sets_and_metric_for_best_are_config_errors(overrides, fragments):
    with pytest.raises(ConfigError) as caught:
        load_config(None, tuple(overrides))
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_a_missing_set_or_foreign_labels_are_refused_before_the_run_folder(tiny_model_dir, tmp_path, capsys):
    config = write_tiny_config(tmp_path / "sets.yaml", tiny_model_dir, tmp_path / "runs",
                               data_extra=_sets_yaml(tmp_path))
    assert main(["train", "--config", str(config), "train.metric_for_best=shifted_v2/accuracy"]) == 2
    err = capsys.readouterr().err
    assert "eval set 'shifted_v2', but data.eval_sets has shifted, titles" in err and err.count("error:") == 1
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("label,text\n1,one\n7,seven\n")
    assert main(["train", "--config", str(config), f"data.eval_sets.shifted.path={foreign}"]) == 2
    err = capsys.readouterr().err
    assert "data.eval_sets.shifted" in err and "outside the run's classes: 7 (line 3)" in err
    assert not (tmp_path / "runs").exists()


def test_report_has_a_robustness_section_per_set(runs):
    run = runs["shifted"]
    text = (run / "report" / "report.md").read_text()
    assert "| step | validation loss | accuracy | macro-F1 | shifted accuracy | titles accuracy | best so far |" in text
    section = text[text.index("## Robustness"):text.index("## Parameter budget")]
    for name in ("shifted", "titles"):
        final = json.loads((run / "eval_sets" / f"{name}.json").read_text())
        assert f"| {name} | {final['rows']:,} | {final['accuracy']:.4f} | {final['macro_f1']:.4f} |" in section
        predictions = pd.read_csv(run / "predictions" / "eval_sets" / f"{name}.csv", keep_default_na=False)
        errors = int((predictions["label"] != predictions["pred"]).sum())
        assert f"### Hardest misclassified examples (eval set {name}: {errors:,} errors, the 10 most" in section
    recall = json.loads((run / "eval_sets" / "shifted.json").read_text())["per_class"]["World"]["recall"]
    assert "| class | validation | shifted | titles |" in section and "| World | " in section
    assert f"{recall:.4f}" in section.split("| World | ")[1].splitlines()[0]


def test_compare_tabulates_each_sets_accuracy(runs, capsys):
    out = runs["root"] / "compare"
    assert main(["compare", str(runs["shifted"]), str(runs["min"]), "--output", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["runs"]
    for row, run in zip(rows, (runs["shifted"], runs["min"])):
        summary = json.loads((run / "summary.json").read_text())
        assert row["shifted/accuracy"] == summary["eval_sets"]["shifted"]["accuracy"]
        assert row["titles/accuracy"] == summary["eval_sets"]["titles"]["accuracy"]
    assert "| shifted acc | titles acc |" in (out / "compare.md").read_text()


def test_trackers_get_each_set_flattened():
    record = {"kind": "eval", "step": 4, "loss": 1.2, "accuracy": 0.5, "macro_f1": 0.4, "best": True,
              "sets": {"shifted": {"loss": 1.3, "accuracy": 0.25, "macro_f1": 0.2}}}
    assert tracker_values(record) == {"eval/loss": 1.2, "eval/accuracy": 0.5, "eval/macro_f1": 0.4,
                                      "eval/shifted/loss": 1.3, "eval/shifted/accuracy": 0.25,
                                      "eval/shifted/macro_f1": 0.2}


def test_evaluate_several_sets_prints_one_column_each(runs, tmp_path, capsys):
    run = runs["shifted"]
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    shutil.copy(AGNEWS_SMALL, first)
    second.write_text("".join(AGNEWS_SMALL.read_text().splitlines(keepends=True)[:100]))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(first), "--data", str(second)]) == 0
    out = capsys.readouterr().out
    results = [json.loads((run / "evaluations" / f"{n}.json").read_text()) for n in ("first", "second")]
    assert [r["rows"] for r in results] == [242, 100]
    lines = out.splitlines()
    assert lines[0].split() == ["first", "second"]
    assert lines[2].split() == ["accuracy", f"{results[0]['accuracy']:.4f}", f"{results[1]['accuracy']:.4f}"]
    assert f"wrote {run / 'evaluations' / 'second.json'}" in out


def test_evaluate_never_replaces_an_evaluation_of_other_data(runs, tmp_path, capsys):
    run = runs["min"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "test.csv", tmp_path / "b" / "test.csv"
    shutil.copy(AGNEWS_SMALL, a)
    b.write_text("".join(AGNEWS_SMALL.read_text().splitlines(keepends=True)[:100]))
    folder = run / "evaluations"

    assert main(["evaluate", str(run), "--data", str(a)]) == 0
    assert main(["evaluate", str(run), "--data", str(b)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder / 'test-2.json'} ({folder / 'test.json'} holds the evaluation of {a}, which is kept)" in out
    first, second = (json.loads((folder / n).read_text()) for n in ("test.json", "test-2.json"))
    assert (first["data"], first["rows"]) == (str(a), 242) and (second["data"], second["rows"]) == (str(b), 100)

    # The same data again replaces its own file, whichever name it has.
    (folder / "test-2.json").write_text(json.dumps({**second, "rows": -1}))
    assert main(["evaluate", str(run), "--data", str(b)]) == 0
    assert main(["evaluate", str(run), "--data", str(a)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["test-2.json", "test.json"]
    assert json.loads((folder / "test-2.json").read_text())["rows"] == 100
    assert json.loads((folder / "test.json").read_text())["data"] == str(a)
