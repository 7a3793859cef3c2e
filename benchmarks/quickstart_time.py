"""The quickstart's headline figures, from one timed run of the command the README shows.

    python benchmarks/quickstart_time.py                   # writes benchmarks/results/quickstart-YYYY-MM-DD.json
    python benchmarks/quickstart_time.py --threads 2 --out /tmp/qs.json

Runs ``textlora train --config configs/quickstart.yaml train.quiet=true train.run_name=... train.output_dir=TMP``
in its own process (offline), measured from outside: wall time and that process's own peak RSS
(``os.wait4`` in a small launcher, :func:`benchmarks.common.run_measured`). The run's summary.json
gives test and validation accuracy, training seconds, samples/s, precision, base dtype and allocator.
The JSON also names the CPU, the core count, the library versions and the git commit it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/quickstart_time.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc

CONFIG = bc.REPO / "configs/quickstart.yaml"
RESULTS = bc.REPO / "benchmarks/results"
SUMMARY_KEYS = ("test_accuracy", "validation_accuracy", "train_seconds", "train_samples_per_s",
                "train_tokens_per_s", "wall_seconds", "steps", "precision", "base_dtype", "memory_allocator",
                "trainable_params", "device")
RESULT_KEYS = ("command", "date", "config", "test_accuracy", "validation_accuracy", "process_wall_s",
               "train_seconds", "train_samples_per_s", "peak_rss_mb", "precision", "base_dtype", "allocator",
               "cpu_model", "cpu_cores", "threads", "load_average_1min", "versions", "git_commit")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONFIG), help="the training config (default: the quickstart's)")
    p.add_argument("--out", default=None,
                   help="result JSON (default: benchmarks/results/quickstart-<today>.json)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the run (default: torch's own)")
    p.add_argument("--keep-run", default=None, help="train into this folder and keep it (default: a temporary one)")
    p.add_argument("overrides", nargs="*", help="extra dotted overrides passed to textlora train")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(RESULTS / f"quickstart-{time.strftime('%Y-%m-%d')}.json")
    return args


def train_command(config: str, output_dir: Path, run_name: str, overrides=()) -> list[str]:
    """The README's command, quiet, into ``output_dir/run_name``."""
    textlora = Path(sys.executable).with_name("textlora")
    head = [str(textlora)] if textlora.is_file() else [sys.executable, "-m", "textlora.cli"]
    return [*head, "train", "--config", config, "train.quiet=true", f"train.run_name={run_name}",
            f"train.output_dir={output_dir}", *overrides]


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("textlora", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=bc.REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=bc.REPO,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def result_record(summary: dict, measured: dict, command: list[str], threads) -> dict:
    """The committed JSON: the headline figures first, then where and on what they were measured."""
    return {"command": bc.command_line(), "train_command": " ".join(command), "date": time.strftime("%Y-%m-%d %H:%M"),
            "config": summary.get("config"),
            "test_accuracy": summary.get("test_accuracy"), "validation_accuracy": summary.get("validation_accuracy"),
            "process_wall_s": measured["wall_s"], "run_wall_s": summary.get("wall_seconds"),
            "train_seconds": summary.get("train_seconds"), "train_samples_per_s": summary.get("train_samples_per_s"),
            "train_tokens_per_s": summary.get("train_tokens_per_s"), "steps": summary.get("steps"),
            "peak_rss_mb": measured["peak_rss_mb"], "precision": summary.get("precision"),
            "base_dtype": summary.get("base_dtype"), "allocator": summary.get("memory_allocator"),
            "device": summary.get("device"), "trainable_params": summary.get("trainable_params"),
            "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "threads": threads or "torch default",
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "versions": versions(), "git_commit": git_commit()}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(bc.REPO)  # the config's data paths are relative to the repository
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else {}
    run_name = f"quickstart-timed-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="quickstart-time-") as tmp:
        output_dir = Path(args.keep_run) if args.keep_run else Path(tmp)
        command = train_command(args.config, output_dir, run_name, args.overrides)
        print("[bench] " + " ".join(command), flush=True)
        measured = bc.run_measured(command, env)
        summary_file = output_dir / run_name / "summary.json"
        if measured["returncode"] != 0 or not summary_file.is_file():
            raise SystemExit(f"textlora train failed with exit code {measured['returncode']} (see its output above)")
        summary = {k: v for k, v in json.loads(summary_file.read_text()).items() if k in SUMMARY_KEYS}
    summary["config"] = os.path.relpath(args.config, bc.REPO) if Path(args.config).is_absolute() else args.config
    record = result_record(summary, measured, command, args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bc.save_json(out, record)
    print(json.dumps(record, indent=2))
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
