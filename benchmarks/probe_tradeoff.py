"""A linear probe on the frozen encoder, fitted on more rows and with less regularisation: what each set does.

    python benchmarks/probe_tradeoff.py published/agnews-mpnet-best --out docs/robustness.md
    python benchmarks/probe_tradeoff.py runs/quickstart-robust --rows 1024 4096 --cs 0.1 1 --out none

``model.head_init: probe`` starts training from logistic regression on the frozen encoder's features of a sample
of training rows (``model.probe_rows``, 4,096 by default), its regularisation chosen on the validation split among
``model.probe_cs``. This asks what fitting such a probe harder to
the training data (more rows, a larger C) does to each set. The run folder gives the model, the data, the seed and
the eval sets; its LoRA update is set to zero (the encoder as it was before training). Every (rows, C) pair is
fitted on the first rows of the permutation training draws and scored on the validation split, each eval set and,
to confirm, the test split. Nothing is chosen on test. For a run trained from a probe, the row of training's own
probe (its row count, the best validation accuracy among its Cs) is marked. Features are computed in the
precision the run loads with, so on a machine that computes in another one they can differ a little from
training's.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/probe_tradeoff.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as bc


@dataclass
class Features:
    """The frozen encoder's head inputs, with labels, for each split of a run's data."""

    train: tuple            # (features of the drawn rows, labels), in the draw's order
    validation: tuple
    sets: dict              # {eval set name: (features, labels)}
    test: object            # (features, labels) or None


def frozen_features(run_dir: Path, device: str, rows_needed: int):
    """``(Features, config)``: the first ``rows_needed`` rows of training's draw (0: all rows) and every scored set.

    Raises:
        RunFolderError: not a run folder, or one whose LoRA is merged or whose head is not one Linear on a vector.
    """
    import numpy as np
    import torch

    from textlora.commands.toward_start import is_lora_update
    from textlora.data.batching import tokenize
    from textlora.data.prepare import prepare_training_data
    from textlora.errors import RunFolderError
    from textlora.model.precision import autocast_factory
    from textlora.run.load import load_run
    from textlora.training.head_probe import head_inputs, head_linears, probe_rows

    run = load_run(run_dir, device=device, merge=False)  # unmerged: B can be zeroed
    config = run.config
    updates = [param for name, param in run.model.named_parameters() if is_lora_update(name)]
    if not updates:  # an exported folder has LoRA merged into the encoder: its features are not the frozen ones
        raise RunFolderError(f"{run_dir} holds no LoRA weights to set aside (an exported folder has them merged into "
                             "the encoder); pass the run folder, or a published copy of it")
    if config.model.head not in ("linear", "mean"):  # the standard head's dense layer is trained: not frozen features
        raise RunFolderError(f"{run_dir} has model.head={config.model.head}: its last Linear reads a trained layer, "
                             "not the frozen encoder; the probe needs model.head linear or mean")
    with torch.no_grad():
        for param in updates:
            param.zero_()
    data = prepare_training_data(config.data, config.train.seed)  # the same carved validation split
    linears = head_linears(run.model, run.label_map.num_labels)
    autocast = autocast_factory(run.device, run.precision)

    def encoded(texts, labels, name):
        tokens = tokenize(run.tokenizer, texts, config.model.max_length)
        print(f"[bench] {name}: features of {len(texts):,} texts", flush=True)
        return (head_inputs(run.model, linears, tokens, run.tokenizer.pad_token_id, run.device, autocast),
                np.asarray(labels))

    drawn = probe_rows(len(data.train.texts), config.train.seed, rows_needed or len(data.train.texts))
    features = Features(
        train=encoded([data.train.texts[i] for i in drawn], [data.train.labels[i] for i in drawn], "train"),
        validation=encoded(data.validation.texts, data.validation.labels, "validation"),
        sets={name: encoded(split.texts, split.labels, name) for name, split in data.eval_sets.items()},
        test=None if data.test is None else encoded(data.test.texts, data.test.labels, "test"))
    return features, config


def probe_table(features: Features, counts: list[int], cs: list[float], own: tuple) -> list[dict]:
    """One row per (rows, C): scores on validation, each eval set and test; ``own`` = (rows, Cs) training fits."""
    from textlora.training.head_probe import fit_probe

    x_train, y_train = features.train
    table = []
    for count in counts:
        block = []
        for c in cs:
            fit = fit_probe(x_train[:count], y_train[:count], c)
            scored = {"validation": features.validation, **features.sets}
            if features.test is not None:
                scored["test"] = features.test
            block.append({"rows": count, "C": c, "fit": fit, "own": False,
                          **{name: fit.score(x, y) for name, (x, y) in scored.items()}})
            print(f"[bench] {count:,} rows, C={c:g}: validation {block[-1]['validation']:.4f}", flush=True)
        own_rows, own_cs = own
        if count == own_rows and set(own_cs) <= set(cs):  # training's probe: the first best of its Cs on validation
            max((row for row in block if row["C"] in own_cs), key=lambda row: row["validation"])["own"] = True
        table.extend(block)
    return table


def main(argv=None) -> int:
    from textlora.training.head_probe import PROBE_CS, PROBE_ROWS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run folder (or published one) with model.head linear or mean")
    p.add_argument("--rows", type=int, nargs="+", default=[PROBE_ROWS, 4 * PROBE_ROWS, 0],
                   help="training rows each probe is fitted on; 0: all of them")
    p.add_argument("--cs", type=float, nargs="+", default=[0.03, *PROBE_CS], help="inverse regularisation strengths")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="docs/robustness.md", help="markdown page to update, or 'none' to print only")
    args = p.parse_args(argv)
    if any(count < 0 for count in args.rows) or any(not c > 0 for c in args.cs):
        p.error("--rows takes counts of 0 (all rows) or more, --cs strengths above 0")

    from textlora.errors import TextloraError

    try:
        needed = 0 if 0 in args.rows else max(args.rows)
        features, config = frozen_features(args.run, args.device, needed)
    except TextloraError as exc:  # a folder that is not a run, data that moved: one line, not a traceback
        p.error(str(exc))
    available = len(features.train[1])
    counts = sorted({min(count or available, available) for count in args.rows})  # beyond the train split: all
    probed = config.model.head_init == "probe"
    own_rows = config.model.probe_rows  # the run's own probe: its rows (0: all) and the Cs it tried
    own = (min(own_rows or available, available), tuple(config.model.probe_cs)) if probed else (None, ())
    table = probe_table(features, counts, args.cs, own)

    sets = list(features.sets)
    columns = ["validation", *sets] + (["test"] if features.test is not None else [])
    rows = [[f"{row['rows']:,}", f"{row['C']:g}" + (" (training's probe)" if row["own"] else ""),
             *(row[name] for name in columns)] for row in table]
    sizes = [f"Validation: {len(features.validation[1]):,} rows"]
    sizes += [f"{name}: {len(features.sets[name][1]):,} rows" for name in sets]
    if features.test is not None:
        sizes.append(f"test: {len(features.test[1]):,} rows")
    chosen_on = "Validation and " + ", ".join(sets) + " are the sets" if sets else "Validation is the set"
    body = "\n".join(bc.section_head(f"A probe on the frozen encoder ({config.model.name_or_path}): rows and "
                                     "regularisation", level=3) + [
        f"Logistic regression on the frozen encoder's features ({config.model.head} head input, max_length "
        f"{config.model.max_length}) of the run {args.run.name}'s training rows, drawn as training draws them (seed "
        f"{config.train.seed}); C is the inverse regularisation strength (larger: fits the training rows harder). "
        f"{chosen_on} a choice may be made on"
        + ("; test is shown to confirm, never to choose" if features.test is not None else "")
        + (". Training's probe is marked." if probed else ". The run did not start from a probe.")
        + " " + "; ".join(sizes) + ".", "",
        bc.markdown_table(["rows", "C", *columns], rows)])
    bc.publish_section(args.out, "probe-tradeoff", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
