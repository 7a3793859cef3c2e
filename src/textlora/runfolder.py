"""The run folder: everything evaluate, predict, report and serve need, and nothing else.

    RUN/
      config.yaml          resolved configuration (absolute local paths)
      labels.json          label names and how raw labels map to class ids
      data_report.json     rows read, dropped, filtered, per class, text lengths
      budget.json          trainable parameters by group and the budget
      tokenizer/           the tokenizer, so the run does not depend on where it came from
      adapter/             best model: peft adapter_config.json + adapter_model.safetensors (head included)
      checkpoints/step-N/  resumable state, keep-last-K plus the best
      metrics.jsonl        one JSON line per logging step and per evaluation
      eval.json            best model on the validation split
      test_eval.json       best model on data.test, when given
      eval_sets/NAME.json  best model on each data.eval_sets set, when given
      summary.json         best metric, trainable params, wall time, throughput
      predictions/         per-example probabilities of the best model (validation.csv, test.csv, eval_sets/NAME.csv)
      report/              report.md and its PNG figures (report.py)
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from .checkpoint import atomic_write_text
from .config import RunConfig, config_to_yaml
from .errors import ConfigError


def _absolute_if_local(path: str) -> str:
    from .model import resolve_model_location

    path = resolve_model_location(path)
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """Local model and data paths made absolute, so the saved config works from any directory."""
    data = config.data
    sources = {name: getattr(data, name) for name in ("train", "validation", "test")}
    sources = {name: (replace(src, path=_absolute_if_local(src.path)) if src is not None else None)
               for name, src in sources.items()}
    sources["eval_sets"] = {name: replace(src, path=_absolute_if_local(src.path))
                            for name, src in data.eval_sets.items()}
    return replace(config, model=replace(config.model, name_or_path=_absolute_if_local(config.model.name_or_path)),
                   data=replace(data, **sources))


def new_run_dir(config: RunConfig, config_name: str) -> Path:
    """Create ``output_dir/run_name`` (default ``<config name>-<timestamp>``); refuse to reuse a finished run."""
    name = config.train.run_name or f"{config_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.train.output_dir) / name
    if (run_dir / "adapter").exists() or (run_dir / "checkpoints").exists():
        raise ConfigError(f"run folder {run_dir} already holds a run; choose another train.run_name "
                          f"or continue it with `textlora train --resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_config(run_dir: Path, config: RunConfig) -> None:
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(config))


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``, flushed at once so a crash loses nothing."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.on_write = None  # also called with every record written (experiment trackers), when set

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint we resume from (and a line cut off by a kill)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if (at := _step(line)) is not None and at <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            if self.on_write is not None:
                self.on_write(record)


def _step(line: str):
    """The step of one metrics.jsonl line; None for a blank line or one cut off mid-write."""
    try:
        return json.loads(line).get("step", 0) if line.strip() else None
    except ValueError:
        return None
