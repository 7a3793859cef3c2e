"""CPU training steps: textlora's attention dropout multiplying by its mask as uint8 (now) vs as bool (before).

``probs * keep`` with a boolean ``keep`` converts the whole ``[B, heads, T, T]`` mask to bf16 before it
multiplies; with the same mask viewed as ``uint8`` the conversion happens inside the multiplication. The
products are the same numbers (0 or the probability). One process, all-MiniLM-L6 with LoRA on
query/value (cpu_step_loop's setup): windows of ``--window`` steps alternate between the two on the same
batches, in reversed order every other round; the first round warms up and is not counted. Also times the multiplication alone.

    python benchmarks/attention_mask_factor.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc  # noqa: E402
from benchmarks.cpu_step_loop import alternate_windows, training_steps  # noqa: E402


def _multiply_ms(factor, shape=(48, 12, 56, 56), repeats: int = 50) -> float:
    """Best of 5 means of ``probs.clone().mul_(factor(keep))`` on bf16 ``[48, 12, 56, 56]``, in ms."""
    import torch

    probs = torch.rand(shape).to(torch.bfloat16)
    keep = torch.rand(shape) > 0.1
    means = []
    for _ in range(6):
        started = time.perf_counter()
        for _ in range(repeats):
            probs.clone().mul_(factor(keep))
        means.append((time.perf_counter() - started) / repeats * 1000)
    return min(means[1:])  # the first is warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=bc.default_model("cpu"))
    p.add_argument("--rows", type=int, default=2400, help="real AG News train rows (50 batches of 48)")
    p.add_argument("--window", type=int, default=8, help="steps per arm before switching")
    p.add_argument("--rounds", type=int, default=20, help="counted rounds of both arms (after one warm-up round)")
    p.add_argument("--out", default=str(bc.REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    p.add_argument("--section", default="attention_mask_factor")
    args = p.parse_args()

    import torch

    from textlora.speed import cpu_dropout

    factors = {"uint8 (textlora now)": cpu_dropout._as_factor, "bool (before)": lambda keep: keep}
    _, step, batches, note = training_steps(args.model, args.rows)

    def use(factor):
        return lambda: setattr(cpu_dropout, "_as_factor", factor)

    try:
        rates = alternate_windows(step, batches, {name: use(f) for name, f in factors.items()}, args.window,
                                  args.rounds)
    finally:
        cpu_dropout._as_factor = factors["uint8 (textlora now)"]
    multiply = {name: _multiply_ms(f) for name, f in factors.items()}
    now, before = rates.values()
    text = bc.section_head("CPU training steps: the attention dropout mask as uint8 vs bool") + [
        f"all-MiniLM-L6 ({args.model}), LoRA r=8 on query/value, batch 48, {args.rows:,} real AG News rows cut at "
        f"128 tokens, batches of similar length in shuffled order; {note}; torch threads {torch.get_num_threads()}.",
        "", f"{args.rounds} rounds of {args.window} steps per arm, both arms on the same batches in each round (one "
        "warm-up round not counted). Multiply alone: `probs.clone().mul_(mask)`, bf16 `[48, 12, 56, 56]`, best of "
        "5 means of 50.", "",
        bc.markdown_table(["mask", "train samples/s", "multiply alone (ms)"],
                          [[name, rates[name], f"{multiply[name]:.3f}"] for name in factors]), "",
        f"- uint8 vs bool: **{now / before:.2f}x** train samples/s", ""]
    bc.publish_section(args.out, args.section, "\n".join(text))


if __name__ == "__main__":
    main()
