"""Average stage: one model from the mean of a run's checkpoints, scored as training scores its evaluations.

Checkpoint averaging (as in stochastic weight averaging, and the "model soups" of Wortsman et al., 2022)
takes the trainable weights a run saved at several evaluations (LoRA's A and B matrices and the head) and
averages them parameter by parameter. Points of one trajectory lie in one basin, so their mean is a model
too, and it can keep more of what early and late checkpoints each do well than any one of them
(docs/robustness.md measures it).

* uniform: the mean of the chosen checkpoints (``--steps``, ``--last``, default every kept one).
* greedy (``--greedy``): the "greedy soup": checkpoints in order of their logged ``train.metric_for_best``
  (or ``--metric``), each kept in the mean only if the mean then scores at least as well on the run's
  validation split and eval sets, never on the test split.
* other runs (``--with RUN2``, or ``--with RUN2@1440,1448`` for some of its checkpoints): the kept checkpoints
  of runs of the same recipe that trained otherwise (learning rate, epochs, schedule: the soups of the paper)
  join the candidates. They must start where the run starts and be scored on what it is scored on: the same
  model, LoRA layout, head, seed and data (so the same carved validation split, which none of them trained on).

The source run is never changed: the average is written as a new run folder (default ``RUN-avg`` beside
it) that evaluate, predict, report, export and serve read like any other. The run's test split, when its
config has one, is scored once, on the model written, as training does.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from safetensors.torch import load_file

from textlora.commands.compare import key_differences
from textlora.commands.toward_start import best_toward_start, check_fractions
from textlora.config import config_from_yaml_file
from textlora.errors import RunFolderError, TextloraError
from textlora.run.files import check_output_folder, folder_written_whole, read_json
from textlora.run.layout import (ADAPTER_DIR, BUDGET_FILE, CHECKPOINTS_DIR, CONFIG_FILE, DATA_REPORT_FILE, EVAL_FILE,
                                 LABELS_FILE, METRICS_FILE, PREDICTIONS_DIR, SUMMARY_FILE, TEST_EVAL_FILE,
                                 TOKENIZER_DIR, averaged_checkpoints, averaged_count)
from textlora.training import checkpoint as ckpt

COPIED = (CONFIG_FILE, LABELS_FILE, BUDGET_FILE, DATA_REPORT_FILE, METRICS_FILE)
"""Files of the source run that describe the average too (its config, labels, data and training curve)."""


@dataclass(frozen=True)
class Ingredient:
    """One checkpoint that may go into the mean: the run it comes from (as the user named it) and its step."""

    run: Path
    step: int
    folder: Path

    def label(self, source: Path) -> str:
        return f"step {self.step}" if self.run == source else f"{self.run.name} step {self.step}"


TRAINING_ONLY = ("optim.", "train.", "model.lora_dropout", "model.base_dtype", "model.first_token_last_layer",
                 "model.max_length", "model.max_trainable_params", "data.test")
"""Config keys in which a ``--with`` run may differ: how it trained, not where it starts or what it is scored on."""


def check_same_recipe(source: Path, other: Path) -> None:
    """Refuse ``other`` as a source of ingredients unless it starts and is scored as ``source`` is.

    Raises:
        RunFolderError: ``other`` is not a run folder, or differs in a key outside :data:`TRAINING_ONLY`, or in
            ``train.seed`` (it sets LoRA's initial weights and carves the validation split).
    """
    from omegaconf import OmegaConf

    if not (other / CONFIG_FILE).is_file():
        raise RunFolderError(f"--with {other} is not a run folder (no {CONFIG_FILE})")
    configs = [OmegaConf.to_container(OmegaConf.structured(config_from_yaml_file(run / CONFIG_FILE)))
               for run in (source, other)]
    differ = {key: values for key, values in key_differences(configs).items()
              if key == "train.seed" or not key.startswith(TRAINING_ONLY)}
    if differ:
        listed = "; ".join(f"{key}: {a} vs {b}" for key, (a, b) in differ.items())
        raise RunFolderError(f"--with {other} is not the same recipe as {source} ({listed}); its checkpoints start "
                             "elsewhere or were chosen on other rows, so their mean is not a model of this run. "
                             "Runs that differ only in optim.* and train.* (but train.seed) can be averaged")


def split_with(spec) -> tuple[Path, Optional[list[int]]]:
    """``runs/b@1440,1448`` -> ``(runs/b, [1440, 1448])``; ``runs/b`` (or a folder whose name has an @) -> all kept."""
    text = str(spec)
    run, sep, steps = text.rpartition("@")
    if not sep or Path(text).is_dir():
        return Path(text), None
    if not re.fullmatch(r"\d+(,\d+)*", steps):
        raise TextloraError(f"--with {text}: after the @ come the run's steps, comma-separated (e.g. "
                            f"{run}@1440,1448), not {steps!r}")
    return Path(run), [int(step) for step in steps.split(",")]


def kept_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first."""
    return [folder for folder in ckpt.list_checkpoints(Path(run_dir) / CHECKPOINTS_DIR) if ckpt.is_valid(folder)]


KEEP_MORE = ("train with a larger train.keep_last to keep more (each checkpoint holds only the trainable weights and "
             "optimizer state, a few MB)")


def pick_checkpoints(run_dir: Path, steps: Optional[Sequence[int]] = None, last: Optional[int] = None) -> list[Path]:
    """The checkpoint folders to average: those at ``steps``, or the newest ``last``, or every kept one.

    Raises:
        RunFolderError: a named step has no complete checkpoint.
    """
    kept = kept_checkpoints(run_dir)
    if not steps:
        return kept[-last:] if last else kept
    by_step = {_step_of(folder): folder for folder in kept}
    missing = [s for s in steps if s not in by_step]
    if missing:
        raise RunFolderError(f"{run_dir} has no complete checkpoint at step {missing[0]}; it keeps steps "
                             f"{_steps_text(by_step)}; {KEEP_MORE}")
    return [by_step[s] for s in sorted(set(steps))]


def _step_of(folder: Path) -> int:
    return int(folder.name.split("-")[1])


def _steps_text(by_step: dict) -> str:
    return ", ".join(str(s) for s in sorted(by_step)) or "none"


def mean_state(states: Sequence[dict]) -> dict:
    """The parameter-wise mean of trainable states (``{name: tensor}``, all with the same names)."""
    names = set(states[0])
    for state in states[1:]:
        if set(state) != names:
            raise RunFolderError("the checkpoints hold different weights (were they written by one run?)")
    return {name: sum(state[name].float() for state in states) / len(states) for name in states[0]}


class Scorer:
    """Scores trainable weights on the run's validation split and eval sets, the way training scored them."""

    def __init__(self, run_dir: Path, spec: str, device: str, batch_size: int, base_model: Optional[str]):
        """``spec``: what to choose on, a ``train.metric_for_best`` value (see :func:`choice_metric`)."""
        from textlora.data.prepare import prepare_training_data
        from textlora.run.load import load_run

        # Unmerged: each scored state is copied into the LoRA weights, which a merged model no longer has.
        self.run = load_run(run_dir, device=device, merge=False, base_model=base_model)
        config = self.run.config
        self.data = prepare_training_data(config.data, config.train.seed)  # the same carved validation split
        self.spec, self.batch_size = spec, batch_size
        self.names = self.run.label_map.names

    def score(self, state: dict, where: str) -> dict:
        """``{"validation": metrics, "sets": {name: metrics}, "value": selection value, "probs": ...}``."""
        from textlora.run.metrics import classification_metrics
        from textlora.training.eval_sets import selection_value

        ckpt.load_trainable(self.run.model, state, f"the weights of {where}")
        splits = {"validation": self.data.validation, **self.data.eval_sets}
        probs = {name: self.run.probabilities(split.texts, self.batch_size)[0] for name, split in splits.items()}
        metrics = {name: classification_metrics(splits[name].labels, p, self.names) for name, p in probs.items()}
        validation = metrics.pop("validation")
        value = selection_value(self.spec, validation, metrics)
        # Each score is a pass over every set: on a base-size model on CPU, minutes; say what each gave.
        print(f"[average] {where}: validation accuracy {validation['accuracy']:.4f}" +
              "".join(f", {name} {m['accuracy']:.4f}" for name, m in metrics.items()) + f"; {self.spec} {value:.4f}",
              flush=True)
        return {"validation": validation, "sets": metrics, "value": value, "probs": probs}

    def better_or_equal(self, value: float, than: float) -> bool:
        from textlora.training.eval_sets import lower_is_better

        return value <= than if lower_is_better(self.spec) else value >= than


def choice_metric(config, metric: Optional[str]) -> str:
    """``--metric`` checked against the run's eval sets as ``train.metric_for_best`` is; default the run's own."""
    from dataclasses import replace

    from textlora.errors import ConfigError

    if metric is None:
        return config.train.metric_for_best
    try:
        replace(config, train=replace(config.train, metric_for_best=metric))
    except ConfigError as exc:
        raise TextloraError(f"--metric: {exc}".replace("train.metric_for_best: ", "")) from None
    return metric


def logged_values(run_dir: Path, spec: str) -> dict[int, float]:
    """``{step: value of train.metric_for_best}`` of every evaluation in the run's metrics.jsonl."""
    from textlora.training.eval_sets import selection_value

    values = {}
    path = Path(run_dir) / METRICS_FILE
    for line in path.read_text().splitlines() if path.is_file() else ():
        record = json.loads(line)
        if record.get("kind") == "eval":
            values[record["step"]] = selection_value(spec, record, record.get("sets", {}))
    return values


def best_logged_first(ingredients: list[Ingredient], spec: str) -> list[Ingredient]:
    """``ingredients`` by their run's logged ``spec`` value, best first; those never evaluated (taken at an
    interrupt) last."""
    from textlora.training.eval_sets import lower_is_better

    sign = 1 if lower_is_better(spec) else -1
    logged = {run: logged_values(run, spec) for run in {i.run for i in ingredients}}
    return sorted(ingredients, key=lambda i: (i.step not in logged[i.run], sign * logged[i.run].get(i.step, 0.0)))


def greedy_soup(scorer: Scorer, order: list[Ingredient], source: Path,
                known: Optional[tuple[Ingredient, dict]] = None) -> tuple[list[Ingredient], dict, list[dict], dict]:
    """Greedy soup over ``order`` (best-logged first): each next checkpoint kept only if the mean scores no worse.

    ``known``: a checkpoint already scored (the run's best) and its score, not scored again.
    Returns the ingredients kept, the mean's score, one line per checkpoint tried (for the printed table), and the
    mean itself (left loaded in the model, to be written).
    """
    states = {i: load_file(str(i.folder / "trainable.safetensors")) for i in order}
    kept, tried = [order[0]], []
    current = known[1] if known and known[0] == order[0] else scorer.score(states[order[0]], order[0].label(source))
    tried.append({"label": order[0].label(source), "value": current["value"], "kept": True})
    for ingredient in order[1:]:
        candidate = scorer.score(mean_state([states[i] for i in kept + [ingredient]]),
                                 f"mean of {len(kept) + 1} (+ {ingredient.label(source)})")
        keep = scorer.better_or_equal(candidate["value"], current["value"])
        tried.append({"label": ingredient.label(source), "value": candidate["value"], "kept": keep})
        if keep:
            kept, current = kept + [ingredient], candidate
    mean = mean_state([states[i] for i in kept])
    ckpt.load_trainable(scorer.run.model, mean, "the averaged weights")
    return kept, current, tried, mean


def average(run_dir: Path, steps: Optional[Sequence[int]] = None, last: Optional[int] = None, greedy: bool = False,
            output: Optional[Path] = None, device: str = "auto", batch_size: int = 64,
            base_model: Optional[str] = None, metric: Optional[str] = None, test: bool = True,
            with_runs: Sequence[Path] = (), top: Optional[int] = None, toward_start: Sequence[float] = ()) -> Path:
    """Average checkpoints of ``run_dir`` into a new run folder; returns it.

    Args:
        steps / last: which checkpoints of ``run_dir`` (default every kept one); ``greedy`` then chooses among them.
        with_runs: runs of the same recipe (:func:`check_same_recipe`) whose kept checkpoints join the candidates;
            ``RUN@1440,1448`` takes only those steps of it.
        top: ``greedy`` tries only the ``top`` candidates with the best logged value (each try is a pass over
            the validation split and eval sets).
        toward_start: fractions of the way from the start of training to the average, each scored, the best on
            ``metric`` written (:mod:`textlora.commands.toward_start`; needs ``model.head_init: probe``).
        metric: what greedy chooses on and the table shows, a ``train.metric_for_best`` value (default the run's).
        test: score the config's test split on the model written (``--no-test``: leave it to ``textlora evaluate``).
        output: the folder to write (default ``RUN-avg`` beside the run); an earlier output of this command
            is replaced, any other folder with files in it is refused.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); pass the folder `textlora train` "
                             "printed")
    if steps and last:
        raise TextloraError("--steps and --last both choose checkpoints; give one of them")
    if top is not None and not greedy:
        raise TextloraError("--top limits what --greedy tries; add --greedy, or choose checkpoints with --steps/--last")
    others: dict[Path, Optional[list[int]]] = {}
    for spec in with_runs:
        other, other_steps = split_with(spec)
        if other.resolve() in {named.resolve() for named in others}:
            raise TextloraError(f"--with names {other} twice; give its steps once ({other}@300,600)")
        others[other] = other_steps
    for other in others:
        if other.resolve() == run_dir.resolve():
            raise TextloraError(f"--with {other} is the run itself; its checkpoints are candidates already")
        check_same_recipe(run_dir, other)
    pooled = []
    for other, other_steps in others.items():
        if not kept_checkpoints(other):
            raise RunFolderError(f"--with {other} keeps no complete checkpoint, so it adds nothing to average (a "
                                 "published run folder has none); pass the run folder training wrote")
        pooled += [Ingredient(other, _step_of(f), f) for f in pick_checkpoints(other, other_steps)]
    own = pick_checkpoints(run_dir, steps, last)
    ingredients = [Ingredient(run_dir, _step_of(f), f) for f in own] + pooled
    # One checkpoint the user named (--steps 600, --last 1) is written as it is: the way to make a run folder of
    # a checkpoint the run did not choose. One left by default is more likely a run that kept too few.
    if not ingredients or (len(ingredients) < 2 and not (steps or last)):
        kept = {_step_of(f): f for f in kept_checkpoints(run_dir)}
        raise RunFolderError(f"averaging needs at least two checkpoints, and {run_dir} gives {len(own)} (it keeps "
                             f"steps {_steps_text(kept)}); {KEEP_MORE}; to write one checkpoint as a run folder, "
                             "name it with --steps")
    output = Path(output) if output else run_dir.with_name(f"{run_dir.name}-avg")
    if output.resolve() in {run.resolve() for run in [run_dir, *others]}:
        raise TextloraError(f"--output {output} is a source run; the average goes to a folder of its own")
    config = config_from_yaml_file(run_dir / CONFIG_FILE)
    if toward_start:
        check_fractions(toward_start, config.model.head_init)
    check_output_folder(output, SUMMARY_FILE, "--output")  # before the model loads: a refusal costs nothing
    spec = choice_metric(config, metric)
    source_summary = read_json(run_dir / SUMMARY_FILE, required=False, damaged_ok=True)
    scorer = Scorer(run_dir, spec, device, batch_size, base_model)
    # The run's own best model (its checkpoint is always kept), scored by the same code as the average.
    reference_step = source_summary.get("best_step")
    best = next((Ingredient(run_dir, reference_step, f) for f in kept_checkpoints(run_dir)
                 if _step_of(f) == reference_step), None)
    reference = None if best is None else \
        scorer.score(load_file(str(best.folder / "trainable.safetensors")), f"the run's best, step {reference_step}")
    if greedy:
        order = best_logged_first(ingredients, scorer.spec)[:top]
        chosen, result, tried, trained = greedy_soup(scorer, order, run_dir, (best, reference) if reference else None)
    else:
        chosen, tried = ingredients, []
        trained = mean_state([load_file(str(i.folder / "trainable.safetensors")) for i in chosen])
        result = scorer.score(trained, f"mean of {len(chosen)} checkpoints")
    moved, unmoved = None, result
    if toward_start:
        fraction, result, fractions_tried = best_toward_start(
            scorer, trained, toward_start, "the average" if len(chosen) > 1 else chosen[0].label(run_dir), result)
        moved = {"fraction": fraction, "tried": fractions_tried}
    with folder_written_whole(output, SUMMARY_FILE, "--output") as tmp:
        summary = _write_folder(tmp, run_dir, output, scorer, result, source_summary, chosen, greedy, reference, test,
                                moved)
    print(_table(scorer, summary["averaged"], result, reference, reference_step, tried, summary.get("test_accuracy"),
                 unmoved))
    print(f"\nwrote {output}")
    return output


def _write_folder(tmp: Path, run_dir: Path, output: Path, scorer: Scorer, result: dict, source_summary: dict,
                  chosen: list[Ingredient], greedy: bool, reference: Optional[dict], test: bool,
                  moved: Optional[dict]) -> dict:
    """Fill ``tmp`` (to become the run folder ``output``) with the loaded, averaged model; returns its summary."""
    from textlora.run.metrics import classification_metrics, write_metrics
    from textlora.run.records import save_predictions
    from textlora.training.eval_sets import headline, write_final

    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    shutil.copytree(run_dir / TOKENIZER_DIR, tmp / TOKENIZER_DIR)
    scorer.run.model.save_pretrained(tmp / ADAPTER_DIR)
    data, names, step = scorer.data, scorer.names, max(i.step for i in chosen)
    # The sources as the user gave them, like run_dir: an absolute path would not survive a move to another machine.
    averaged = {"from": str(run_dir), "steps": sorted(i.step for i in chosen if i.run == run_dir),
                "method": "greedy" if greedy else "uniform", "metric": scorer.spec}
    others: dict[str, list[int]] = {}
    for ingredient in chosen:
        if ingredient.run != run_dir:
            others.setdefault(str(ingredient.run), []).append(ingredient.step)
    if others:
        averaged["with"] = {run: sorted(steps) for run, steps in others.items()}
    if moved is not None:
        averaged["toward_start"] = moved
    write_metrics(tmp / EVAL_FILE, {**result["validation"], "split": "validation", "step": step, "averaged": averaged})
    save_predictions(tmp / PREDICTIONS_DIR / "validation.csv", data.validation.texts, data.validation.labels,
                     result["probs"]["validation"], names)
    if result["sets"]:
        write_final(tmp, data.eval_sets, scorer.run.config.data.eval_sets, result["sets"],
                    {name: result["probs"][name] for name in result["sets"]}, names, step)
    summary = {**source_summary, "run_dir": str(output), "best_metric": scorer.spec, "best_value": result["value"],
               "best_step": step,
               "validation_accuracy": result["validation"]["accuracy"], "averaged": averaged}
    if reference is not None:
        summary["averaged"]["run_best_value"] = reference["value"]
    if result["sets"]:
        summary["eval_sets"] = {name: headline(metrics) for name, metrics in result["sets"].items()}
    summary.pop("test_accuracy", None)
    if data.test is not None and test:  # scored once, on the model written; never used to choose
        probs, _ = scorer.run.probabilities(data.test.texts, scorer.batch_size)
        test_metrics = classification_metrics(data.test.labels, probs, names)
        summary["test_accuracy"] = test_metrics["accuracy"]
        write_metrics(tmp / TEST_EVAL_FILE, {**test_metrics, "split": "test", "data": scorer.run.config.data.test.path})
        save_predictions(tmp / PREDICTIONS_DIR / "test.csv", data.test.texts, data.test.labels, probs, names)
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _title(averaged: dict) -> str:
    count = averaged_count(averaged)
    moved = averaged.get("toward_start")
    return (f"average of {count}" if count > 1 else "one checkpoint") + \
        (f" at {moved['fraction']:g}" if moved and moved["fraction"] < 1 else "")


def _table(scorer: Scorer, averaged: dict, result: dict, reference: Optional[dict], reference_step,
           tried: list[dict], test_accuracy: Optional[float], unmoved: dict) -> str:
    """Validation and each eval set's accuracy of the run's best checkpoint and of the average (and, moved towards
    the start, of the average before it moved)."""
    set_names = list(result["sets"])
    moved = averaged.get("toward_start")
    rows = [(f"run's best (step {reference_step})", reference)] if reference is not None else []
    if moved and moved["fraction"] < 1:
        rows.append((_title({**averaged, "toward_start": None}) + ", not moved", unmoved))
    rows.append((_title(averaged), result))
    width = max(len(title) for title, _ in rows) + 2
    lines = [f"{'model':<{width}}{'validation':>12}" + "".join(f"{n:>12}" for n in set_names) +
             f"{scorer.spec:>22}"]
    for title, score in rows:
        lines.append(f"{title:<{width}}{score['validation']['accuracy']:>12.4f}" +
                     "".join(f"{score['sets'][n]['accuracy']:>12.4f}" for n in set_names) + f"{score['value']:>22.4f}")
    lines.append(f"\n{_title(averaged)}: {averaged_checkpoints(averaged)}")
    if tried:
        lines.append("\ngreedy: " + "; ".join(f"{t['label']} {'kept' if t['kept'] else 'left out'} "
                                               f"({t['value']:.4f})" for t in tried))
    if moved:
        lines.append("\ntoward the start (the fraction of the change kept; 1: the average, 0: the start): " +
                     "; ".join(f"{fraction} {'kept' if float(fraction) == moved['fraction'] else 'left'} ({value:.4f})"
                               for fraction, value in moved["tried"].items()))
    if test_accuracy is not None:
        lines.append(f"\ntest accuracy of the average: {test_accuracy:.4f} (scored once, not used to choose)")
    return "\n".join(lines)
