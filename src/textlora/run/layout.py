"""The run folder's contract: every file and folder name a run holds, in one place.

A run folder describes itself: evaluate, predict, report, export and serve need nothing but it. Runs written
by earlier versions use the same names (tests/fixtures/run-2026-12-03 is one, and is tested).
"""

CONFIG_FILE = "config.yaml"
"""The resolved config the run trained with (defaults < YAML < overrides)."""
LABELS_FILE = "labels.json"
"""Class names and how labels were written (see data.labels.LabelMap)."""
BUDGET_FILE = "budget.json"
"""Trainable parameters by group and the LoRA layout."""
DATA_REPORT_FILE = "data_report.json"
"""Rows read, kept and dropped; class counts; text lengths."""
METRICS_FILE = "metrics.jsonl"
"""One JSON line per train log and per evaluation."""
EVAL_FILE = "eval.json"
"""The best model's validation metrics."""
TEST_EVAL_FILE = "test_eval.json"
SUMMARY_FILE = "summary.json"
"""Best step and value, device, precision, base dtype, speed."""
ADAPTER_DIR = "adapter"
"""The best LoRA + head weights (peft's adapter folder)."""
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
PREDICTIONS_DIR = "predictions"
"""validation.csv (and test.csv) of the best model."""
EVAL_SETS_DIR = "eval_sets"
REPORT_DIR = "report"


def averaged_checkpoints(averaged: dict) -> str:
    """What a model `textlora average` wrote is the mean of, from its ``summary.json["averaged"]`` record:
    ``steps 480+1080`` of the run, then ``RUN steps 120+600`` for each run it was averaged with (``--with``), then
    the fraction kept where it was moved towards the start of training (``--toward-start``)."""
    parts = [_steps_of(averaged["steps"])] if averaged["steps"] else []
    parts += [f"{run} {_steps_of(steps)}" for run, steps in averaged.get("with", {}).items()]
    moved = averaged.get("toward_start")
    # --toward-start: the fraction of what training changed that is kept; 1 is the average itself, 0 the start.
    if not moved:
        return " and ".join(parts)
    if moved["fraction"] == 1:
        return " and ".join(parts) + " (not moved towards the start: the average itself scored best)"
    return " and ".join(parts) + f" (moved back towards the start: {moved['fraction']:g} of the change kept)"


def _steps_of(steps: list[int]) -> str:
    return f"step{'s' if len(steps) > 1 else ''} {'+'.join(str(step) for step in steps)}"


def averaged_count(averaged: dict) -> int:
    """How many checkpoints a model `textlora average` wrote is the mean of."""
    return len(averaged["steps"]) + sum(len(steps) for steps in averaged.get("with", {}).values())
