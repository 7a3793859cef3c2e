"""`textlora average` on the tiny model: the mean of kept checkpoints, uniform and greedy, as a new run folder."""

import json
import shutil

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


@pytest.fixture(scope="module")
def other_lr(run):
    """The same recipe as ``run`` at another learning rate: its checkpoints may join ``run``'s soup."""
    config = run.parent.parent / "avg.yaml"
    assert main(["train", "--config", str(config), "train.eval_every_steps=2", "train.keep_last=50",
                 "train.metric_for_best=mean/accuracy", "train.epochs=1", "optim.lr=2e-2",
                 "train.run_name=tiny-lr2e-2"]) == 0
    return run.parent / "tiny-lr2e-2"


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


def test_one_named_checkpoint_is_written_as_it_is(run, tmp_path, capsys):
    # A checkpoint the run did not choose (say, the best on another metric) becomes a run folder of its own.
    step = _steps(run)[1]
    out = tmp_path / "one"
    assert main(["average", str(run), "--steps", str(step), "--output", str(out)]) == 0
    assert f"one checkpoint: step {step}" in capsys.readouterr().out
    saved = load_file(str(run / "checkpoints" / f"step-{step:07d}" / "trainable.safetensors"))
    loaded = dict(load_run(out, merge=False).model.named_parameters())
    for name, value in saved.items():
        torch.testing.assert_close(loaded[name].detach().float(), value)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["averaged"]["steps"] == [step] and summary["best_step"] == step


def test_a_run_left_with_one_checkpoint_is_not_averaged_by_default(run, tmp_path, capsys):
    one = tmp_path / "one-kept"
    shutil.copytree(run, one)
    for folder in sorted((one / "checkpoints").iterdir())[:-1]:
        shutil.rmtree(folder)
    assert main(["average", str(one), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "at least two checkpoints" in err and "--steps" in err
    assert not (tmp_path / "x").exists()


def test_a_folder_it_did_not_write_is_never_replaced(run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["average", str(run), "--last", "2", "--output", str(mine)]) == 2
    err = capsys.readouterr()
    assert "already exists" in err.err and "[data]" not in err.out  # refused before the model and data load
    assert (mine / "notes.txt").read_text() == "keep me"
    assert main(["average", str(run), "--last", "2", "--output", str(run)]) == 2


def test_the_python_api_averages_too(run, other_lr, tmp_path, monkeypatch):
    import textlora

    monkeypatch.chdir(run.parent)
    out = textlora.average(run.name, last=2, output=tmp_path / "api")
    assert out == tmp_path / "api"
    averaged = json.loads((out / "summary.json").read_text())["averaged"]
    assert averaged["steps"] == _steps(run)[-2:]
    # The source as given, not this machine's absolute path: a published folder moves between machines.
    assert averaged["from"] == run.name
    pooled = textlora.average(run.name, last=2, with_runs=[other_lr.name], output=tmp_path / "api-pooled")
    assert json.loads((pooled / "summary.json").read_text())["averaged"]["with"] == {other_lr.name: _steps(other_lr)}


def test_with_pools_the_checkpoints_of_a_run_of_the_same_recipe(run, other_lr, tmp_path, capsys):
    out = tmp_path / "pooled"
    assert main(["average", str(run), "--last", "2", "--with", str(other_lr), "--output", str(out), "--no-test"]) == 0
    averaged = json.loads((out / "summary.json").read_text())["averaged"]
    assert averaged["steps"] == _steps(run)[-2:] and averaged["with"] == {str(other_lr): _steps(other_lr)}
    # The model written is the mean over both runs' checkpoints, each checkpoint counted once.
    folders = [run / "checkpoints" / f"step-{s:07d}" for s in averaged["steps"]] + \
        [other_lr / "checkpoints" / f"step-{s:07d}" for s in averaged["with"][str(other_lr)]]
    expected = mean_state([load_file(str(f / "trainable.safetensors")) for f in folders])
    loaded = dict(load_run(out, merge=False).model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(loaded[name].detach().float(), value)
    assert main(["report", str(out)]) == 0
    assert f"{other_lr} steps " in (out / "report" / "report.md").read_text()


def test_greedy_with_another_run_tries_the_best_logged_candidates_of_both(run, other_lr, tmp_path, capsys):
    out = tmp_path / "pooled-soup"
    assert main(["average", str(run), "--greedy", "--with", str(other_lr), "--top", "3", "--output", str(out),
                 "--no-test"]) == 0
    printed = capsys.readouterr().out
    tried = printed.split("greedy: ")[1].splitlines()[0].split("; ")
    assert len(tried) == 3  # --top 3
    logged = {}
    for source, label in ((run, "step"), (other_lr, f"{other_lr.name} step")):
        for line in (source / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "eval":
                logged[f"{label} {record['step']}"] = (record["accuracy"] + record["sets"]["titles"]["accuracy"]) / 2
    best3 = sorted(logged.values(), reverse=True)[:3]
    assert sorted((logged[t.rsplit(" ", 2)[0]] for t in tried), reverse=True) == best3
    # The soup starts from the best of them and keeps a candidate only when the mean scores no worse.
    first = float(tried[0].rsplit("(", 1)[1].rstrip(")"))
    assert "kept" in tried[0] and json.loads((out / "summary.json").read_text())["best_value"] >= first - 1e-4


def test_with_at_steps_takes_only_those_checkpoints_of_the_other_run(run, other_lr, tmp_path, capsys):
    out = tmp_path / "at-steps"
    mine, theirs = _steps(run)[-2:], _steps(other_lr)[-1:]
    assert main(["average", str(run), "--steps", ",".join(map(str, mine)), "--with",
                 f"{other_lr}@{theirs[0]}", "--output", str(out), "--no-test"]) == 0
    averaged = json.loads((out / "summary.json").read_text())["averaged"]
    # Recorded under the run's own name, without the @STEPS, so report and run_table name it as usual.
    assert averaged["steps"] == mine and averaged["with"] == {str(other_lr): theirs}
    folders = [run / "checkpoints" / f"step-{s:07d}" for s in mine] + \
        [other_lr / "checkpoints" / f"step-{s:07d}" for s in theirs]
    expected = mean_state([load_file(str(f / "trainable.safetensors")) for f in folders])
    loaded = dict(load_run(out, merge=False).model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(loaded[name].detach().float(), value)


@pytest.mark.parametrize("override, key", [("model.lora_r=2", "model.lora_r"), ("train.seed=7", "train.seed"),
                                           ("data.validation_size=30", "data.validation_size")])
def test_with_refuses_a_run_that_starts_elsewhere_or_is_scored_on_other_rows(run, tmp_path, capsys, override, key):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    config = (other / "config.yaml").read_text()
    name, value = override.split("=")
    section, field = name.split(".")
    lines = config.splitlines()
    inside = False
    for i, line in enumerate(lines):
        if not line.startswith(" "):
            inside = line.rstrip(":") == section
        elif inside and line.strip().startswith(f"{field}:") and line.startswith("  ") and not line.startswith("   "):
            lines[i] = f"  {field}: {value}"
    (other / "config.yaml").write_text("\n".join(lines) + "\n")
    out = tmp_path / "never"
    assert main(["average", str(run), "--with", str(other), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert key in err and "not the same recipe" in err, err
    assert not out.exists()


@pytest.mark.parametrize("args, words", [(["--top", "3"], ["--top", "--greedy"]),
                                         (["--with", "SELF"], ["is the run itself"]),
                                         (["--with", "NO_CHECKPOINTS"], ["keeps no complete checkpoint"]),
                                         (["--with", "OTHER@999"], ["no complete checkpoint at step 999"]),
                                         (["--with", "OTHER@last"], ["after the @", "not 'last'"]),
                                         (["--with", "OTHER@2", "--with", "OTHER@4"], ["names", "twice"])])
def test_with_and_top_misuse_is_refused(run, other_lr, tmp_path, capsys, args, words):
    published = tmp_path / "published"
    shutil.copytree(run, published, ignore=shutil.ignore_patterns("checkpoints"))
    args = [{"SELF": str(run), "NO_CHECKPOINTS": str(published)}.get(a, a).replace("OTHER", str(other_lr))
            for a in args]
    assert main(["average", str(run), *args, "--output", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
