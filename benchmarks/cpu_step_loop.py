"""CPU training steps on fixed real batches: textlora's attention dropout vs SDPA's, in speed and memory.

Two measurements on all-MiniLM-L6 with LoRA on query/value (textlora's model, dropout masks installed),
batch 48, in the precision ``auto`` picks on this CPU:

1. **Attention dropout**, one process: windows of ``--window`` steps alternate between SDPA (its math
   path, torch's dropout on the attention probabilities) and textlora's attention function, each
   window of the two on the same batches. The first round is warm-up and not counted.
2. **Speed and memory over a longer run**, one process per arm, one after another: ``--drift-steps``
   steps with each attention; samples/s, RSS and peak RSS every 50 steps, and RSS right after glibc's
   ``malloc_trim`` at the end (what the process holds in use, without the freed blocks glibc keeps).
   An earlier attention function that kept its ``[B, heads, T, T]`` probabilities and masks for the
   backward pass grew the process by ~0.16 GB per 100 steps here; the loop is what shows whether
   a change brings that back.

Results are printed and written as a section of BENCHMARKS.md with this command.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc  # noqa: E402

BATCH = 48
MODES = {"SDPA (math path, torch's attention dropout)": "sdpa", "textlora's attention function": None}


def _use(config, mode: str) -> None:
    """Switch the model's attention to ``mode`` (a key of MODES); None there is textlora's function."""
    from textlora.speed.cpu_dropout import ATTENTION

    config._attn_implementation = MODES[mode] or ATTENTION


def _rss_gb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e9


def training_steps(model_dir: str, rows: int):
    """Model, optimizer, one step function, batches in a shuffled length-sorted order."""
    import torch
    from transformers import AutoTokenizer

    from textlora.speed import cpu_dropout
    from textlora.config import ModelConfig
    from textlora.data.labels import LabelMap
    from textlora.model.build import build_model
    from textlora.model.precision import autocast_factory, precision_name, resolve_precision

    torch.manual_seed(0)
    cfg = ModelConfig(name_or_path=model_dir, max_length=128, lora_r=8, lora_alpha=16, target_modules=("query", "value"))
    model = build_model(cfg, LabelMap(tuple(bc.LABEL_NAMES), "int", 0)).model.train()
    note = cpu_dropout.install(model)
    data = bc.load_agnews(bc.default_train_data(), count=rows, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    order = sorted(range(rows), key=lambda i: len(data.texts[i]))
    batches = []
    for start in range(0, rows - BATCH + 1, BATCH):
        picked = order[start:start + BATCH]
        encoded = tokenizer([data.texts[i] for i in picked], truncation=True, max_length=128, padding=True,
                            return_tensors="pt")
        batches.append((dict(encoded), torch.tensor([data.labels[i] for i in picked])))
    random.Random(0).shuffle(batches)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    precision = resolve_precision("auto", "cpu")
    autocast = autocast_factory(torch.device("cpu"), precision)

    def step(batch) -> int:
        encoded, labels = batch
        with autocast():
            loss = model(**encoded, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(labels)

    return model, step, batches, f"{note}; {precision_name(precision)}"


def alternate_windows(step, batches, arms: dict, window: int, rounds: int) -> dict:
    """samples/s per arm: ``arms`` maps a name to a function that switches the model to it; each round
    runs ``window`` steps per arm on the same batches, in reversed order every other round (so that no arm
    always runs first); round 0 warms up and is not counted."""
    totals = {name: [0, 0.0] for name in arms}
    for round_ in range(rounds + 1):
        batch_window = [batches[(round_ * window + i) % len(batches)] for i in range(window)]
        for name, switch in (reversed(arms.items()) if round_ % 2 else arms.items()):
            switch()
            started = time.perf_counter()
            samples = sum(step(batch) for batch in batch_window)
            if round_:
                totals[name][0] += samples
                totals[name][1] += time.perf_counter() - started
    return {name: s / t for name, (s, t) in totals.items()}


def _alternate(args) -> dict:
    from textlora.model.parts import stock_classifier

    model, step, batches, note = training_steps(args.model, args.rows)
    config = stock_classifier(model).config
    arms = {name: (lambda name=name: _use(config, name)) for name in MODES}
    return {"note": note, "samples_per_s": alternate_windows(step, batches, arms, args.window, args.rounds)}


def _drift(args) -> dict:
    import ctypes

    from textlora.model.parts import stock_classifier

    model, step, batches, note = training_steps(args.model, args.rows)
    _use(stock_classifier(model).config, args.attention)
    windows, samples, started = [], 0, time.perf_counter()
    for index in range(args.drift_steps):
        samples += step(batches[index % len(batches)])
        if (index + 1) % 50 == 0:
            window = {"step": index + 1, "samples_per_s": samples / (time.perf_counter() - started),
                      "rss_gb": _rss_gb(), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
            if index + 1 == args.drift_steps:  # the end: what is in use, without glibc's free blocks
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                window["trimmed_rss_gb"] = _rss_gb()
            windows.append(window)
            print(f"[{args.attention}] {window}", flush=True)
            samples, started = 0, time.perf_counter()
    return {"note": note, "windows": windows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=bc.default_model("cpu"))
    p.add_argument("--rows", type=int, default=4800, help="real AG News train rows (100 batches of 48)")
    p.add_argument("--window", type=int, default=8, help="steps per arm before switching (attention comparison)")
    p.add_argument("--rounds", type=int, default=12, help="counted rounds of both arms (after one warm-up round)")
    p.add_argument("--drift-steps", type=int, default=400,
                   help="steps per arm of the memory comparison, a multiple of 50; 0 skips it")
    p.add_argument("--workdir", default=None, help="where the arms' results go (default: a temp dir)")
    p.add_argument("--out", default=str(bc.REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    p.add_argument("--section", default="cpu_step_loop")
    p.add_argument("--child", choices=["alternate", "drift"], help=argparse.SUPPRESS)
    p.add_argument("--attention", choices=list(MODES), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.drift_steps % 50:
        p.error(f"--drift-steps must be a multiple of 50 (RSS is read every 50 steps), not {args.drift_steps}")
    if args.child:
        result = _alternate(args) if args.child == "alternate" else _drift(args)
        Path(args.result).write_text(json.dumps(result))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="textlora-step-loop-"))
    workdir.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--rows", str(args.rows)]
    alternate = bc.run_child(Path(__file__), [*common, "--child", "alternate", "--window", str(args.window),
                                              "--rounds", str(args.rounds)], workdir / "alternate.json")
    rates = alternate["samples_per_s"]
    sdpa, ours = rates.values()
    text = bc.section_head("CPU training steps on fixed batches: attention dropout, speed and memory") + [
        f"all-MiniLM-L6 ({args.model}), LoRA r=8 on query/value, batch {BATCH}, {args.rows:,} real AG News rows "
        f"cut at 128 tokens, batches of similar length in shuffled order; {alternate['note']}.", "",
        f"Attention dropout: {args.rounds} rounds of {args.window} steps per arm, both arms on the same batches "
        "in each round (one warm-up round not counted).", "",
        bc.markdown_table(["attention", "train samples/s"], [[name, rate] for name, rate in rates.items()]), "",
        f"- textlora's attention function vs SDPA: **{ours / sdpa:.2f}x**", ""]
    if args.drift_steps:
        runs = {}
        for index, name in enumerate(MODES):
            runs[name] = bc.run_child(Path(__file__), [*common, "--child", "drift", "--drift-steps",
                                                       str(args.drift_steps), "--attention", name],
                                      workdir / f"drift-{index}.json")["windows"]
        rows = [[w["step"], *(f"{runs[name][i]['samples_per_s']:.1f} / {runs[name][i]['rss_gb']:.2f} / "
                              f"{runs[name][i]['peak_rss_gb']:.2f}" for name in runs)]
                for i, w in enumerate(next(iter(runs.values())))]
        trimmed = ", ".join(f"{name} {runs[name][-1]['trimmed_rss_gb']:.2f} GB" for name in runs)
        # Every window has 50 steps of the same batches in both arms: the mean of the rates is a fair summary.
        mean_rate = {name: sum(w["samples_per_s"] for w in windows) / len(windows) for name, windows in runs.items()}
        sdpa_long, ours_long = mean_rate.values()
        text += [f"Memory over {args.drift_steps} steps, one process per arm, one after the other (samples/s in the "
                 "last 50 steps / RSS, GB / peak RSS so far, GB):", "",
                 bc.markdown_table(["step", *runs], rows), "",
                 f"RSS after glibc's `malloc_trim(0)` at the end (what is in use, without the freed blocks glibc "
                 f"keeps): {trimmed}.", "",
                 f"- over all {args.drift_steps} steps, textlora's attention function vs SDPA: **{ours_long / sdpa_long:.2f}x** "
                 f"({ours_long:.1f} vs {sdpa_long:.1f} samples/s, mean of the 50-step windows)", ""]
    bc.publish_section(args.out, args.section, "\n".join(text))


if __name__ == "__main__":
    main()
