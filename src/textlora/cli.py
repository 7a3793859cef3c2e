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
from typing import Optional

from textlora.model.speedups import prepare_process
from textlora.errors import TextloraError, os_error_message


def _int_at_least(minimum: int, why: str = ""):
    """An argparse type: an integer >= ``minimum`` (``why`` explains the minimum in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}, got {value}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported like every other user error: one ``error:`` line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


positive_int = _int_at_least(1)
"""argparse type for --batch-size and the like: 0 or -3 would fail later and less clearly."""
_NUM_LABELS = _int_at_least(2, " (a classifier needs at least 2 classes)")


def _int_list(what: str, one: str, minimum: int, example: str):
    """An argparse type: comma-separated whole numbers, each >= ``minimum`` (``what``/``one``: ``ranks``/``rank``)."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}, "
                                             f"e.g. {example}") from None
        if any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every {one} must be at least {minimum}")
        return values
    return parse


_rank_list = _int_list("ranks", "rank", 1, "4,8")
_step_list = _int_list("steps", "step", 0, "300,600")


def _fraction_list(text: str) -> list[float]:
    """--toward-start: comma-separated fractions from 0 to 1, e.g. ``0.3,0.5,0.7``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fractions, e.g. 0.3,0.5,0.7") \
            from None
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every fraction must lie from 0 (the start) to 1 (the average)")
    return values


def _data_source(args, run_dir: Path, path: Optional[str] = None):
    """The ``--data`` rows (or ``path``'s), read with the run's training options unless flags override them."""
    from textlora.run.load import data_source_like_training

    source = data_source_like_training(run_dir, args.data if path is None else path, args.split)
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
    from textlora.config import load_config
    from textlora.training.recipe import train

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
    from textlora.model.budget import count_model, enforce_budget
    from textlora.config import load_config

    config = load_config(Path(args.config) if args.config else None, tuple(args.overrides))
    breakdown, built = count_model(config.model, num_labels=args.num_labels, pretrained=args.pretrained)
    if args.json:
        print(json.dumps(breakdown.as_dict(), indent=2))
    else:
        print(breakdown.table())
    if built.targets_note and not args.pretrained:  # with --pretrained, loading the model said it
        print(f"note: {built.targets_note}", file=sys.stderr if args.json else sys.stdout)
    enforce_budget(config.model, breakdown, built)


def cmd_evaluate(args) -> None:
    from textlora.commands.evaluate import evaluate_many

    run_dir = Path(args.run)
    evaluate_many(run_dir, [_data_source(args, run_dir, path) for path in args.data],
                  Path(args.output) if args.output else None, args.batch_size, args.device, args.precision,
                  args.base_model, args.max_length)


def cmd_predict(args) -> None:
    from textlora.commands.predict import predict

    run_dir = Path(args.run)
    predict(run_dir, _data_source(args, run_dir), Path(args.output), args.names, args.probs,
            args.batch_size, args.device, precision=args.precision, base_model=args.base_model,
            max_length=args.max_length)


def cmd_classify(args) -> None:
    from textlora.commands.predict import classify

    classify(Path(args.run), args.texts, args.json, args.device, args.precision, args.base_model, args.max_length)


def cmd_export(args) -> None:
    from textlora.commands.export import export

    export(Path(args.run), Path(args.out), onnx=args.onnx, force=args.force, base_model=args.base_model)


def cmd_serve(args) -> None:
    from textlora.serve import ServeLimits, serve

    limits = ServeLimits(max_texts=args.max_texts, max_chars=args.max_chars, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    serve(Path(args.model), args.host, args.port, args.device, limits, args.root_path, args.log_level, args.onnx,
          args.precision, args.base_model, args.max_length)


def cmd_report(args) -> None:
    from textlora.commands.report import write_report

    print(f"wrote {write_report(Path(args.run), Path(args.output) if args.output else None)}")


def cmd_compare(args) -> None:
    from textlora.commands.compare import compare

    compare([Path(r) for r in args.runs], Path(args.output) if args.output else None)


def cmd_average(args) -> None:
    from textlora.commands.average import average

    average(Path(args.run), args.steps, args.last, args.greedy, Path(args.output) if args.output else None,
            args.device, args.batch_size, args.base_model, args.metric, not args.no_test,
            [Path(run) for run in args.with_runs], args.top, args.toward_start or ())


def cmd_plan(args) -> None:
    from textlora.run.files import check_output_file, starts_with
    from textlora.config import load_config
    from textlora.commands.plan import PLAN_HEADER, RANKS, plan

    if args.output:  # the planned YAML must not replace the --config it completes, nor any file plan did not write
        check_output_file(Path(args.output), "planned.yaml", inputs=[args.config] if args.config else [],
                          own=(f"YAML that starts with '{PLAN_HEADER}'", starts_with(PLAN_HEADER)))
    base = load_config(Path(args.config), tuple(args.overrides)) if args.config else None
    if args.overrides and not args.config:
        raise TextloraError("key=value overrides need --config (they change the base config the plan completes)")
    ranks = args.ranks or RANKS
    heads = [args.head] if args.head else ("standard", "linear")
    plan(args.budget, args.model, args.num_labels, base, ranks, heads,
         args.targets.split(",") if args.targets else None, args.layers, args.top, args.pick, args.pretrained,
         Path(args.output) if args.output else None, args.json)


def cmd_sweep(args) -> None:
    from textlora.commands.sweep import sweep

    sweep(Path(args.config), args.grid, args.overrides)



def _add_data_flags(parser: argparse.ArgumentParser, labels: bool, many: bool = False) -> None:
    parser.add_argument("--data", required=True, action="append" if many else "store",
                        help="file (.csv/.tsv/.jsonl/.json/.parquet/.pkl) or hub dataset name"
                             + ("; repeat it to evaluate several sets (one table, a column per set)" if many else ""))
    parser.add_argument("--split", default=None, help="split of a hub dataset (default: train)")
    parser.add_argument("--header", action="store_true", help="the CSV has a header row (ignore the run's column_names)")
    parser.add_argument("--column-names", default=None, help="comma-separated names for a CSV without a header")
    parser.add_argument("--text-columns", default=None, help="comma-separated text columns (default: the run's)")
    if labels:
        parser.add_argument("--label-column", default=None, help="label column (default: the run's)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_precision_flag(parser)
    _add_base_model_flag(parser)
    _add_max_length_flag(parser)


def _add_max_length_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-length", type=positive_int, metavar="TOKENS",
                        help="read texts up to this many tokens instead of the run's model.max_length, up to the "
                             "model's position limit (a run trained on short texts can read long ones in full)")


def _add_precision_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="run", choices=["run", "fp32", "bf16"],
                        help="run: as the run validated in training (its train.mixed_precision on this device)")


def _add_base_model_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", metavar="PATH_OR_ID",
                        help="the run's base model from here (a folder or hub id) instead of its model.name_or_path")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="textlora", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a LoRA classifier into a run folder")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its newest valid checkpoint")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 model.lora_r=4")

    p = sub.add_parser("params", help="exact trainable-parameter count and budget check")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--num-labels", type=_NUM_LABELS, default=4, help="classes of the head (default 4, AG News)")
    p.add_argument("--pretrained", action="store_true",
                   help="load the checkpoint to find weights it lacks (counted as trainable); needs the weights. "
                        "A local folder's safetensors headers already tell, without it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("overrides", nargs="*", help="key=value overrides")

    p = sub.add_parser("evaluate", help="metrics of a run's best model on labelled data")
    p.add_argument("run", help="run folder, or a folder `textlora export` wrote")
    _add_data_flags(p, labels=True, many=True)
    p.add_argument("--output", help="JSON file of a single --data (default RUN/evaluations/<data>.json, or "
                                    "<data>-2.json when that holds an evaluation of other data)")

    p = sub.add_parser("predict", help="write a submission CSV (ID,Label)")
    p.add_argument("run", help="run folder, or a folder `textlora export` wrote")
    _add_data_flags(p, labels=False)
    p.add_argument("--output", required=True, help="CSV file to write, e.g. submission.csv")
    p.add_argument("--names", action="store_true", help="add a LabelName column")
    p.add_argument("--probs", action="store_true", help="add a probability column per class")

    p = sub.add_parser("classify", help="label and probabilities for texts given on the command line")
    p.add_argument("run", help="run folder, or a folder `textlora export` wrote")
    p.add_argument("texts", nargs="+", help="texts to classify")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_precision_flag(p)
    _add_base_model_flag(p)
    _add_max_length_flag(p)

    p = sub.add_parser("export", help="write a merged, plain Hugging Face model folder (LoRA folded in)")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="folder to create (loads with stock transformers)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx, checked against PyTorch")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    _add_base_model_flag(p)

    p = sub.add_parser("serve", help="HTTP API + web page for a run folder or exported model")
    p.add_argument("model", help="run folder or folder written by `textlora export`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_precision_flag(p)
    _add_base_model_flag(p)
    _add_max_length_flag(p)
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (more: 413)")
    p.add_argument("--max-chars", type=int, default=2000, help="characters per text (more: 413)")
    p.add_argument("--max-batch", type=int, default=32, help="most texts in one model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits to share a model call")
    p.add_argument("--max-queue", type=int, default=4096, help="texts waiting for the model (more: 503)")
    p.add_argument("--root-path", default="", help="URL prefix when behind a reverse proxy, e.g. /textlora")
    p.add_argument("--onnx", action="store_true", help="run an exported folder's model.onnx on ONNX Runtime (CPU)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    p = sub.add_parser("report", help="figures + report.md of a finished run, from its folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--output", help="folder to write (default RUN/report)")

    p = sub.add_parser("compare", help="overlaid curves and a side-by-side table of several runs")
    p.add_argument("runs", nargs="+", help="two or more run folders")
    p.add_argument("--output", help="folder to write (default: compare-A-vs-B beside the first run)")

    p = sub.add_parser("average", help="average a run's checkpoints into a new run folder (checkpoint averaging)")
    p.add_argument("run", help="run folder with kept checkpoints (train.keep_last)")
    p.add_argument("--steps", type=_step_list, help="the checkpoints' steps, comma-separated, e.g. 300,600,900 "
                                                   "(default every kept checkpoint)")
    p.add_argument("--last", type=_int_at_least(2, " (an average needs two checkpoints)"),
                   help="the newest N kept checkpoints")
    p.add_argument("--greedy", action="store_true",
                   help="greedy soup: add checkpoints best-first, keeping each only if the mean scores no worse on "
                        "train.metric_for_best (validation and eval sets)")
    p.add_argument("--with", dest="with_runs", action="append", default=[], metavar="RUN[@STEPS]",
                   help="another run of the same recipe (it may differ in optim.* and train.*, not train.seed): its "
                        "kept checkpoints join the candidates, or only STEPS of them (RUN@1440,1448); repeat for "
                        "more runs")
    p.add_argument("--top", type=_int_at_least(2, " (a soup needs two candidates)"),
                   help="--greedy tries only the N candidates with the best logged metric (each try is a pass over "
                        "the validation split and eval sets)")
    p.add_argument("--toward-start", type=_fraction_list, metavar="FRACTIONS",
                   help="then move the average back towards the start of training (WiSE-FT; needs model.head_init="
                        "probe): each fraction is how much of what training changed is kept (LoRA's update scaled, "
                        "the head interpolated with the probe's; 0 is the probe alone, 1 the average itself); "
                        "each scored, the best on --metric written, a tie to the larger (e.g. 0.3,0.5,0.7)")
    p.add_argument("--metric", help="what --greedy and --toward-start choose on and the table shows, as "
                                    "train.metric_for_best (e.g. mean/accuracy; default the run's own)")
    p.add_argument("--no-test", action="store_true",
                   help="do not score the config's test split (slow on a base-size model on CPU; `textlora evaluate` "
                        "scores it later)")
    p.add_argument("--output", help="folder to write (default RUN-avg beside the run)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=positive_int, default=64)
    _add_base_model_flag(p)

    p = sub.add_parser("plan", help="LoRA configurations that fit a trainable-parameter budget, as a table and YAML")
    p.add_argument("--budget", type=int, required=True, help="most trainable parameters, e.g. 1000000")
    p.add_argument("--model", help="hub id or local folder (default: the --config's model, else roberta-base)")
    p.add_argument("--num-labels", type=_NUM_LABELS, default=4, help="classes of the head (default 4, AG News)")
    p.add_argument("--config", help="base config: the YAML printed is then this config with the planned model section")
    p.add_argument("--ranks", type=_rank_list, help="comma-separated LoRA ranks to consider (default 1,2,4,8,16,32,64)")
    p.add_argument("--head", choices=["standard", "linear", "mean"],
                   help="only this head (default standard and linear; mean costs what linear costs)")
    p.add_argument("--targets", help="only these target modules, comma-separated, e.g. query,key,value")
    p.add_argument("--layers", help="only this layer range, e.g. 8-11")
    p.add_argument("--top", type=positive_int, default=10, help="length of the shortlist")
    p.add_argument("--pick", type=int, default=1, help="shortlist entry whose YAML is printed")
    p.add_argument("--pretrained", action="store_true",
                   help="load the checkpoint to count modules it lacks (a local folder's safetensors tell without it)")
    p.add_argument("--output", help="also write the YAML to this file")
    p.add_argument("--json", action="store_true", help="print the shortlist as JSON instead of the table + YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides of --config")

    p = sub.add_parser("sweep", help="train a small grid into sibling run folders, then compare them")
    p.add_argument("config", help="base YAML config")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run (before --grid)")
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                   help="values to sweep, e.g. optim.name=adamw,rmsprop model.lora_r=4,8 (the grid is their product)")
    return parser


COMMANDS = {
    "train": cmd_train,
    "params": cmd_params,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "classify": cmd_classify,
    "report": cmd_report,
    "compare": cmd_compare,
    "average": cmd_average,
    "plan": cmd_plan,
    "sweep": cmd_sweep,
    "export": cmd_export,
    "serve": cmd_serve,
}


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a job scheduler) end the command as Ctrl-C does, by an exception:
    half-written outputs are then removed on the way out, as on any failure. Training and serving put their
    own handlers in place while they run."""
    import signal

    def terminated(signum, frame):
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminated)


def main(argv=None) -> int:
    if argv is None:  # the real command line (not a call from Python): run on tcmalloc where installed
        try:
            prepare_process()
        except TextloraError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        exit_on_sigterm()
    args = build_parser().parse_args(argv)
    # Tokenizer worker threads fight the training threads for 2 CPU cores; one is plenty here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        COMMANDS[args.command](args)
    except TextloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be made or written (a file where a folder should be, /proc, ...)
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # training says where it saved a checkpoint and how to resume
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
