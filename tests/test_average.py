"""`textlora average` on the tiny model: the mean of kept checkpoints, uniform and greedy, as a new run folder."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import AGNEWS_SMALL, write_tiny_config
from textlora.cli import main
from textlora.commands.average import mean_state
from textlora.run.load import load_run

SETS = f"""  eval_sets:
    titles: {{path: {AGNEWS_SMALL}, column_names: [label, title, description], text_columns: [title]}}
  test: {{path: {AGNEWS_SMALL}, column_names: [label, title, description], text_columns: [title, description]}}
"""


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """A tiny run with an eval set and a test split, evaluated every 2 steps, keeping every checkpoint."""
    root = tmp_path_factory.mktemp("average")
    config = write_tiny_config(root / "avg.yaml", tiny_model_dir, root / "runs", data_extra=SETS)
    assert main(["train", "--config", str(config), "train.eval_every_steps=2", "train.keep_last=50",
                 "train.metric_for_best=mean/accuracy", "train.epochs=1"]) == 0
    return root / "runs" / "tiny"


def _steps(run):
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())


def test_uniform_average_is_the_parameter_mean_and_a_run_folder_evaluate_reads(run, tmp_path, capsys):
    steps = _steps(run)[-3:]
    out = tmp_path / "avg"
    assert main(["average", str(run), "--steps", ",".join(map(str, steps)), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "run's best" in printed and "average of 3" in printed and "test accuracy of the average" in printed

    states = [load_file(str(run / "checkpoints" / f"step-{s:07d}" / "trainable.safetensors")) for s in steps]
    expected = mean_state(states)
    loaded = dict(load_run(out, merge=False).model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(loaded[name].detach().float(), value)
    # A parameter the checkpoints disagree on really is averaged, not copied from one of them.
    name = next(n for n in expected if "lora_B" in n and not torch.equal(states[0][n], states[-1][n]))
    assert not torch.equal(expected[name], states[-1][name])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["averaged"]["steps"] == steps and summary["averaged"]["method"] == "uniform"
    assert summary["run_dir"] == str(out) and "titles" in summary["eval_sets"]
    evaluation = json.loads((out / "eval.json").read_text())
    assert summary["validation_accuracy"] == evaluation["accuracy"]
    # The folder is a run folder: evaluate on the test rows reproduces the test accuracy written at averaging.
    assert main(["evaluate", str(out), "--data", str(AGNEWS_SMALL)]) == 0
    again = json.loads((out / "evaluations" / f"{AGNEWS_SMALL.stem}.json").read_text())
    assert again["accuracy"] == pytest.approx(summary["test_accuracy"])
    # Its report names the checkpoints it is the mean of, not one step.
    assert main(["report", str(out)]) == 0
    assert f"uniform average (`textlora average`) of steps {'+'.join(map(str, steps))}" in \
        (out / "report" / "report.md").read_text()
    # The source run is untouched.
    assert not (run / "evaluations").exists() and "averaged" not in json.loads((run / "summary.json").read_text())
    # Loaded and saved again, the adapter lists each module it trains fully once, as the run's own does.
    trained, again = (json.loads((folder / "adapter" / "adapter_config.json").read_text())["modules_to_save"]
                      for folder in (run, out))
    assert again == trained and len(set(again)) == len(again)


def test_greedy_soup_starts_from_the_best_logged_checkpoint(run, tmp_path, capsys):
    out = tmp_path / "soup"
    assert main(["average", str(run), "--greedy", "--metric", "mean/accuracy", "--no-test", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert "test_accuracy" not in summary and not (out / "test_eval.json").exists()  # --no-test
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["kind"] == "eval"]
    first = max(evals, key=lambda e: (e["accuracy"] + e["sets"]["titles"]["accuracy"]) / 2)["step"]
    assert first in summary["averaged"]["steps"] and summary["averaged"]["method"] == "greedy"
    assert printed.count("step ") >= len(_steps(run))  # every checkpoint tried is listed
    # It starts from the run's best and keeps a checkpoint only when the mean scores no worse.
    assert first == json.loads((run / "summary.json").read_text())["best_step"]
    assert summary["best_value"] >= summary["averaged"]["run_best_value"]


@pytest.mark.parametrize("args, words", [
    (["--steps", "2,99999"], ["no complete checkpoint at step 99999", "train.keep_last"]),
    (["--last", "2", "--steps", "2,4"], ["--steps and --last"]),
    (["--greedy", "--metric", "shifted/accuracy"], ["--metric", "shifted", "titles"]),
])
def test_bad_choices_are_refused_before_anything_is_written(run, tmp_path, capsys, args, words):
    out = tmp_path / "never"
    assert main(["average", str(run), *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_one_checkpoint_is_not_an_average(tiny_run, tmp_path, capsys):
    # tiny_run keeps train.keep_last=2 plus the best; leave one and averaging has nothing to average.
    assert main(["average", str(tiny_run), "--steps", str(_steps(tiny_run)[-1]), "--output", str(tmp_path / "x")]) == 2
    assert "at least two checkpoints" in capsys.readouterr().err


def test_a_folder_it_did_not_write_is_never_replaced(run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["average", str(run), "--last", "2", "--output", str(mine)]) == 2
    err = capsys.readouterr()
    assert "already exists" in err.err and "[data]" not in err.out  # refused before the model and data load
    assert (mine / "notes.txt").read_text() == "keep me"
    assert main(["average", str(run), "--last", "2", "--output", str(run)]) == 2


def test_the_python_api_averages_too(run, tmp_path, monkeypatch):
    import textlora

    monkeypatch.chdir(run.parent)
    out = textlora.average(run.name, last=2, output=tmp_path / "api")
    assert out == tmp_path / "api"
    averaged = json.loads((out / "summary.json").read_text())["averaged"]
    assert averaged["steps"] == _steps(run)[-2:]
    # The source as given, not this machine's absolute path: a published folder moves between machines.
    assert averaged["from"] == run.name
