"""Train stage: data -> LoRA model under budget -> accelerate loop -> a self-describing run folder.

The loop runs on accelerate, so ``accelerate launch`` / ``torchrun`` make it data-parallel
without code changes. Checkpoints are taken at evaluations; ``--resume`` continues from the
newest valid one with the same data order, optimizer, scheduler and RNG. The step loop itself is
:mod:`textlora.training.loop`; this module builds what it needs and writes the results after it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from textlora.config import RunConfig, config_from_yaml_file
from textlora.data.batching import Tokenized, make_loader
from textlora.data.prepare import TrainingData, prepare_training_data
from textlora.data.token_cache import tokenize_cached
from textlora.errors import RunFolderError
from textlora.model.budget import enforce_budget, trainable_breakdown
from textlora.model.build import build_model, load_tokenizer
from textlora.model.forward import pick_device, predict_proba
from textlora.model.precision import cpu_name, precision_name, resolve_base_dtype, resolve_precision
from textlora.model.speedups import Applied, apply_speedups, compile_backend
from textlora.run.folder import MetricsLog, new_run_dir, with_absolute_paths, write_config, write_json
from textlora.run.layout import (BUDGET_FILE, CONFIG_FILE, DATA_REPORT_FILE, EVAL_FILE, LABELS_FILE, METRICS_FILE,
                                 PREDICTIONS_DIR, SUMMARY_FILE, TEST_EVAL_FILE, TOKENIZER_DIR)
from textlora.run.metrics import classification_metrics, format_metrics, write_metrics
from textlora.run.records import full_model_params, save_predictions
from textlora.training import checkpoint as ckpt
from textlora.training.distributed import prepare_train_loader
from textlora.training.head_probe import fit_head_by_probe
from textlora.training.eval_sets import headline, write_final as write_eval_sets
from textlora.training.loop import LoopState, TrainLoop, resume_state
from textlora.training.optim import build_optimizer, build_scheduler, unused_layer_lrs_note
from textlora.training.trackers import check_trackers, end_trackers, start_trackers


def make_accelerator(config: RunConfig) -> Accelerator:
    """Accelerator for ``train.device`` with the precision ``train.mixed_precision`` resolves to."""
    cfg = config.train
    device_type = pick_device(cfg.device, "train.device").type
    precision = resolve_precision(cfg.mixed_precision, device_type)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # accelerate keeps one precision per process and refuses another: a notebook that ran Trainer, or
    # an earlier run in a sweep, has set one. Only that state is dropped; the process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, cpu=device_type == "cpu", dynamo_backend=compile_backend(config))


@dataclass
class Components:
    """Everything :func:`setup` builds for one run, handed to :func:`fit` and :func:`finish`."""

    config: RunConfig
    accelerator: Accelerator
    data: TrainingData
    tokenizer: object
    trainable: int
    """Trainable parameter count (the budget's total)."""
    base_dtype: str
    """The frozen base's storage dtype, ``model.base_dtype`` resolved on this device: ``fp32``, ``bf16`` or ``fp16``."""
    model: torch.nn.Module
    """As prepared by accelerate (possibly wrapped); ``accelerator.unwrap_model(model)`` is the peft model."""
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    val_tokens: Tokenized
    set_tokens: dict
    """``{name: Tokenized}`` of ``data.eval_sets``."""
    speed: Applied
    """What the speedups did; ``speed.caches`` = prefix caches of (train, validation, *eval sets) or Nones."""
    run_dir: Path
    log: MetricsLog
    state: LoopState
    total_steps: int
    steps_per_epoch: int
    started: float
    """time.time() when this invocation started: its set-up counts as wall time too."""


def train(config: RunConfig, config_name: str = "run", resume: Optional[Path] = None) -> Path:
    """Train one run; returns its folder. ``resume`` continues the run in that folder."""
    parts = setup(config, config_name, resume)
    try:
        loop = fit(parts)
        return finish(parts, loop)
    finally:
        parts.speed.close()


def setup(config: RunConfig, config_name: str = "run", resume: Optional[Path] = None) -> Components:
    """Data, model under budget, run folder, tokens, optimizer, speedups and loader: everything :func:`fit` needs."""
    started = time.time()
    if resume is not None:
        resume = Path(resume)
        if not (resume / CONFIG_FILE).is_file():
            raise RunFolderError(f"cannot resume {resume}: it has no {CONFIG_FILE} (is it a run folder?)")
        config = config_from_yaml_file(resume / CONFIG_FILE)
    else:
        config = with_absolute_paths(config)
    accelerator = make_accelerator(config)
    main = accelerator.is_main_process
    set_seed(config.train.seed)

    data = prepare_training_data(config.data, config.train.seed)
    # Model and budget are checked before the run folder exists: a refused run leaves nothing behind.
    base_dtype = resolve_base_dtype(config.model.base_dtype, accelerator.device.type, accelerator.mixed_precision,
                                    config.train.mixed_precision)
    built = build_model(config.model, data.label_map, base_dtype=base_dtype)
    breakdown = trainable_breakdown(built, config.model.max_trainable_params)
    enforce_budget(config.model, breakdown, built)
    check_trackers(config.train.trackers)
    print(breakdown.table())
    print(f"[train] {accelerator.device}, {precision_name(accelerator.mixed_precision)} "
          f"(train.mixed_precision={config.train.mixed_precision}); frozen base stored in {base_dtype} "
          f"(model.base_dtype={config.model.base_dtype}), LoRA and head in fp32")
    tokenizer = load_tokenizer(config.model.name_or_path)
    run_dir = resume if resume is not None else (new_run_dir(config, config_name) if main else None)
    run_dir = Path(_broadcast(accelerator, str(run_dir) if run_dir else ""))
    if main and resume is None:
        write_config(run_dir, config)
        data.label_map.save(run_dir / LABELS_FILE)
        write_json(run_dir / BUDGET_FILE, {**breakdown.as_dict(), "lora": {
            "r": config.model.lora_r, "alpha": config.model.lora_alpha, "target_modules": built.target_modules,
            "layers": config.model.layers}, "head_modules": built.head_modules, "fresh_modules": built.fresh_modules})
        tokenizer.save_pretrained(run_dir / TOKENIZER_DIR)

    max_length = config.model.max_length
    train_tokens = tokenize_cached(tokenizer, data.train.texts, max_length)
    val_tokens = tokenize_cached(tokenizer, data.validation.texts, max_length)
    set_tokens = {name: tokenize_cached(tokenizer, split.texts, max_length) for name, split in data.eval_sets.items()}
    data.report["train_truncated_texts"] = train_tokens.truncated
    data.report["train_tokens"] = int(train_tokens.lengths.sum())
    if main and resume is None:
        write_json(run_dir / DATA_REPORT_FILE, data.report)

    trained_modules = built.head_modules + built.fresh_modules
    optimizer = build_optimizer(built.model, config.optim, trained_modules, accelerator.device.type)
    if (note := unused_layer_lrs_note(built.model, config.optim, trained_modules)) and main:
        print(note)
    model, optimizer = accelerator.prepare(built.model, optimizer)
    speed = apply_speedups(accelerator.unwrap_model(model), config, accelerator.device, training=True,
                           tokens=(train_tokens, val_tokens, *set_tokens.values()), pad_id=tokenizer.pad_token_id,
                           autocast=accelerator.autocast, log=main)
    for note in speed.notes:
        print(f"[speed] {note}")
    if config.model.head_init == "probe" and resume is None:
        note = fit_head_by_probe(accelerator.unwrap_model(model), config.model.head, data.label_map.num_labels,
                                 (train_tokens, data.train.labels), (val_tokens, data.validation.labels),
                                 tokenizer.pad_token_id, accelerator.device, accelerator.autocast, config.train.seed,
                                 config.model.probe_rows, config.model.probe_cs)
        if main:
            print(note)
    loader = make_loader(train_tokens, data.train.labels, config.train.batch_size, tokenizer.pad_token_id,
                         seed=config.train.seed, shuffle=True, max_tokens=config.train.max_tokens_per_batch,
                         pin_memory=torch.cuda.is_available(), cache=speed.caches[0],
                         pool_batches=config.train.length_pool_batches)
    loader = prepare_train_loader(accelerator, loader)  # its share of each global batch per process
    steps_per_epoch = max(1, math.ceil(len(loader) / config.train.grad_accum))
    total_steps = config.train.max_steps or math.ceil(config.train.epochs * steps_per_epoch)
    # The scheduler is stepped by hand once per optimizer step (not prepared), so its length is
    # the same whatever the number of processes.
    scheduler = build_scheduler(optimizer, config.optim, total_steps)

    state = LoopState()
    log = MetricsLog(run_dir / METRICS_FILE, enabled=main)
    if main:
        log.on_write = start_trackers(accelerator, config, run_dir)
    if resume is not None:
        state = resume_state(run_dir, accelerator.unwrap_model(model), optimizer, scheduler, log)
    return Components(config, accelerator, data, tokenizer, breakdown.total, base_dtype, model, optimizer, scheduler, loader,
                      val_tokens, set_tokens, speed, run_dir, log, state, total_steps, steps_per_epoch, started)


def fit(parts: Components) -> TrainLoop:
    """Run the step loop to the end (or early stop); the best weights are in ``loop.state.best_state``."""
    loop = TrainLoop(parts)
    loop.run()
    return loop


def _broadcast(accelerator: Accelerator, text: str) -> str:
    if accelerator.num_processes == 1:
        return text
    from accelerate.utils import broadcast_object_list

    box = [text]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _machine(device) -> str:
    """What trained: the GPU's name on CUDA, else the CPU's (cost figures are only comparable on the same one)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def finish(parts: Components, loop: TrainLoop) -> Path:
    """Best weights back in, eval.json (+ test_eval.json, eval_sets/), summary.json, and the printed summary."""
    state, accelerator, run_dir, data, tokenizer = loop.state, parts.accelerator, parts.run_dir, parts.data, parts.tokenizer
    model = accelerator.unwrap_model(parts.model)
    if state.best_state:
        ckpt.load_trainable(model, state.best_state, "the best model's weights")
    metrics, val_probs = loop.validate()
    sets, set_probs = loop.evaluate_sets()
    summary = {"run_dir": str(run_dir), "best_metric": parts.config.train.metric_for_best, "best_value": state.best_metric,
               "best_step": state.best_step, "steps": state.step, "validation_accuracy": metrics["accuracy"],
               "device": str(accelerator.device), "precision": precision_name(accelerator.mixed_precision),
               "base_dtype": parts.base_dtype,
               "memory_allocator": parts.speed.allocator or "system",
               "trainable_params": parts.trainable, "train_seconds": round(state.train_seconds, 2),
               "cpu_threads": torch.get_num_threads(), "machine": _machine(accelerator.device),
               "train_samples_per_s": round(state.samples / max(state.train_seconds, 1e-9), 2),
               "train_tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1)}
    if parts.speed.caches and parts.speed.caches[0] is not None:
        caches = parts.speed.caches
        summary["prefix_cache"] = {"start_layer": caches[0].start, "build_seconds": round(
            sum(c.build_seconds for c in caches), 2), "gigabytes": round(sum(c.nbytes for c in caches) / 1e9, 3)}
    summary["model_params"] = full_model_params(model)
    names = data.label_map.names
    if accelerator.is_main_process:
        write_metrics(run_dir / EVAL_FILE, {**metrics, "split": "validation", "step": state.best_step})
        save_predictions(run_dir / PREDICTIONS_DIR / "validation.csv", data.validation.texts, data.validation.labels,
                         val_probs, names)
        if sets:
            write_eval_sets(run_dir, data.eval_sets, parts.config.data.eval_sets, sets, set_probs, names,
                            state.best_step)
    if sets:
        summary["eval_sets"] = {name: headline(result) for name, result in sets.items()}
    if data.test is not None:
        test_tokens = tokenize_cached(tokenizer, data.test.texts, parts.config.model.max_length)
        probs = predict_proba(model, test_tokens, tokenizer.pad_token_id, parts.config.train.batch_size * 2, accelerator.device,
                              autocast=accelerator.autocast)
        test = classification_metrics(data.test.labels, probs, data.label_map.names)
        summary["test_accuracy"] = test["accuracy"]
        if accelerator.is_main_process:
            write_metrics(run_dir / TEST_EVAL_FILE, {**test, "split": "test", "data": parts.config.data.test.path})
            save_predictions(run_dir / PREDICTIONS_DIR / "test.csv", data.test.texts, data.test.labels, probs, names)
    summary["wall_seconds"] = round(loop.wall_seconds(), 2)
    if accelerator.is_main_process:
        write_json(run_dir / SUMMARY_FILE, summary)
        print("\n" + format_metrics(metrics))
        print(_summary_text(summary))
        from textlora.commands.report import report_after_training  # matplotlib is loaded only now

        report_after_training(run_dir)
    end_trackers(accelerator)
    return run_dir


def _summary_text(summary: dict) -> str:
    lines = [f"\nrun folder          {summary['run_dir']}",
             f"best {summary['best_metric']:<14} {summary['best_value']:.4f} (step {summary['best_step']} of {summary['steps']})",
             f"trainable params    {summary['trainable_params']:,}",
             f"wall time           {summary['wall_seconds']:.1f} s (training {summary['train_seconds']:.1f} s)",
             f"throughput          {summary['train_samples_per_s']:.1f} samples/s, {summary['train_tokens_per_s']:.0f} tokens/s"]
    if "test_accuracy" in summary:
        lines.append(f"test accuracy       {summary['test_accuracy']:.4f}")
    for name, metrics in summary.get("eval_sets", {}).items():
        lines.append(f"{name + ' accuracy':<19} {metrics['accuracy']:.4f} (eval set)")
    return "\n".join(lines)
