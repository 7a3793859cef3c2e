"""Run folders are portable: the model is saved as the user gave it, the adapter names no base model, and a run
whose base model has moved is one clear error, or loads with --base-model."""

import json
import shutil
import sys

from textlora.cli import main

from .conftest import AGNEWS_SMALL, write_tiny_config


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _evaluate(run, output, *flags) -> int:
    return main(["evaluate", str(run), "--data", str(AGNEWS_SMALL), "--output", str(output), *flags])


def test_a_moved_run_and_base_model_load_with_base_model_and_fail_clearly_without(tiny_model_dir, tmp_path, capsys):
    base = shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny-bert")
    config = write_tiny_config(tmp_path / "tiny.yaml", base, tmp_path / "runs", extra="  max_steps: 3\n")
    assert main(["train", "--config", str(config)]) == 0
    run = tmp_path / "runs" / "tiny"
    assert _evaluate(run, tmp_path / "before.json") == 0
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] is None  # peft would have written this machine's absolute path

    moved = shutil.copytree(run, tmp_path / "other-machine" / "tiny")
    shutil.rmtree(run)
    new_base = shutil.move(str(base), str(tmp_path / "other-machine" / "tiny-bert"))
    assert _evaluate(moved, tmp_path / "nothing.json") == 2
    error = _error_line(capsys)
    assert f"trained on base model '{base}'" in error and f"there is no folder {base}" in error
    assert "--base-model PATH_OR_ID" in error and not (tmp_path / "nothing.json").exists()
    assert _evaluate(moved, tmp_path / "after.json", "--base-model", new_base) == 0
    before, after = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("before", "after"))
    assert after["accuracy"] == before["accuracy"] and after["confusion_matrix"] == before["confusion_matrix"]
    # A wrong --base-model is named as such.
    assert _evaluate(moved, tmp_path / "nothing.json", "--base-model", str(tmp_path / "no-such-model")) == 2
    assert "--base-model " + str(tmp_path / "no-such-model") in _error_line(capsys)


def test_a_pkg_model_is_saved_as_a_pkg_spec_and_resolved_where_the_run_is_loaded(tiny_model_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    package = tmp_path / "site" / "textlora_tiny_pkg"
    shutil.copytree(tiny_model_dir, package / "model")
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config = write_tiny_config(tmp_path / "tiny.yaml", "pkg:textlora_tiny_pkg/model", tmp_path / "runs",
                               extra="  max_steps: 3\n")
    assert main(["train", "--config", str(config)]) == 0
    run = tmp_path / "runs" / "tiny"
    assert "name_or_path: pkg:textlora_tiny_pkg/model\n" in (run / "config.yaml").read_text()
    assert _evaluate(run, tmp_path / "with-package.json") == 0

    # Another environment, without the package: the error says how to install it; --base-model still works.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "site")])
    monkeypatch.delitem(sys.modules, "textlora_tiny_pkg")
    assert _evaluate(run, tmp_path / "nothing.json") == 2
    error = _error_line(capsys)
    assert "'pkg:textlora_tiny_pkg/model'" in error and "pip install textlora-tiny-pkg --no-deps" in error
    assert "--base-model" in error
    copy = shutil.copytree(package / "model", tmp_path / "copy")
    assert _evaluate(run, tmp_path / "with-copy.json", "--base-model", str(copy)) == 0
    assert json.loads((tmp_path / "with-copy.json").read_text())["accuracy"] == \
        json.loads((tmp_path / "with-package.json").read_text())["accuracy"]


def test_a_published_run_has_no_checkpoints_and_evaluates_as_the_run_does(tiny_run, tmp_path, capsys):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "publish-run.sh"
    published = tmp_path / "published" / "tiny"
    done = subprocess.run(["bash", str(script), str(tiny_run), str(published)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tiny_run / "checkpoints").is_dir() and not (published / "checkpoints").exists()
    assert not (published / "predictions").exists() and (published / "adapter").is_dir()
    assert _evaluate(tiny_run, tmp_path / "run.json") == 0 and _evaluate(published, tmp_path / "pub.json") == 0
    assert json.loads((tmp_path / "run.json").read_text())["accuracy"] == \
        json.loads((tmp_path / "pub.json").read_text())["accuracy"]
    # Never replaces a folder, and refuses what is not a finished run.
    again = subprocess.run(["bash", str(script), str(tiny_run), str(published)], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
    empty = subprocess.run(["bash", str(script), str(tmp_path), str(tmp_path / "x")], capture_output=True, text=True)
    assert empty.returncode == 2 and "not a finished run folder" in empty.stderr and not (tmp_path / "x").exists()
    assert not list((tmp_path / "published").glob(".publish.*"))
