"""Sweep stage: a small grid of overrides trained one after another into sibling run folders, then compared.

A sweep can be re-run after an interruption: finished runs are kept, an interrupted one is resumed
from its newest checkpoint, and the rest are trained.
"""

from __future__ import annotations

import math
import re
from itertools import product
from pathlib import Path
from typing import Sequence

from textlora.config import load_config
from textlora.errors import ConfigError
from textlora.run.layout import CHECKPOINTS_DIR, CONFIG_FILE, SUMMARY_FILE


def split_values(text: str) -> list[str]:
    """``adamw,rmsprop`` -> two values; commas inside brackets stay (``[query,value],[query]`` -> two)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [v.strip() for v in values if v.strip()]


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["optim.name=adamw,rmsprop", "model.lora_r=4,8"]`` -> ``[(key, values), …]``; at least two runs."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not split_values(values):
            raise ConfigError(f"--grid {item!r} is not of the form key=v1,v2 (e.g. --grid optim.name=adamw,rmsprop)")
        if key.strip() in (k for k, _ in grid):
            raise ConfigError(f"--grid names {key.strip()} twice; give all its values once: "
                              f"--grid {key.strip()}=v1,v2")
        grid.append((key.strip(), split_values(values)))
    if math.prod(len(values) for _, values in grid) < 2:
        raise ConfigError("the grid has one combination, so there is nothing to compare; give a key two or more "
                          "values (--grid optim.name=adamw,rmsprop), or train the one run with `textlora train`")
    return grid


def _trained_otherwise(run_dir: Path, planned) -> dict:
    """Config keys whose value in ``run_dir``'s saved config differs from the planned run's: ``{key: [saved, planned]}``."""
    from omegaconf import OmegaConf

    from textlora.commands.compare import key_differences
    from textlora.config import config_from_yaml_file
    from textlora.run.folder import with_absolute_paths

    saved = config_from_yaml_file(run_dir / CONFIG_FILE)
    return key_differences([OmegaConf.to_container(OmegaConf.structured(c)) for c in (saved, with_absolute_paths(planned))])


def _folder_part(key: str, value: str) -> str:
    return f"{key.rsplit('.', 1)[-1]}={re.sub(r'[^A-Za-z0-9._-]+', '_', value).strip('_')}"


def sweep(config_path: Path, grid_items: Sequence[str], overrides: Sequence[str] = ()) -> list[Path]:
    """Train every combination of the grid, then write the comparison of all of them.

    Args:
        config_path: the base YAML config.
        grid_items: ``key=v1,v2`` items; the grid is their Cartesian product.
        overrides: ``key=value`` applied to every run.

    Returns:
        the run folders, in grid order.
    """
    from textlora.commands.compare import compare
    from textlora.training.recipe import train

    config_path = Path(config_path)
    grid = parse_grid(grid_items)
    base = load_config(config_path, tuple(overrides))
    prefix = base.train.run_name or config_path.stem
    # Every combination is validated before the first one trains: a typo fails in seconds, not hours.
    plans = []
    for values in product(*(vals for _, vals in grid)):
        name = prefix + "-" + "_".join(_folder_part(k, v) for (k, _), v in zip(grid, values))
        items = tuple(overrides) + tuple(f"{k}={v}" for (k, _), v in zip(grid, values)) + (f"train.run_name={name}",)
        config = load_config(config_path, items)
        plans.append((Path(config.train.output_dir) / name, config))
    for run_dir, config in plans:
        # A folder kept or resumed from an earlier sweep must be this run: else the comparison would be wrong.
        if (run_dir / CONFIG_FILE).is_file() and (differences := _trained_otherwise(run_dir, config)):
            shown = "; ".join(f"{k}: {saved!r} there, {planned!r} now" for k, (saved, planned) in differences.items())
            raise ConfigError(f"{run_dir} holds a run of another configuration ({shown}); move or delete it, or set "
                              f"train.output_dir (or train.run_name) so that this sweep writes elsewhere")
    print(f"[sweep] {len(plans)} runs: " + ", ".join(run_dir.name for run_dir, _ in plans))
    run_dirs = []
    for number, (run_dir, config) in enumerate(plans, start=1):
        print(f"\n[sweep] run {number}/{len(plans)}: {run_dir}")
        if (run_dir / SUMMARY_FILE).is_file():
            print(f"[sweep] {run_dir} is finished already; kept")
        elif (run_dir / CHECKPOINTS_DIR).is_dir() and any((run_dir / CHECKPOINTS_DIR).iterdir()):
            train(None, resume=run_dir)
        else:
            train(config, config_name=config_path.stem)
        run_dirs.append(run_dir)
    compare(run_dirs, Path(base.train.output_dir) / f"{prefix}-sweep")
    return run_dirs
