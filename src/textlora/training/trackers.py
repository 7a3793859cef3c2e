"""Experiment tracking through accelerate's trackers (TensorBoard, MLflow), off unless ``train.trackers`` names one.

metrics.jsonl stays the record of truth; every line written there is also sent to the trackers,
so they show exactly the numbers the report draws.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Optional

from accelerate import Accelerator
from accelerate.tracking import filter_trackers

from textlora.config import RunConfig
from textlora.errors import ConfigError

_PACKAGES = {"tensorboard": ("tensorboard", "textlora[tensorboard]"), "mlflow": ("mlflow", "textlora[mlflow]")}


def check_trackers(names) -> None:
    """Refuse a tracker whose package is missing, before anything trains."""
    for name in names:
        module, extra = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.trackers includes {name!r} but the {module!r} package is not installed; "
                              f"run `pip install '{extra}'` or remove it from train.trackers")


def _flat_config(config: RunConfig) -> dict:
    """Config as flat ``section.key`` scalars: the form TensorBoard's hparams and MLflow's params accept."""
    from omegaconf import OmegaConf

    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
        elif isinstance(value, (int, float, str, bool)):
            flat[prefix] = value
        else:  # lists, None: stringified so every tracker accepts them
            flat[prefix] = str(value)

    walk("", OmegaConf.to_container(OmegaConf.structured(config)))
    return flat


def start_trackers(accelerator: Accelerator, config: RunConfig, run_dir: Path) -> Optional[Callable[[dict], None]]:
    """Start the configured trackers with ``run_dir`` as their logging folder.

    Returns:
        A function that forwards one metrics.jsonl record to the trackers, or None when none are configured.
    """
    names = list(config.train.trackers)
    if not names:
        return None
    check_trackers(names)
    # The run folder is only known after the Accelerator exists, so the trackers are attached here.
    # TensorBoard writes RUN/tensorboard/textlora/; MLflow logs run RUN's name in experiment "textlora"
    # (MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME override where and which).
    accelerator.project_configuration.logging_dir = str(run_dir / "tensorboard")
    accelerator.log_with = filter_trackers(names, accelerator.logging_dir)
    accelerator.init_trackers("textlora", config=_flat_config(config),
                              init_kwargs={"mlflow": {"run_name": run_dir.name}})

    def forward(record: dict) -> None:
        accelerator.log(tracker_values(record), step=record["step"])

    return forward


def tracker_values(record: dict) -> dict:
    """One metrics.jsonl record as tracker scalars: ``eval/accuracy``, and an eval set's ``eval/shifted/accuracy``."""
    kind = record.get("kind", "train")
    flat = {key: value for key, value in record.items() if key not in ("kind", "step", "sets")}
    for name, metrics in record.get("sets", {}).items():
        flat.update({f"{name}/{key}": value for key, value in metrics.items()})
    return {f"{kind}/{key}": value for key, value in flat.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def end_trackers(accelerator: Accelerator) -> None:
    if accelerator.trackers:
        accelerator.end_training()
