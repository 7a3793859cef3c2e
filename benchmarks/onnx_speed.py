"""CPU inference: ONNX Runtime on `textlora export --onnx`'s model.onnx vs PyTorch on the same merged model.

    python benchmarks/onnx_speed.py EXPORTED_DIR                 # a folder from `textlora export RUN --onnx`
    python benchmarks/onnx_speed.py EXPORTED_DIR --rows 512 --batch-sizes 1,8,32 --rounds 3

Both arms get identical inputs: real AG News test texts, tokenized once with the export's tokenizer
and cut into length-sorted batches with dynamic padding (textlora's inference batching), and the
same number of CPU threads. The arms take turns, one pass over all batches each, in alternating order
round after round, so load from other processes on a shared machine hits both alike. Also reported: the largest probability difference
and how many predicted labels differ. Results: printed and written as a section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (REPO, command_line, default_test_data, load_agnews, machine,  # noqa: E402
                               markdown_table, publish_section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="folder written by `textlora export RUN --onnx`")
    parser.add_argument("--rows", type=int, default=512, help="AG News test texts per round")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: torch's)")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update, or 'none'")
    args = parser.parse_args()

    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textlora.data.batching import make_loader, tokenize

    if not (args.model / "model.onnx").is_file():
        raise SystemExit(f"{args.model}/model.onnx not found: export with `textlora export RUN --out DIR --onnx`")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # ONNX Runtime's threads spin after each call by default, which would steal the CPU from PyTorch's turn.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(args.model / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def run(arm: str, ids, mask) -> np.ndarray:
        """Class probabilities of one padded batch."""
        if arm == "pytorch":
            with torch.inference_mode():
                return torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1).numpy()
        logits = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    texts = load_agnews(default_test_data(), count=args.rows, seed=0).texts
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    tokens = tokenize(tokenizer, texts, tokenizer.model_max_length)
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [(b["input_ids"], b["attention_mask"])
                   for b in make_loader(tokens, None, batch_size, tokenizer.pad_token_id, shuffle=False)]
        seconds = {"pytorch": 0.0, "onnxruntime": 0.0}
        outputs = {}
        for round_ in range(args.rounds + 1):  # round 0 warms both up and is not counted
            for arm in (("pytorch", "onnxruntime") if round_ % 2 else ("onnxruntime", "pytorch")):
                began = time.perf_counter()
                outputs[arm] = [run(arm, ids, mask) for ids, mask in batches]
                if round_:
                    seconds[arm] += time.perf_counter() - began
        want, got = np.concatenate(outputs["pytorch"]), np.concatenate(outputs["onnxruntime"])
        max_diff = float(np.abs(got - want).max())
        disagree = int((got.argmax(-1) != want.argmax(-1)).sum())
        count = args.rows * args.rounds
        torch_rate, ort_rate = count / seconds["pytorch"], count / seconds["onnxruntime"]
        rows.append([batch_size, f"{torch_rate:.1f}", f"{ort_rate:.1f}", f"{ort_rate / torch_rate:.2f}x",
                     f"{max_diff:.1e}", disagree])
        print(f"[bench] batch {batch_size}: pytorch {torch_rate:.1f} texts/s, onnxruntime {ort_rate:.1f} texts/s "
              f"({ort_rate / torch_rate:.2f}x), max prob diff {max_diff:.1e}, {disagree} labels differ", flush=True)
    load_after = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table = markdown_table(["batch size", "PyTorch texts/s", "ONNX Runtime texts/s", "ONNX Runtime vs PyTorch",
                            "max prob diff", "labels differing"], rows)
    body = (f"## ONNX Runtime vs PyTorch (CPU inference)\n\nThe merged model of `textlora export --onnx` "
            f"(`{args.model}`), fp32, {threads} threads each, on the same {args.rows} AG News test texts in "
            f"length-sorted, dynamically padded batches; {args.rounds} rounds after a warm-up round, the two "
            f"runtimes taking turns.\n\n{table}\n\nMachine: {machine()}; load average "
            f"before/after: {load_before} / {load_after} (other processes share this machine).\n\n"
            f"Command: `{command_line()}`\n")
    publish_section(args.out, "onnx-speed", body)


if __name__ == "__main__":
    main()
