"""Prediction speed of textlora vs the notebooks' batch-8 loop, and predict's memory as rows grow.

    python benchmarks/predict_speed.py                          # /tmp/runs/qs-timed on the 7,600 test rows
    python benchmarks/predict_speed.py --run runs/quickstart --rows 2000
    python benchmarks/predict_speed.py --memory-scaling         # peak RSS of `textlora predict`, 10k..1M rows

Speed: the same trained run and the same rows, each arm in its own process, timed from the run
folder and a CSV to a predictions CSV (imports excluded, model loading included):

- ``notebook``: the published notebooks' loop: base model + ``PeftModel.from_pretrained`` (unmerged),
  ``padding=True`` inside ``datasets.map(batched=True)`` (each 1,000-row chunk padded to its longest
  text), ``DataLoader`` of 8 with ``DataCollatorWithPadding``, forward under ``torch.no_grad``, argmax;
- ``notebook-dynamic``: the same loop made more generous: each batch of 8 tokenized and padded on its own;
- ``textlora``: ``textlora.commands.predict.predict`` (what ``textlora predict`` runs), in the run's precision
  (bf16 on a CPU with AMX for a run trained with ``auto``);
- ``textlora-fp32``: the same with ``precision="fp32"``, to isolate what bf16 gives.

Memory scaling: ``textlora predict`` (the CLI, a fresh process per size) on synthetic CSVs whose
rows are drawn with replacement from the real AG News texts; peak RSS per size. To keep a million
rows feasible on a small CPU the default model is a tiny randomly initialised 2-layer BERT with the
MiniLM tokenizer, trained for one step into a run folder (``--real-model`` uses ``--run`` instead):
memory flatness is a property of the streaming, not of the model size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/predict_speed.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks import common as bc
from benchmarks import stacks

DEFAULT_RUN = Path("/tmp/runs/qs-timed")
ARMS = ("notebook", "notebook-dynamic", "textlora", "textlora-fp32")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(DEFAULT_RUN), help="a finished run folder (default: the timed quickstart)")
    p.add_argument("--data", default=None, help="AG News CSV to take rows from (default: the test split)")
    p.add_argument("--rows", type=int, default=7600, help="rows to predict in the speed comparison")
    p.add_argument("--notebook-batch", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=None, help="textlora's --batch-size (default: its own)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: torch's own)")
    p.add_argument("--memory-scaling", action="store_true", help="peak RSS of `textlora predict` as rows grow")
    p.add_argument("--sizes", default="10000,100000,1000000", help="row counts for --memory-scaling")
    p.add_argument("--real-model", action="store_true", help="--memory-scaling with --run instead of a tiny model")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=str(bc.REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    p.add_argument("--child", default=None, choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- arms (child processes)

def notebook_arm(run_dir: Path, rows_csv: Path, output: Path, batch_size: int, device: str,
                 chunk_padding: bool = True) -> dict:
    """The notebooks' loop on the run's adapter, unmerged; writes ``ID,Label`` like textlora does."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from textlora.config import config_from_yaml_file
    from textlora.model.build import resolve_model_location

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    config = config_from_yaml_file(run_dir / "config.yaml")
    labels = json.loads((run_dir / "labels.json").read_text())
    num_labels = len(labels.get("names", labels.get("label_names", bc.LABEL_NAMES)))
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    # The run keeps its model as given (a pkg: spec, say): resolved here as textlora resolves it.
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model_location(config.model.name_or_path),
                                                              num_labels=num_labels)
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    texts = bc.read_rows(rows_csv).texts
    loop_start = time.perf_counter()
    preds = stacks.notebook_predict(model, tokenizer, texts, batch_size, device, chunk_padding)
    loop_s = time.perf_counter() - loop_start
    with output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "Label"])
        writer.writerows(enumerate(preds.tolist()))
    return {"seconds": round(time.perf_counter() - started, 3), "loop_s": round(loop_s, 3)}


def textlora_arm(run_dir: Path, rows_csv: Path, output: Path, batch_size, device: str, precision: str = "run") -> dict:
    """``textlora.commands.predict.predict`` on the CSV (its public entry point, what the CLI calls)."""
    from textlora.config import DataSource
    from textlora.commands.predict import predict

    started = time.perf_counter()
    source = DataSource(path=str(rows_csv), column_names=None, text_columns=["text"], label_column="label")
    kwargs = {"device": device, "precision": precision} | ({"batch_size": batch_size} if batch_size else {})
    counts = predict(run_dir, source, output, **kwargs)
    return {"seconds": round(time.perf_counter() - started, 3), "precision": counts["precision"]}


def read_predictions(path: Path) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(path)["Label"].to_numpy()


# ---------------------------------------------------------------- speed (parent)

def speed(args, workdir: Path) -> str:
    run_dir = Path(args.run)
    if not (run_dir / "adapter").is_dir():
        raise SystemExit(f"{run_dir} is not a finished run folder; train one (bash scripts/quickstart.sh) or pass --run")
    data = Path(args.data) if args.data else bc.default_test_data()
    rows = bc.load_agnews(data, args.rows, args.seed)
    bc.write_rows(rows, workdir / "rows.csv")  # the children read it from the work folder
    device = bc.pick_device(args.device)
    results = {}
    for arm in ARMS:
        print(f"\n[bench] ---- predict arm {arm} ----", flush=True)
        argv = ["--child", arm, "--run", str(run_dir), "--workdir", str(workdir), "--device", device,
                "--notebook-batch", str(args.notebook_batch)]
        argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
        result = bc.run_child(Path(__file__).resolve(), argv, workdir / f"result-{arm}.json")
        preds = read_predictions(workdir / f"pred-{arm}.csv")
        if len(preds) != len(rows.labels):
            raise SystemExit(f"arm {arm} wrote {len(preds)} predictions for {len(rows.labels)} rows")
        result["accuracy"] = float(np.mean(preds == np.asarray(rows.labels)))
        result["preds"] = preds
        results[arm] = result
    from textlora.config import config_from_yaml_file

    base = config_from_yaml_file(run_dir / "config.yaml").model.name_or_path
    agree = {arm: float(np.mean(results["notebook"]["preds"] == results[arm]["preds"]))
             for arm in ("textlora", "textlora-fp32")}
    n = len(rows.labels)
    table = [[arm, f"{r['seconds']:.1f}", round(n / r["seconds"], 1), r["process_peak_rss_mb"], round(r["accuracy"], 4)]
             for arm, r in results.items()]
    ratio = results["notebook"]["seconds"] / results["textlora"]["seconds"]
    generous = results["notebook-dynamic"]["seconds"] / results["textlora"]["seconds"]
    loop_rate = n / results["notebook"]["loop_s"]
    text = bc.section_head(f"Prediction speed: {device}, {n:,} rows") + [
            f"Run folder {run_dir} (base model {base}); {n:,} real AG News rows from "
            f"{data}. Each arm in its own process ({args.threads_note}), timed from the run folder and a CSV to a "
            "predictions CSV (imports excluded, model loading included).", "",
            bc.markdown_table(["arm", "seconds", "samples/s", "peak RSS (MB)", "accuracy"], table), "",
            f"- textlora / notebook batch-{args.notebook_batch} loop: **{ratio:.2f}x** samples/s (target >= 5x); "
            f"textlora / the generous per-batch-padded loop: {generous:.2f}x; "
            f"the notebook's loop alone (model already loaded, nothing written) ran at {loop_rate:,.1f} samples/s; "
            f"textlora end to end is {n / results['textlora']['seconds'] / loop_rate:.2f}x that.",
            f"- textlora / textlora-fp32: {results['textlora-fp32']['seconds'] / results['textlora']['seconds']:.2f}x "
            f"(textlora ran in {results['textlora']['precision']}).",
            f"- labels the same as the notebook loop's (fp32, unmerged LoRA, other padding): textlora "
            f"{agree['textlora']:.2%}, textlora-fp32 {agree['textlora-fp32']:.2%} of rows."]
    return "\n".join(text)


# ---------------------------------------------------------------- memory scaling (parent)

def tiny_run(workdir: Path, data: Path) -> Path:
    """A run folder for a randomly initialised 2-layer BERT (hidden 32) with the MiniLM tokenizer, trained one step."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from textlora.config import load_config
    from textlora.training.recipe import train

    model_dir = workdir / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(bc.materialize_model(bc.default_model("cpu"), workdir))
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(model_dir)
    bc.write_rows(bc.load_agnews(data, 200, 0), workdir / "tiny-train.csv")
    bc.write_rows(bc.load_agnews(data, 32, 0, skip=200), workdir / "tiny-val.csv")
    setup = stacks.TrainSetup(model_dir=str(model_dir), lora_r=4, lora_alpha=8, batch_size=16, steps=1, log_every=1)
    overrides = stacks.textlora_overrides(setup, workdir / "tiny-train.csv", workdir / "tiny-val.csv", workdir / "runs",
                                          "tiny-predict")
    config = load_config(None, tuple(overrides))
    return train(config, config_name="tiny")


def write_synthetic(texts: list[str], labels: list[int], count: int, path: Path, seed: int) -> float:
    """``count`` rows drawn with replacement from ``texts``, written in chunks; returns the file's MB."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        for start in range(0, count, 100_000):
            picked = rng.integers(0, len(texts), size=min(100_000, count - start))
            writer.writerows((labels[i], texts[i]) for i in picked)
    return path.stat().st_size / 2**20


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def _cli_allocator() -> str:
    """The allocator ``textlora`` runs on from this environment (it re-executes itself on tcmalloc/jemalloc)."""
    from textlora.speed import allocator

    library = allocator.resolve(os.environ.get(allocator.ENV, "auto"))
    return f"{library} ({allocator.ENV}={os.environ.get(allocator.ENV, 'auto')})" if library else "glibc malloc"


def memory_scaling(args, workdir: Path) -> str:
    data = Path(args.data) if args.data else bc.default_train_data()
    run_dir = Path(args.run) if args.real_model else tiny_run(workdir, data)
    pool = bc.load_agnews(data)
    sizes = [int(s) for s in args.sizes.split(",")]
    table = []
    for size in sizes:
        rows_csv, output = workdir / f"synthetic-{size}.csv", workdir / f"pred-{size}.csv"
        megabytes = write_synthetic(pool.texts, pool.labels, size, rows_csv, args.seed)
        print(f"\n[bench] ---- textlora predict on {size:,} rows ({megabytes:,.0f} MB) ----", flush=True)
        cmd = [sys.executable, "-m", "textlora.cli", "predict", str(run_dir), "--data", str(rows_csv), "--header",
               "--text-columns", "text", "--output", str(output), "--device", args.device]
        measured = bc.run_measured(cmd + (["--batch-size", str(args.batch_size)] if args.batch_size else []))
        if measured["returncode"] != 0:
            raise SystemExit(f"textlora predict failed on {size} rows (exit {measured['returncode']})")
        written = count_lines(output) - 1
        if written != size:
            raise SystemExit(f"textlora predict wrote {written} rows for {size}")
        table.append([f"{size:,}", round(megabytes, 1), measured["peak_rss_mb"], measured["wall_s"],
                      round(size / measured["wall_s"], 1)])
        rows_csv.unlink()
        output.unlink()
    first, last = table[0][2], table[-1][2]
    model = f"the run {run_dir}" if args.real_model else \
        "a tiny randomly initialised 2-layer BERT (hidden 32, MiniLM tokenizer, vocabulary 30,522) trained one step"
    text = bc.section_head(f"Predict memory as rows grow ({args.device})") + [
            f"`textlora predict` in a fresh process per size on a CSV of rows drawn with replacement from the "
            f"{len(pool.texts):,} real AG News texts of {data}; model: {model}; {args.threads_note}; "
            f"the command's memory allocator: {_cli_allocator()}. Peak RSS from os.wait4.", "",
            bc.markdown_table(["rows", "CSV (MB)", "peak RSS (MB)", "wall s", "rows/s"], table), "",
            f"- peak RSS grew {last - first:+,.0f} MB ({last / first:.2f}x) from {sizes[0]:,} to {sizes[-1]:,} rows; "
            f"{last / 1024:.2f} GB at {sizes[-1]:,} rows (target < 2 GB at 1M rows, flat as rows grow)."]
    return "\n".join(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="textlora-predict-speed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        inputs = (Path(args.run), workdir / "rows.csv", workdir / f"pred-{args.child}.csv")
        if args.child.startswith("textlora"):
            precision = "fp32" if args.child == "textlora-fp32" else "run"
            result = textlora_arm(*inputs, args.batch_size, args.device, precision)
        else:
            result = notebook_arm(*inputs, args.notebook_batch, args.device, args.child == "notebook")
        bc.save_json(Path(args.result), result)
        return 0
    args.threads_note = bc.limit_threads(args.threads)
    if args.memory_scaling:
        text, section = memory_scaling(args, workdir), f"predict_memory-{args.device}"
    else:
        text, section = speed(args, workdir), f"predict_speed-{bc.pick_device(args.device)}"
    bc.publish_section(args.out, section, text)
    print(f"[bench] files in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
