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
