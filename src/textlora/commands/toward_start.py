"""``textlora average --toward-start``: move the averaged model part of the way back to where training started.

Fine-tuning fits the training distribution and forgets some of what made the start robust to other text; the
weights ``(1 - a) * start + a * fine-tuned`` keep more of both than either end (WiSE-FT: Wortsman et al., *Robust
fine-tuning of zero-shot models*, CVPR 2022). With LoRA and a head fitted by the probe (``model.head_init: probe``)
the start is exact and costs nothing to keep: LoRA's B matrices are zero there (the frozen encoder, unchanged) and
the head is the logistic regression on its features. The interpolated model is therefore LoRA's update scaled by
``a`` (B times ``a``; A as trained) and the head ``(1 - a) * probe + a * trained``: the same layout and parameter
count, a run folder like any other.

The probe is fitted again here as training fitted it (the same rows, chosen by the run's seed, and its
regularisation chosen on the same validation split), so no run needs to have saved its start. Its features come
from the frozen encoder under the precision the run loads with: on a machine that computes otherwise than the one
that trained (bf16 against fp32), the refitted probe can differ a little; its printed line (C, validation accuracy)
compares with the train log's.
"""

from __future__ import annotations

from typing import Sequence

from textlora.errors import TextloraError
from textlora.training import checkpoint as ckpt

NEEDS_PROBE = ("--toward-start needs a run trained with model.head_init=probe: its start is a classifier (the probe "
               "on the frozen encoder) that the model can move back towards; with a random start head it has none")


def check_fractions(fractions: Sequence[float], head_init: str) -> None:
    """Refuse ``--toward-start`` values outside [0, 1], or a run whose start is no classifier.

    Raises:
        TextloraError: what is wrong and how to fix it.
    """
    if head_init != "probe":
        raise TextloraError(f"{NEEDS_PROBE} (this run: model.head_init={head_init})")
    bad = [f for f in fractions if not 0.0 <= f <= 1.0]
    if bad:
        raise TextloraError(f"--toward-start {bad[0]}: each value is the fraction of what training changed that is kept, "
                            "from 0 (the start: the probe alone) to 1 (the average as it is), e.g. 0.3,0.5,0.7")


def is_lora_update(name: str) -> bool:
    """LoRA's B matrices: zero at the start, so scaling them scales the update to the encoder."""
    return ".lora_B." in name


def start_head(scorer, trained: dict) -> dict:
    """The head's weights at the start of training: the probe fitted on the frozen encoder, as training fitted it.

    Leaves ``scorer``'s model with no LoRA update and the probe head; load the state to score afterwards.
    """
    from textlora.data.batching import tokenize
    from textlora.model.precision import autocast_factory
    from textlora.training.head_probe import fit_head_by_probe

    run, data = scorer.run, scorer.data
    frozen = {name: value * 0 if is_lora_update(name) else value for name, value in trained.items()}
    ckpt.load_trainable(run.model, frozen, "the start (no LoRA update)")
    length, pad_id = run.config.model.max_length, run.tokenizer.pad_token_id
    note = fit_head_by_probe(run.model, run.config.model.head, run.label_map.num_labels,
                             (tokenize(run.tokenizer, data.train.texts, length), data.train.labels),
                             (tokenize(run.tokenizer, data.validation.texts, length), data.validation.labels),
                             pad_id, run.device, autocast_factory(run.device, run.precision), run.config.train.seed,
                             run.config.model.probe_rows, run.config.model.probe_cs)
    print(note.replace("[train] head fitted", "[average] the start's head fitted again", 1), flush=True)
    params = dict(run.model.named_parameters())
    return {name: params[name].detach().float().clone() for name in trained if ".lora_" not in name}


def interpolated(start: dict, trained: dict, fraction: float) -> dict:
    """``fraction`` of the way from the start to ``trained``: LoRA's update scaled, the head interpolated."""
    state = {}
    for name, value in trained.items():
        if name in start:
            state[name] = (1.0 - fraction) * start[name] + fraction * value.float()
        elif is_lora_update(name):
            state[name] = fraction * value.float()
        else:  # LoRA's A matrices: with B scaled, B @ A is the update scaled, whatever A is
            state[name] = value.float()
    return state


def fraction_label(fraction: float) -> str:
    """``0.5``, ``1``: short where that is exact, every digit where it is not (so two fractions never share one)."""
    short = f"{fraction:g}"
    return short if float(short) == fraction else repr(fraction)


def best_toward_start(scorer, trained: dict, fractions: Sequence[float], title: str,
                      unmoved: dict) -> tuple[float, dict, dict]:
    """Score the model at each fraction on the validation split and eval sets; keep the best on the scorer's metric
    (a tie keeps the larger fraction: the model nearer what was trained). ``unmoved`` is the score of the average
    itself, already measured: fraction 1, when it is one of ``fractions``, is not scored again.

    Leaves the kept model loaded, to be written. Returns the fraction kept, its score, and ``{label: value}`` of
    every fraction tried (for ``summary.json`` and the printed table).
    """
    start = start_head(scorer, trained)
    best, tried = None, {}
    for fraction in sorted(set(fractions), reverse=True):
        state = interpolated(start, trained, fraction)
        score = unmoved if fraction == 1 else \
            scorer.score(state, f"{title} moved towards the start, {fraction_label(fraction)} of the change kept")
        tried[fraction_label(fraction)] = score["value"]
        strictly_better = best is not None and score["value"] != best[2]["value"] and \
            scorer.better_or_equal(score["value"], best[2]["value"])
        if best is None or strictly_better:  # larger fractions come first, so a tie keeps the larger
            best = (fraction, state, score)
    ckpt.load_trainable(scorer.run.model, best[1], "the interpolated weights")
    return best[0], best[2], tried
