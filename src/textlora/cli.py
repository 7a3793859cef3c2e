"""The ``textlora`` command: parses arguments and dispatches to one stage function per command.

A :class:`TextloraError` anywhere becomes ``error: <message>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from .errors import RunFolderError, TextloraError


def _data_source(args, run_dir: Path):
    """The ``--data`` rows, read with the run's training options unless flags override them."""
    from .config import DataSource, config_from_yaml_file

    if not (run_dir / "config.yaml").is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `textlora train` printed")
    trained = config_from_yaml_file(run_dir / "config.yaml").data.train
    source = DataSource(path=args.data, split=args.split, column_names=trained.column_names,
                        text_columns=trained.text_columns, label_column=trained.label_column)
    if args.header:
        source = replace(source, column_names=None)
    if args.column_names:
        source = replace(source, column_names=args.column_names.split(","))
    if args.text_columns:
        source = replace(source, text_columns=args.text_columns.split(","))
    if getattr(args, "label_column", None):
        source = replace(source, label_column=args.label_column)
    return source


def cmd_train(args) -> None:
    from .config import load_config
    from .train import train

    if args.resume:
        if args.overrides or args.config:
            raise TextloraError("--resume continues a run with its saved config; drop --config and overrides")
        train(None, resume=Path(args.resume))
        return
    if not args.config:
        raise TextloraError("give --config FILE.yaml (see configs/) or --resume RUN")
    config = load_config(Path(args.config), tuple(args.overrides))
    train(config, config_name=Path(args.config).stem)


def cmd_params(args) -> None:
    from .budget import count_model, enforce_budget
    from .config import load_config

    config = load_config(Path(args.config) if args.config else None, tuple(args.overrides))
    breakdown, built = count_model(config.model, num_labels=args.num_labels, pretrained=args.pretrained)
    if args.json:
        print(json.dumps(breakdown.as_dict(), indent=2))
    else:
        print(breakdown.table())
    enforce_budget(config.model, breakdown, built)


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate

    run_dir = Path(args.run)
    evaluate(run_dir, _data_source(args, run_dir), Path(args.output) if args.output else None,
             args.batch_size, args.device)


def cmd_predict(args) -> None:
    from .predict import predict

    run_dir = Path(args.run)
    predict(run_dir, _data_source(args, run_dir), Path(args.output), args.names, args.probs,
            args.batch_size, args.device)


def cmd_classify(args) -> None:
    from .predict import classify

    classify(Path(args.run), args.texts, args.json, args.device)


def _add_data_flags(parser: argparse.ArgumentParser, labels: bool) -> None:
    parser.add_argument("--data", required=True, help="file (.csv/.tsv/.jsonl/.json/.parquet/.pkl) or hub dataset name")
    parser.add_argument("--split", default=None, help="split of a hub dataset (default: train)")
    parser.add_argument("--header", action="store_true", help="the CSV has a header row (ignore the run's column_names)")
    parser.add_argument("--column-names", default=None, help="comma-separated names for a CSV without a header")
    parser.add_argument("--text-columns", default=None, help="comma-separated text columns (default: the run's)")
    if labels:
        parser.add_argument("--label-column", default=None, help="label column (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textlora", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a LoRA classifier into a run folder")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its newest valid checkpoint")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 model.lora_r=4")

    p = sub.add_parser("params", help="exact trainable-parameter count and budget check")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--num-labels", type=int, default=4, help="classes of the head (default 4, AG News)")
    p.add_argument("--pretrained", action="store_true",
                   help="read the checkpoint to find weights it lacks (counted as trainable); needs the weights")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("overrides", nargs="*", help="key=value overrides")

    p = sub.add_parser("evaluate", help="metrics of a run's best model on labelled data")
    p.add_argument("run", help="run folder")
    _add_data_flags(p, labels=True)
    p.add_argument("--output", help="JSON file (default RUN/evaluations/<data>.json)")

    p = sub.add_parser("predict", help="write a submission CSV (ID,Label)")
    p.add_argument("run", help="run folder")
    _add_data_flags(p, labels=False)
    p.add_argument("--output", required=True, help="CSV file to write, e.g. submission.csv")
    p.add_argument("--names", action="store_true", help="add a LabelName column")
    p.add_argument("--probs", action="store_true", help="add a probability column per class")

    p = sub.add_parser("classify", help="label and probabilities for texts given on the command line")
    p.add_argument("run", help="run folder")
    p.add_argument("texts", nargs="+", help="texts to classify")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return parser


COMMANDS = {
    "train": cmd_train,
    "params": cmd_params,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "classify": cmd_classify,
}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Tokenizer worker threads fight the training threads for 2 CPU cores; one is plenty here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        COMMANDS[args.command](args)
    except TextloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
