"""A results table from finished run folders: accuracy on every scored set, cost, and what each run changed.

    # what each choice does to the validation split, the shifted slice and the test split (docs/robustness.md)
    python benchmarks/run_table.py runs/robust/standard runs/robust/mean ... \
        --key robustness-minilm --title "MiniLM-L6: what keeps both" --page docs/robustness.md
    # the base-size runs behind the README's results table
    python benchmarks/run_table.py runs/agnews-mpnet-r4-qkv ... --key base-size --cost --page README.md

Everything comes from each run's own files (summary.json, config.yaml, data_report.json), so the table
can be rebuilt from the run folders at any time. The first run is the baseline: "changes" lists each
other run's config keys that differ from it, and the deltas are against it. ``--cost`` adds the
training rows, epochs, precision and machine, wall time, samples/s and CPU-hours (training seconds x the
threads it ran on).
The raw table is kept in benchmarks/results/<key>-<date>.md and the page's section ``key`` is replaced.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as a file: python benchmarks/run_table.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc
from textlora.run.layout import averaged_checkpoints, averaged_count

_NOT_A_CHANGE = {"train.run_name", "train.output_dir", "train.quiet"}


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and key != "eval_sets"
                   else {f"{prefix}{key}": value})
    return out


def _changes(config: dict, baseline: dict) -> str:
    keys = sorted(k for k in set(config) | set(baseline) if k not in _NOT_A_CHANGE
                  and config.get(k) != baseline.get(k))
    return ", ".join(f"{k}={config.get(k)}" for k in keys) or "baseline"


def _figures(name: str, config: dict, summary: dict, train_rows, epochs) -> dict:
    """One table row's figures from a run's summary (summary.json, or a results record holding the same keys)."""
    sets = {set_name: result.get("accuracy") for set_name, result in summary.get("eval_sets", {}).items()}
    flat, best_step = _flat(config), summary.get("best_step")
    averaged = summary.get("averaged")
    if averaged:  # `textlora average` wrote it: the model is a mean of checkpoints, not one of them
        metric = averaged.get("metric", summary.get("best_metric"))  # averages before --metric: the run's own
        chosen = f" (chosen on {metric})" if averaged["method"] == "greedy" else ""
        flat["checkpoints"] = f"{averaged['method']} average of {averaged_checkpoints(averaged)}{chosen}"
        if averaged_count(averaged) > 1:  # one named checkpoint (--steps 600) keeps its step
            best_step = f"mean of {averaged_count(averaged)}"
    moved = (averaged or {}).get("toward_start")
    return {"run": name, "config": flat, "validation": summary.get("validation_accuracy"),
            "sets": sets, "test": summary.get("test_accuracy"), "trainable": summary.get("trainable_params"),
            "train_rows": train_rows, "epochs": epochs,
            "best_step": best_step, "steps": summary.get("steps"),
            "moved": moved["fraction"] if moved and moved["fraction"] < 1 else None,
            "train_seconds": summary.get("train_seconds"), "wall_seconds": summary.get("wall_seconds"),
            "samples_per_s": summary.get("train_samples_per_s"), "threads": summary.get("cpu_threads"),
            "device": summary.get("device"), "base_dtype": summary.get("base_dtype"),
            "precision": summary.get("precision"), "machine": summary.get("machine")}


def read_record(path: Path) -> dict:
    """The figures of a run whose folder is gone, from its committed results record
    (benchmarks/results/<run>-<date>.json: the run's summary.json figures plus its config path, rows and epochs)."""
    record = json.loads(path.read_text())
    config_path = bc.REPO / record["config"]
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    return _figures(Path(record["config"]).stem, config, record, record.get("train_rows"), record.get("epochs"))


def read_run(run: Path) -> dict:
    """The figures of one finished run folder, or of a committed results record (a .json file)."""
    if run.suffix == ".json":
        return read_record(run)
    summary = json.loads((run / "summary.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    report = json.loads((run / "data_report.json").read_text()) if (run / "data_report.json").is_file() else {}
    # A run's files kept under benchmarks/results/<run>-<date>/ are named for the run.
    name = re.sub(r"-\d{4}-\d{2}-\d{2}$", "", run.name)
    return _figures(name, config, summary, report.get("train_rows"), config.get("train", {}).get("epochs"))


def _delta(value, base):
    return None if value is None or base is None else f"{value - base:+.4f}"


SOURCES = "the runs' own files (summary.json, config.yaml), each figure measured where its run trained"
"""Where a table's figures come from: this script measures nothing, so the machine running it is not named."""


def table(runs: list[dict], cost: bool, changes: bool = True) -> str:
    base = runs[0]
    set_names = sorted({name for run in runs for name in run["sets"]})
    header = ["run", *(["changes from the first"] if changes else []), "validation", *set_names, "test"]
    header += [f"Δ {name}" for name in set_names] + ["Δ test", "trainable"]
    if cost:
        header += ["train rows", "epochs", "best step", "compute", "wall time", "samples/s", "CPU-hours"]
    rows = []
    for run in runs:
        row = [run["run"], *([_changes(run["config"], base["config"]) if run is not base else "baseline"]
                             if changes else []), run["validation"], *[run["sets"].get(n) for n in set_names], run["test"]]
        row += [_delta(run["sets"].get(n), base["sets"].get(n)) for n in set_names]
        row += [_delta(run["test"], base["test"]), run["trainable"]]
        if cost:
            hours = (round(run["train_seconds"] * run["threads"] / 3600, 1)
                     if run["train_seconds"] is not None and run["threads"] else None)
            wall = f"{run['wall_seconds'] / 60:.0f} min" if run["wall_seconds"] else None
            # Precision and machine: wall time and samples/s compare only where both are the same.
            compute = " on ".join(part for part in (run["precision"], run["machine"]) if part) or None
            best = f"{run['best_step']} of {run['steps']}"
            if run.get("moved"):  # --toward-start: moved back towards the start of training
                best += f", moved towards the start ({run['moved']:g} of the change kept)"
            row += [run["train_rows"], run["epochs"], best, compute, wall, run["samples_per_s"], hours]
        rows.append(row)
    return bc.markdown_table(header, rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path,
                   help="finished run folders or committed results records (.json); the first is the baseline")
    p.add_argument("--key", required=True, help="section key (and raw file name), e.g. robustness-minilm")
    p.add_argument("--title", required=True, help="the section's heading")
    p.add_argument("--page", default="none", help="markdown page whose section KEY is replaced (default: print only)")
    p.add_argument("--cost", action="store_true", help="add rows, epochs, precision and machine, wall time, samples/s and CPU-hours")
    p.add_argument("--no-changes", action="store_true",
                   help="leave out the column of config keys each run changed (runs of unrelated configs)")
    p.add_argument("--level", type=int, default=2, help="the section's heading level (3 inside a page's ## section)")
    p.add_argument("--note", action="append", default=[], help="a line under the table (repeatable)")
    args = p.parse_args(argv)
    missing = [str(run) for run in args.runs
               if not (run.is_file() if run.suffix == ".json" else (run / "summary.json").is_file())]
    if missing:
        p.error(f"not finished run folders (no summary.json) or missing results records: {', '.join(missing)}")
    runs = [read_run(run) for run in args.runs]
    head = bc.section_head(args.title, args.level, from_files=SOURCES)
    body = "\n".join([*head, table(runs, args.cost, not args.no_changes), "", *args.note])
    bc.publish_section(args.page, args.key, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
