"""Accuracy parity: the same configuration trained with the notebook stack and with textlora.

    python benchmarks/accuracy_parity.py                       # MiniLM-L6, 4,000 rows, 1 epoch, full test split
    python benchmarks/accuracy_parity.py --seeds 42,43,44      # several training seeds, means reported

Both arms train all-MiniLM-L6-v2 with the quickstart's LoRA (r=8, alpha 16, dropout 0.1 on
query/value), on the same real AG News train rows, for the same epochs, with the same batch,
learning rate, schedule, gradient clipping, truncation length and seed, and are scored on the
full AG News test split:

- ``notebook``: Trainer + ``get_peft_model`` with ``padding=True`` in ``datasets.map``, then a
  batch-8 prediction loop on the unmerged model (each batch padded on its own: the same labels as
  the notebooks' chunk-padded loop, faster);
- ``textlora``: ``textlora.training.recipe.train`` with the test split as ``data.test`` (its own evaluation);
- ``textlora-fp32``: the same in fp32 (``textlora`` uses bf16 autocast on CPUs with AMX), for the accuracy
  effect of bf16;
- ``textlora-random-batches``: the same with ``train.length_pool_batches=1`` (batches of random rows, as the
  notebooks draw them, instead of length-grouped ones), for the accuracy effect of length grouping.

``--reuse-results`` keeps the results already in ``--workdir`` (same rows and setup, checked) and runs
only the missing arm/seed pairs: an arm can be added without training the slow notebook arm again.

Both score their final model (textlora validates only after its last step, so nothing is picked
on validation). The target: textlora's test accuracy >= the notebook stack's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/accuracy_parity.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks import common as bc
from benchmarks import stacks

ARMS = ("notebook", "textlora", "textlora-fp32", "textlora-random-batches", "textlora-torch-dropout")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--data", default=None, help="AG News train CSV (default: ../shared train rows)")
    p.add_argument("--test", default=None, help="AG News test CSV (default: the full test split)")
    p.add_argument("--rows", type=int, default=4000, help="training rows")
    p.add_argument("--val-rows", type=int, default=200, help="validation rows textlora checks after training")
    p.add_argument("--test-rows", type=int, default=None, help="score on a sample of the test split (default: all)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32, help="the quickstart's batch")
    p.add_argument("--max-length", type=int, default=None,
                   help="truncation length of both arms (default: the model's limit, where the notebooks truncate)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", default="42", help="training seeds, comma-separated")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the row sample")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--arms", default="notebook,textlora", help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--baseline", default=None, choices=ARMS,
                   help="the arm every other arm is compared with, seed by seed (default: notebook, when it runs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per arm (default: torch's own)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--reuse-results", action="store_true",
                   help="keep the arm/seed results already in --workdir (same rows and setup) and run the rest")
    p.add_argument("--out", default=str(bc.REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    p.add_argument("--section", default=None, help="section name in --out (default accuracy_parity-DEVICE)")
    p.add_argument("--child", default=None, choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"--arms: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if args.baseline is not None and args.baseline not in arms:
        p.error(f"--baseline {args.baseline} is not one of --arms ({args.arms}); add it there or pick another")
    args.baseline = args.baseline or "notebook"
    args.arm_list = arms
    return args


def run_arm(arm: str, setup: stacks.TrainSetup, workdir: Path) -> dict:
    """Train ``arm`` on ``workdir/train.csv`` and score it on ``workdir/test.csv``."""
    started = time.perf_counter()
    if arm == "notebook":
        trainer = stacks.build_trainer_arm(setup, workdir / "train.csv", True, workdir / f"trainer-{setup.seed}")
        train_start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - train_start
        tokenizer = trainer.processing_class
        test = bc.read_rows(workdir / "test.csv")
        # Scored with batches padded on their own: the same labels as the notebooks' chunk-padded loop
        # (predict_speed.py checks it: 100% agreement), in a quarter of the time. Padding is masked out.
        preds = stacks.notebook_predict(trainer.model, tokenizer, test.texts, 8, setup.device, chunk_padding=False)
        accuracy = float(np.mean(preds == np.asarray(test.labels)))
        losses, precision = stacks.trainer_losses(trainer), "fp32"  # the Trainer's default: the notebooks set none
    else:
        from textlora.config import load_config
        from textlora.training.recipe import train

        overrides = stacks.textlora_overrides(setup, workdir / "train.csv", workdir / "val.csv", workdir / "runs",
                                          f"parity-{setup.seed}-{int(time.time())}", test_csv=workdir / "test.csv",
                                          extra=stacks.TEXTLORA_ARM_OVERRIDES.get(arm, ()))
        run_dir = train(load_config(None, tuple(overrides)), config_name="parity")
        summary = json.loads((run_dir / "summary.json").read_text())
        train_s = summary["train_seconds"]
        accuracy, losses = summary["test_accuracy"], stacks.textlora_losses(run_dir)
        precision = summary["precision"]
    return {"arm": arm, "precision": precision, "seed": setup.seed, "test_accuracy": round(accuracy, 4),
            "final_loss": bc.mean_last(losses),
            "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - started, 1),
            **bc.peak_memory_mb()}


def write_inputs(content, path: Path, reuse: bool) -> None:
    """Write rows (``bc.Rows``) or text to ``path``; with ``reuse`` an existing file must hold exactly that."""
    fresh = path.with_name(path.name + ".new")
    if isinstance(content, str):
        fresh.write_text(content)
    else:
        bc.write_rows(content, fresh)
    if reuse and path.is_file() and path.read_bytes() != fresh.read_bytes():
        fresh.unlink()
        raise SystemExit(f"--reuse-results: {path} holds other rows or another setup than these arguments give; "
                         "use the arguments of the earlier run or a new --workdir")
    fresh.replace(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="textlora-parity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        saved = json.loads((workdir / "setup.json").read_text())
        setup = stacks.TrainSetup(**{**saved, "targets": tuple(saved["targets"]), "seed": args.seed})
        bc.save_json(Path(args.result), run_arm(args.child, setup, workdir))
        return 0
    device = bc.pick_device(args.device)
    data = Path(args.data) if args.data else bc.default_train_data()
    test = Path(args.test) if args.test else bc.default_test_data()
    write_inputs(bc.load_agnews(data, args.rows, args.data_seed), workdir / "train.csv", args.reuse_results)
    write_inputs(bc.load_agnews(data, args.val_rows, args.data_seed, skip=args.rows), workdir / "val.csv",
                 args.reuse_results)
    test_rows = bc.load_agnews(test, args.test_rows, args.data_seed)
    write_inputs(test_rows, workdir / "test.csv", args.reuse_results)
    model_dir = bc.materialize_model(args.model or bc.default_model("cpu"), workdir)
    # The notebooks truncate at the tokenizer's limit (512 for MiniLM and RoBERTa): textlora gets the same
    # length, or its default of 128 would cut the 0.7% of AG News test texts that are longer.
    max_length = args.max_length or bc.model_token_limit(model_dir)
    setup = stacks.TrainSetup(model_dir=model_dir, device=device, batch_size=args.batch_size, epochs=args.epochs,
                              lr=args.lr, max_length=max_length, log_every=10)
    write_inputs(json.dumps(asdict(setup)), workdir / "setup.json", args.reuse_results)
    args.threads_note = bc.limit_threads(args.threads)
    arms = args.arm_list
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in arms:
            result_file = workdir / f"result-{arm}-{seed}.json"
            if args.reuse_results and result_file.is_file():
                print(f"[bench] arm {arm}, seed {seed}: kept from {result_file}", flush=True)
                kept = json.loads(result_file.read_text())
                # A result saved before run_child kept the launcher's measurement has only the child's own.
                kept.setdefault("process_peak_rss_mb", kept["peak_rss_mb"])
                results.append(kept)
                continue
            print(f"\n[bench] ---- arm {arm}, seed {seed} ----", flush=True)
            argv_child = ["--child", arm, "--seed", str(seed), "--workdir", str(workdir)]
            results.append(bc.run_child(Path(__file__).resolve(), argv_child, result_file))
    text = report(args, setup, results, len(test_rows.texts), data, test)
    bc.publish_section(args.out, args.section or f"accuracy_parity-{device}", text)
    print(f"[bench] files in {workdir}")
    return 0


def paired_difference(results: list[dict], arm: str, baseline: str, test_count: int) -> str:
    """Mean of the per-seed accuracy differences ``arm - baseline``, its standard error and 95% interval (t)."""
    from scipy.stats import t as student_t

    by_seed = {(r["arm"], r["seed"]): r["test_accuracy"] for r in results}
    diffs = np.array([by_seed[arm, seed] - by_seed[baseline, seed] for a, seed in by_seed
                      if a == arm and (baseline, seed) in by_seed])
    error = diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    half_width = student_t.ppf(0.975, len(diffs) - 1) * error if len(diffs) > 1 else float("nan")
    target = "; target: >= 0" if baseline == "notebook" else ""
    return (f"- {arm} - {baseline}, paired by seed: {diffs.mean():+.4f} +/- {error:.4f} (standard error over "
            f"{len(diffs)} seeds; 95% interval {diffs.mean() - half_width:+.4f} to {diffs.mean() + half_width:+.4f}; "
            f"{diffs.mean() * test_count:+.0f} of {test_count:,} test rows{target}); "
            f"per seed {', '.join(f'{d:+.4f}' for d in diffs)}")


def report(args, setup: stacks.TrainSetup, results: list[dict], test_count: int, data: Path, test: Path) -> str:
    table = [[r["arm"], r["seed"], r["precision"], r["test_accuracy"], r["final_loss"], r["train_s"],
              r["process_peak_rss_mb"]] for r in results]
    means = {arm: float(np.mean([r["test_accuracy"] for r in results if r["arm"] == arm]))
             for arm in dict.fromkeys(r["arm"] for r in results)}
    lines = [f"- mean test accuracy of {arm}: **{value:.4f}**" for arm, value in means.items()]
    for arm in [a for a in means if a != args.baseline and args.baseline in means]:
        lines.append(paired_difference(results, arm, args.baseline, test_count))
    text = bc.section_head(f"Accuracy parity: {setup.device}, {Path(setup.model_dir).name}") + [
            f"{args.rows:,} real AG News train rows from {data} (sample seed {args.data_seed}), {setup.epochs:g} "
            f"epoch(s), batch {setup.batch_size}, texts truncated at {setup.max_length} tokens, LoRA r={setup.lora_r} alpha={setup.lora_alpha:g} dropout "
            f"{setup.lora_dropout} on {','.join(setup.targets)}, AdamW lr {setup.lr:g} weight decay "
            f"{setup.weight_decay}, linear schedule with {setup.warmup_ratio:g} warm-up, gradient clipping "
            f"{setup.max_grad_norm}; final models scored on {test_count:,} rows of {test}. Notebook: Trainer + PEFT, "
            "`padding=True` in `datasets.map`, batch-8 prediction loop (batches padded on their own). textlora: its own training and evaluation. "
            f"Each arm in its own process, with {args.threads_note}.", "",
            bc.markdown_table(["arm", "seed", "precision", "test accuracy", "final train loss", "train s", "peak RSS (MB)"], table),
            "", *lines]
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
