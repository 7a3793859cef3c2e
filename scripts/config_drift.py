"""Does a run folder still match the config file it was trained from? For scripts that keep finished runs.

    python scripts/config_drift.py CONFIG RUN

Prints the keys whose values differ (``key: in the run -> in the config``) and exits 1 when any do;
exits 0, printing nothing, when the run is what the config would train now. Run names, output folders and
``train.quiet`` are no difference (as in ``textlora compare``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from textlora.commands.compare import key_differences
from textlora.config import config_from_yaml_file, load_config
from textlora.errors import TextloraError


def drift(config: Path, run: Path) -> dict:
    """``{key: [value in the run, value in the config]}`` for every key that differs."""
    resolved = [OmegaConf.to_container(OmegaConf.structured(c))
                for c in (config_from_yaml_file(run / "config.yaml"), load_config(config))]
    return {key: values for key, values in key_differences(resolved).items()
            if not (key.endswith(".path") and len({_same_file(v) for v in values}) == 1)}


def _same_file(path) -> str:
    """A data path as the file it names: a run records its data files as absolute paths, a config as written."""
    return os.path.realpath(path) if path and Path(path).exists() else str(path)


def main(argv: list[str]) -> int:
    config, run = Path(argv[0]), Path(argv[1])
    try:
        differences = drift(config, run)
    except TextloraError as exc:  # a config file or run folder this version cannot read: say which, once
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, (in_run, in_config) in differences.items():
        print(f"{key}: {in_run} -> {in_config}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
