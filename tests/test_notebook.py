"""examples/agnews_lora.ipynb runs headless (nbclient) on a tiny model, so it cannot rot.

The notebook's cell tagged ``parameters`` names the config, the overrides and the data; as papermill
does, the test injects a cell after it that points them at the tiny model and the fixture rows in tmp.
"""

from __future__ import annotations

import csv

import pytest

from .conftest import AGNEWS_SMALL, REPO, write_tiny_config

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO / "examples" / "agnews_lora.ipynb"


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "strip the notebook's outputs"
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in code) == 1


def test_the_notebook_runs_on_a_tiny_model(tmp_path, tiny_model_dir):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    config = write_tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, tmp_path / "runs", run_name="notebook")
    submission = tmp_path / "submission.csv"
    injected = nbformat.v4.new_code_cell(
        f"# Injected parameters\nworkdir = {str(tmp_path)!r}\nconfig_path = {str(config)!r}\n"
        f"overrides = ['train.epochs=1']\ntest_data = {str(AGNEWS_SMALL)!r}\nsubmission = {str(submission)!r}",
        metadata={"tags": ["injected-parameters"]})
    at = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(at + 1, injected)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    shown = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert any("image/png" in out.get("data", {}) for out in shown), "the report's figures are shown inline"
    with submission.open(newline="") as handle, AGNEWS_SMALL.open(newline="") as rows:
        assert len(list(csv.DictReader(handle))) == len(list(csv.reader(rows)))
