"""A linear probe on the frozen encoder, fitted on more rows and with less regularisation: what each set does.

    python benchmarks/probe_tradeoff.py published/agnews-mpnet-best --out docs/robustness.md
    python benchmarks/probe_tradeoff.py runs/quickstart-robust --rows 1024 4096 --cs 0.1 1 --out none

``model.head_init: probe`` starts training from logistic regression on the frozen encoder's features of 4,096
training rows, its regularisation chosen on the validation split. This asks whether fitting that probe harder
to the training data (more rows, a larger C) keeps the eval sets: the run folder gives the model, the data, the
seed and the eval sets, its LoRA update is set to zero (the encoder as it was before training), and every
(rows, C) pair is fitted on the first rows of the permutation training draws (4,096 is training's own) and
scored on the validation split, each eval set and, to confirm, the test split. Nothing is chosen on test;
the row training would choose (the best validation accuracy among training's Cs) is marked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/probe_tradeoff.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc


def frozen_features(run_dir: Path, device: str, batch_size: int) -> tuple[dict, dict, int]:
    """``({split: (features, labels)}, config, seed)`` for train, validation, each eval set and test."""
    import numpy as np
    import torch

    from textlora.commands.toward_start import is_lora_update
    from textlora.data.batching import tokenize
    from textlora.data.prepare import prepare_training_data
    from textlora.model.precision import autocast_factory
    from textlora.run.load import load_run
    from textlora.training.head_probe import head_inputs, head_linears

    run = load_run(run_dir, device=device, merge=False)  # unmerged: B can be zeroed
    updates = [param for name, param in run.model.named_parameters() if is_lora_update(name)]
    if not updates:  # an exported folder has LoRA merged into the encoder: its features are not the frozen ones
        raise SystemExit(f"probe_tradeoff: {run_dir} holds no LoRA weights to set aside (an exported folder has them "
                         "merged into the encoder); pass the run folder, or a published copy of it")
    with torch.no_grad():
        for param in updates:
            param.zero_()
    config = run.config
    data = prepare_training_data(config.data, config.train.seed)  # the same carved validation split
    splits = {"validation": data.validation, **data.eval_sets, "train": data.train}
    if data.test is not None:
        splits["test"] = data.test
    linears = head_linears(run.model, run.label_map.num_labels)
    features = {}
    for name, split in splits.items():
        tokens = tokenize(run.tokenizer, split.texts, config.model.max_length)
        features[name] = (head_inputs(run.model, linears, tokens, run.tokenizer.pad_token_id, run.device,
                                      autocast_factory(run.device, run.precision)), np.asarray(split.labels))
        print(f"[bench] {name}: features of {len(split.texts):,} texts", flush=True)
    return features, config, config.train.seed


def main(argv=None) -> int:
    from textlora.training.head_probe import PROBE_CS, PROBE_ROWS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run folder (or published one) trained with its eval sets")
    p.add_argument("--rows", type=int, nargs="+", default=[PROBE_ROWS, 4 * PROBE_ROWS, 0],
                   help="training rows each probe is fitted on; 0: all of them")
    p.add_argument("--cs", type=float, nargs="+", default=[0.03, *PROBE_CS], help="inverse regularisation strengths")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="docs/robustness.md", help="markdown page to update, or 'none' to print only")
    args = p.parse_args(argv)
    if any(count < 0 for count in args.rows) or any(not c > 0 for c in args.cs):
        p.error("--rows takes counts of 0 (all rows) or more, --cs strengths above 0")

    from sklearn.linear_model import LogisticRegression

    from textlora.training.head_probe import probe_rows

    from textlora.errors import TextloraError

    try:
        features, config, seed = frozen_features(args.run, args.device, args.batch_size)
    except TextloraError as exc:  # a folder that is not a run, data that moved: one line, not a traceback
        p.error(str(exc))
    x_train, y_train = features.pop("train")
    sets = [name for name in features if name not in ("validation", "test")]
    table = []
    for count in args.rows:
        rows = probe_rows(len(y_train), seed, count or len(y_train))
        fitted = []
        for c in args.cs:
            fit = LogisticRegression(C=c, max_iter=2000).fit(x_train[rows], y_train[rows])
            scores = {name: fit.score(x, y) for name, (x, y) in features.items()}
            fitted.append((c, scores))
            print(f"[bench] {len(rows):,} rows, C={c:g}: " + ", ".join(f"{n} {v:.4f}" for n, v in scores.items()),
                  flush=True)
        chosen = max((f for f in fitted if f[0] in PROBE_CS), key=lambda f: f[1]["validation"], default=None)
        for c, scores in fitted:
            mark = " (training's choice)" if chosen is not None and c == chosen[0] else ""
            table.append([f"{len(rows):,}", f"{c:g}{mark}", scores["validation"], *(scores[n] for n in sets),
                          scores.get("test")])
    body = "\n".join(bc.section_head(f"A probe on the frozen encoder ({config.model.name_or_path}): rows and "
                                     "regularisation",
                                     level=3) + [
        f"Logistic regression on the frozen encoder's features ({config.model.head} head input, "
        f"max_length {config.model.max_length}) of the run {args.run.name}'s training rows, seed {seed}; "
        "C is the inverse regularisation strength (larger: fits the training rows harder). Validation and "
        f"{', '.join(sets)} are the sets a choice may be made on; test is shown to confirm, never to choose. "
        f"Validation: {len(features['validation'][1]):,} rows; "
        + "; ".join(f"{n}: {len(features[n][1]):,} rows" for n in sets)
        + (f"; test: {len(features['test'][1]):,} rows." if "test" in features else "."), "",
        bc.markdown_table(["rows", "C", "validation", *sets, "test"], table)])
    bc.publish_section(args.out, "probe-tradeoff", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
