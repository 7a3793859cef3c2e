"""Training speed: the Trainer + PEFT notebook stack vs best-practice Trainer vs textlora, in one run.

    python benchmarks/train_speed.py                           # CPU: all-MiniLM-L6-v2, real AG News rows
    python benchmarks/train_speed.py --steps 20 --rows 960     # a quick look
    python benchmarks/train_speed.py --lora-layout top --arms textlora-nocache,textlora-cache \\
        --rows 960 --steps 60 --from-epoch 2                   # prefix cache, epoch 2 onwards

Each arm trains in its own process (so peak memory is per arm) on the same model, the same training
rows and the same number of optimizer steps, with the same LoRA setup, learning rate, schedule,
gradient clipping and seed:

- ``notebook``: ``Trainer`` + ``get_peft_model``, ``padding=True, truncation=True`` inside
  ``datasets.map(batched=True)``, ``DataCollatorWithPadding``, the device's default precision;
- ``best-practice``: the same without padding in ``map``, length-grouped sampling, dynamic padding,
  bf16 where it is supported and pays (CUDA; CPUs with AMX);
- ``textlora``: ``textlora.training.recipe.train`` through its config overrides;
- ``textlora-fp32``: textlora in fp32, to isolate what ``train.mixed_precision: auto`` gives (bf16 on
  CPUs with AMX and on GPUs);
- ``textlora-torch-dropout``: textlora with torch's own dropout (``train.fast_cpu_dropout=false``), to
  isolate what its CPU dropout masks give;
- ``textlora-compile``: textlora with ``train.compile=true`` (``torch.compile``, inductor); its first
  steps compile, so give it enough ``--steps`` beyond ``--skip-steps`` on a GPU;
- ``textlora-base-fp32`` / ``textlora-base-bf16``: textlora with the frozen base stored in fp32 / bf16
  (``model.base_dtype``), everything else as ``auto`` picks it;
- ``textlora-cache`` / ``textlora-nocache``: textlora with the frozen-prefix cache forced on / off
  (``stacks.TEXTLORA_ARM_OVERRIDES``), for the top-layer layout (plain ``textlora`` keeps its default).

Throughput is measured between optimizer steps (step ``skip`` to the last), so model loading,
tokenization and the first step are reported separately as set-up. ``--rounds N`` runs the arms N
times in turn (A B A B ...) and gives each ratio per round and as their median: a shared machine's
speed drifts by more than some of the differences measured here. Results: a markdown table printed
and written as a section of BENCHMARKS.md, together with this command.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # set-up time counts from here: imports are part of it

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a file: python benchmarks/train_speed.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc
from benchmarks import stacks

AGNEWS_TRAIN_ROWS = 120_000  # the full AG News train split, for the GPU epoch-time projection
ARMS = ("notebook", "best-practice", "textlora", "textlora-fp32", "textlora-torch-dropout", "textlora-cache",
        "textlora-nocache", "textlora-compile", "textlora-base-fp32", "textlora-base-bf16")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default=None, help="model folder; default MiniLM-L6 on CPU, roberta-base shape on CUDA")
    p.add_argument("--data", default=None, help="AG News CSV (label,title,description); default ../shared train rows")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per arm")
    p.add_argument("--rows", type=int, default=None, help="training rows (default steps x batch: one epoch)")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--arms", default="notebook,best-practice,textlora", help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--lora-layout", default="all", choices=["all", "top"], help="LoRA on all layers or the top third")
    p.add_argument("--targets", default="query,value", help="LoRA target modules, e.g. query,key,value")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (S1's layout: 4)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (S1's layout: 96)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-length", type=int, default=128, help="truncation of best-practice and textlora")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-steps", type=int, default=1, help="steps excluded from the timed window (warm-up)")
    p.add_argument("--from-epoch", type=int, default=None, help="time only epochs >= this one (overrides --skip-steps)")
    p.add_argument("--bp-bf16", default="auto", choices=["auto", "yes", "no"], help="bf16 in the best-practice arm")
    p.add_argument("--textlora-override", action="append", default=[], help="extra key=value for textlora's arms")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per arm (default: torch's own)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the arms this many times, in turn (A B A B ...): ratios per round and their median")
    p.add_argument("--val-rows", type=int, default=64, help="validation rows textlora checks once, after timing")
    p.add_argument("--workdir", default=None, help="where rows, run folders and arm results go (default: a temp dir)")
    p.add_argument("--out", default=str(bc.REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    p.add_argument("--section", default=None, help="section name in --out (default train_speed-DEVICE-LAYOUT)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = bc.check_arms(args.arm_list, ARMS)
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}, each optionally with "
                f"+{' or +'.join(bc.ALLOCATORS)} (that allocator preloaded)")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


# ---------------------------------------------------------------- one arm (child process)

def run_arm(arm: str, setup: stacks.TrainSetup, workdir: Path, skip: int, bp_bf16: str = "auto",
            extra_overrides: tuple[str, ...] = (), started: float = PROCESS_START) -> dict:
    """Train one arm on ``workdir/train.csv``; returns its measurements."""
    allocator = bc.check_allocator(arm)
    base = bc.split_allocator(arm)[0]
    meter = bc.StepMeter(total_steps=setup.steps, skip=skip, cuda=setup.device == "cuda")
    if base in ("notebook", "best-practice"):
        result = _trainer_arm(base, setup, workdir, meter, bp_bf16)
    else:
        overrides = stacks.TEXTLORA_ARM_OVERRIDES.get(base, ()) + tuple(extra_overrides)
        result = _textlora_arm(arm, setup, workdir, meter, overrides)
    meter.stop()
    window = meter.window(setup.batch_size)
    first = meter.first_forward or (meter.marks[0][0] if meter.marks else time.perf_counter())
    return {"arm": arm, "allocator": allocator, **result, **window, "setup_s": round(first - started, 2),
            "wall_s": round(time.perf_counter() - started, 2), "trainable_params": meter.trainable,
            "final_loss": bc.mean_last(result.pop("losses")), **bc.peak_memory_mb()}


def _trainer_arm(arm: str, setup: stacks.TrainSetup, workdir: Path, meter: bc.StepMeter, bp_bf16: str) -> dict:
    import torch

    notebook = arm == "notebook"
    bf16, why = False, "fp32: the Trainer's default precision (the notebooks set none)"
    if not notebook:
        if setup.device == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            why = "bf16: supported by this GPU" if bf16 else "fp32: this GPU has no bf16"
        else:
            bf16, why = stacks.cpu_bf16_beneficial()
        if bp_bf16 != "auto":
            bf16, why = bp_bf16 == "yes", f"{'bf16' if bp_bf16 == 'yes' else 'fp32'}: forced by --bp-bf16"
    trainer = stacks.build_trainer_arm(setup, workdir / "train.csv", notebook, workdir / f"trainer-{arm}", bf16)
    meter.attach_model(trainer.model)
    meter.start()
    trainer.train()
    return {"precision": why, "losses": stacks.trainer_losses(trainer)}


def _textlora_arm(arm: str, setup: stacks.TrainSetup, workdir: Path, meter: bc.StepMeter, overrides: tuple) -> dict:
    import textlora.training.recipe as tl_train
    from textlora.config import load_config

    config = load_config(None, tuple(stacks.textlora_overrides(setup, workdir / "train.csv", workdir / "val.csv",
                                                           workdir / "runs", f"{arm}-{int(time.time())}",
                                                           extra=overrides)))
    # Count rows and tokens on the model textlora builds, without changing how it trains.
    build_model = tl_train.build_model

    def build_and_attach(*args, **kwargs):
        built = build_model(*args, **kwargs)
        meter.attach_model(built.model)
        return built

    tl_train.build_model = build_and_attach
    meter.start()
    try:
        run_dir = tl_train.train(config, config_name=arm)
    finally:
        tl_train.build_model = build_model
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"precision": f"{summary['precision']}: textlora's train.mixed_precision={config.train.mixed_precision}, "
                         f"base {summary.get('base_dtype', 'fp32')}",
            "losses": stacks.textlora_losses(run_dir), "textlora_own_samples_per_s": summary.get("train_samples_per_s"),
            "prefix_cache": summary.get("prefix_cache"), "run_dir": str(run_dir)}


# ---------------------------------------------------------------- orchestration (parent process)

def prepare(args) -> tuple[stacks.TrainSetup, Path, int]:
    """Rows, model folder and the shared setup in the work folder; returns setup, workdir, skip."""
    device = bc.pick_device(args.device)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="textlora-train-speed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = bc.materialize_model(args.model or bc.default_model(device), workdir)
    count = args.rows or args.steps * args.batch_size
    data = Path(args.data) if args.data else bc.default_train_data()
    bc.write_rows(bc.load_agnews(data, count, args.seed), workdir / "train.csv")
    bc.write_rows(bc.load_agnews(data, args.val_rows, args.seed, skip=count), workdir / "val.csv")
    setup = stacks.TrainSetup(model_dir=model_dir, device=device, targets=tuple(args.targets.split(",")),
                          lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                          batch_size=args.batch_size, steps=args.steps, lr=args.lr, max_length=args.max_length,
                          seed=args.seed, log_every=max(1, args.steps // 10))
    if args.lora_layout == "top":
        setup = replace(setup, layers=stacks.top_third(model_dir))
    skip = args.skip_steps
    if args.from_epoch:
        skip = (args.from_epoch - 1) * bc.steps_per_epoch(count, args.batch_size)
    if not 0 <= skip < args.steps:
        raise SystemExit(f"the timed window starts after step {skip}, but only {args.steps} steps run; "
                         "raise --steps or lower --skip-steps / --from-epoch")
    (workdir / "setup.json").write_text(json.dumps({**asdict(setup), "skip": skip, "data": str(data), "rows": count}))
    return setup, workdir, skip


def report(args, setup: stacks.TrainSetup, results: list[dict], meta: dict) -> str:
    """Markdown: the setting, one table row per arm, and the ratios between arms."""
    header = ["arm", "samples/s", "real tokens/s", "padded / real tokens", "peak RSS (MB)", "peak CUDA (MB)",
              "final loss", "timed s", "set-up s", "trainable", "precision"]
    rows = [[r["arm"], r["samples_per_s"], r["real_tokens_per_s"], r["pad_ratio"], r["process_peak_rss_mb"],
             r.get("peak_cuda_mb"), r["final_loss"], r["window_s"], r["setup_s"], r["trainable_params"],
             r["precision"]] for r in results]
    rounds = max(r.get("round", 1) for r in results)
    if rounds > 1:
        header.insert(1, "round")
        for row, r in zip(rows, results):
            row.insert(1, r["round"])
    # samples/s by arm, one per round: a ratio compares arms of the same round, run one after the other.
    by_arm: dict[str, list[float]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r["samples_per_s"])
    ratios, compared = [], set()

    def add_ratio(a: str, b: str, target: Optional[str]) -> None:
        if a in by_arm and b in by_arm and (a, b) not in compared:
            compared.add((a, b))
            goal = f" (target >= {target})" if target else ""
            per_round = [x / y for x, y in zip(by_arm[a], by_arm[b])]
            spread = f" (median of {rounds} rounds: {', '.join(f'{x:.2f}' for x in per_round)})" if rounds > 1 else ""
            ratios.append(f"- {a} / {b}: **{statistics.median(per_round):.2f}x** train samples/s{spread}{goal}")

    pairs = (("textlora", "notebook", "8x on CPU, all-layer LoRA"),
             ("textlora", "best-practice", "1.5x on CPU, all-layer LoRA"),
             ("textlora", "textlora-fp32", None),
             ("textlora", "textlora-torch-dropout", None),
             ("textlora-compile", "textlora", None),
             ("textlora-cache", "textlora-nocache", "2.5x, top-layer LoRA"),
             ("textlora-base-bf16", "textlora-base-fp32", "2x at base size on CPUs with native bf16"))
    for suffix in ("", *(f"+{name}" for name in bc.ALLOCATORS)):  # both arms on the same allocator
        for a, b, target in pairs:
            add_ratio(a + suffix, b + suffix, target)
    for suffix in (f"+{name}" for name in bc.ALLOCATORS):
        for a, b, target in pairs[:2]:  # textlora as its command runs, the Trainers as they run by default
            add_ratio(a + suffix, b, target)
    for arm in list(by_arm):  # each allocator's own gain
        if bc.split_allocator(arm)[1]:
            add_ratio(arm, bc.split_allocator(arm)[0], None)
    for arm in ("textlora", "textlora-compile"):
        if setup.device == "cuda" and arm in by_arm:
            # From the timed window's rate: set-up (loading, tokenization) and the untimed first steps
            # (where compiling happens) are left out.
            ratios.append(f"- a {AGNEWS_TRAIN_ROWS:,}-text AG News epoch at {arm}'s rate: "
                          f"**{AGNEWS_TRAIN_ROWS / statistics.median(by_arm[arm]):.1f} s** "
                          "(target <= 15 s on an H100-class GPU)")
    for r in results[:len(by_arm)]:  # the cache is the same in every round
        if r.get("prefix_cache"):
            ratios.append(f"- {r['arm']}: prefix cache {json.dumps(r['prefix_cache'])} (built before the first "
                          "step: part of set-up)")
    layers = f"layers {setup.layers_spec}" if setup.layers else "all layers"
    window = (f"steps {meta['skip'] + 1}-{setup.steps} timed" if meta["skip"] else f"all {setup.steps} steps timed")
    text = bc.section_head(f"Training speed: {setup.device}, LoRA on {layers} ({Path(setup.model_dir).name})") + [
            f"{meta['rows']:,} real AG News train rows ({meta['data']}), batch {setup.batch_size}, "
            f"{setup.steps} optimizer steps per arm ({window}){_rounds_note(rounds, len(by_arm))}; "
            f"LoRA r={setup.lora_r} alpha={setup.lora_alpha:g} "
            f"dropout {setup.lora_dropout} on {','.join(setup.targets)} of {layers}; AdamW lr {setup.lr:g}, "
            f"weight decay {setup.weight_decay}, linear schedule with {setup.warmup_ratio:g} warm-up, gradient "
            f"clipping {setup.max_grad_norm}, seed {setup.seed}. Every arm ran in its own process, with "
            f"{meta['threads']}.", "",
            bc.markdown_table(header, rows), "", *ratios, "",
            "samples/s and tokens/s are measured between optimizer steps (the timed window); set-up is "
            "everything before the first training step (imports, model load, tokenization). "
            "Padded / real tokens: tokens the model ran on per real (non-pad) token. Final loss: mean of the "
            f"last three logged training losses (logged every {setup.log_every} steps). Peak RSS: the arm's "
            "process (os.wait4)."]
    return "\n".join(text)


def _rounds_note(rounds: int, arms: int) -> str:
    return f", {rounds} rounds of the {arms} arms in turn" if rounds > 1 else ""


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        saved = json.loads((Path(args.workdir) / "setup.json").read_text())
        skip = saved.pop("skip")
        saved.pop("data"), saved.pop("rows")
        setup = stacks.TrainSetup(**{**saved, "targets": tuple(saved["targets"]),
                                 "layers": tuple(saved["layers"]) if saved["layers"] else None})
        result = run_arm(args.child, setup, Path(args.workdir), skip, args.bp_bf16, tuple(args.textlora_override))
        bc.save_json(Path(args.result), result)
        return 0
    setup, workdir, skip = prepare(args)
    meta = json.loads((workdir / "setup.json").read_text())
    meta["threads"] = bc.limit_threads(args.threads)
    results = []
    for round_ in range(1, args.rounds + 1):
        for arm in args.arm_list:
            print(f"\n[bench] ---- arm {arm} (round {round_} of {args.rounds}) ----", flush=True)
            argv_child = ["--child", arm, "--workdir", str(workdir), "--bp-bf16", args.bp_bf16]
            argv_child += [f"--textlora-override={o}" for o in args.textlora_override]
            name = f"result-{arm}.json" if args.rounds == 1 else f"result-{arm}-{round_}.json"
            result = bc.run_child(Path(__file__).resolve(), argv_child, workdir / name, bc.allocator_env(arm))
            results.append({**result, "round": round_})
    text = report(args, setup, results, meta)
    bc.save_json(workdir / "results.json", {"setup": meta, "results": results})
    bc.publish_section(args.out, args.section or f"train_speed-{setup.device}-{args.lora_layout}", text)
    print(f"[bench] arm results and run folders in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
