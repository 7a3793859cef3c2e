"""Train stage: data -> LoRA model under budget -> accelerate loop -> a self-describing run folder.

The loop runs on accelerate, so ``accelerate launch`` / ``torchrun`` make it data-parallel
without code changes. Checkpoints are taken at evaluations; ``--resume`` continues from the
newest valid one with the same data order, optimizer, scheduler and RNG.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .batching import make_loader
from .budget import enforce_budget, trainable_breakdown
from .config import RunConfig, TrainConfig, config_from_yaml_file
from .data import TrainingData, prepare_training_data
from .distributed import prepare_train_loader
from .errors import ConfigError, RunFolderError
from .evaluate import classification_metrics, format_metrics, write_metrics
from .inference import predict_proba
from .interrupts import DeferredInterrupt
from .model import build_model, load_tokenizer
from .optim import build_optimizer, build_scheduler
from .first_token import first_token_note
from .prefix_cache import PrefixCache, build_prefix_caches, classifier_logits
from .runfolder import MetricsLog, new_run_dir, with_absolute_paths, write_config, write_json
from .rundata import PREDICTIONS_DIR, full_model_params, save_predictions
from .token_cache import tokenize_cached
from .trackers import check_trackers, end_trackers, start_trackers


@dataclass
class LoopState:
    """Counters that a checkpoint must restore for an exact resume."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    """Micro-batches of the current epoch already consumed (all of them belong to finished steps)."""
    best_metric: Optional[float] = None
    best_step: int = 0
    evals_without_improvement: int = 0
    samples: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    window_loss: float = 0.0
    """Loss sum and micro-batch count since the last train log line (saved by an interrupt, between log lines)."""
    window_count: int = 0
    best_state: dict = field(default_factory=dict, repr=False)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """Accelerator for ``cfg.device`` with the precision ``cfg.mixed_precision`` resolves to."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    if cfg.device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("train.device=mps but MPS is not available; use train.device=auto or cpu")
    use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()
                                      and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()))
    precision = cfg.mixed_precision
    if precision == "auto":
        # bf16 keeps fp32's range (no loss scaling); fp16 only where bf16 is missing (V100, T4).
        if torch.cuda.is_available() and not use_cpu:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            # Measured (BENCHMARKS.md): without AMX tiles bf16 autocast is slower than fp32 on CPU.
            precision = "bf16" if use_cpu and _cpu_has_amx() else "no"
    if precision == "fp16" and use_cpu:
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return Accelerator(mixed_precision=precision, cpu=use_cpu, dynamo_backend="inductor" if cfg.compile else None)


def _cpu_has_amx() -> bool:
    """True on CPUs with AMX bf16 tiles (Sapphire Rapids and later), where bf16 matmuls beat fp32."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def train(config: RunConfig, config_name: str = "run", resume: Optional[Path] = None) -> Path:
    """Train one run; returns its folder. ``resume`` continues the run in that folder."""
    started = time.time()
    if resume is not None:
        resume = Path(resume)
        if not (resume / "config.yaml").is_file():
            raise RunFolderError(f"cannot resume {resume}: it has no config.yaml (is it a run folder?)")
        config = config_from_yaml_file(resume / "config.yaml")
    else:
        config = with_absolute_paths(config)
    accelerator = make_accelerator(config.train)
    main = accelerator.is_main_process
    set_seed(config.train.seed)

    data = prepare_training_data(config.data, config.train.seed)
    # Model and budget are checked before the run folder exists: a refused run leaves nothing behind.
    built = build_model(config.model, data.label_map)
    breakdown = trainable_breakdown(built, config.model.max_trainable_params)
    enforce_budget(config.model, breakdown, built)
    check_trackers(config.train.trackers)
    print(breakdown.table())
    print(f"[model] {first_token_note(built.model, config.model)}")
    tokenizer = load_tokenizer(config.model.name_or_path)
    run_dir = resume if resume is not None else (new_run_dir(config, config_name) if main else None)
    run_dir = Path(_broadcast(accelerator, str(run_dir) if run_dir else ""))
    if main and resume is None:
        write_config(run_dir, config)
        data.label_map.save(run_dir / "labels.json")
        write_json(run_dir / "budget.json", {**breakdown.as_dict(), "lora": {
            "r": config.model.lora_r, "alpha": config.model.lora_alpha, "target_modules": list(config.model.target_modules),
            "layers": config.model.layers}, "head_modules": built.head_modules, "fresh_modules": built.fresh_modules})
        tokenizer.save_pretrained(run_dir / "tokenizer")

    max_length = config.model.max_length
    train_tokens = tokenize_cached(tokenizer, data.train.texts, max_length)
    val_tokens = tokenize_cached(tokenizer, data.validation.texts, max_length)
    data.report["train_truncated_texts"] = train_tokens.truncated
    data.report["train_tokens"] = int(train_tokens.lengths.sum())
    if main and resume is None:
        write_json(run_dir / "data_report.json", data.report)

    model = built.model
    trained_modules = built.head_modules + built.fresh_modules
    optimizer = build_optimizer(model, config.optim, trained_modules)
    model, optimizer = accelerator.prepare(model, optimizer)
    caches = build_prefix_caches(config.train, accelerator.unwrap_model(model), (train_tokens, val_tokens),
                                 tokenizer.pad_token_id, accelerator.device, accelerator.autocast,
                                 log=accelerator.is_main_process)
    loader = make_loader(train_tokens, data.train.labels, config.train.batch_size, tokenizer.pad_token_id,
                         seed=config.train.seed, shuffle=True, max_tokens=config.train.max_tokens_per_batch,
                         pin_memory=torch.cuda.is_available(), cache=caches[0])
    loader = prepare_train_loader(accelerator, loader)  # its share of each global batch per process
    accum = config.train.grad_accum
    steps_per_epoch = max(1, math.ceil(len(loader) / accum))
    total_steps = config.train.max_steps or math.ceil(config.train.epochs * steps_per_epoch)
    # The scheduler is stepped by hand once per optimizer step (not prepared), so its length is
    # the same whatever the number of processes.
    scheduler = build_scheduler(optimizer, config.optim, total_steps)

    state = LoopState()
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=main)
    if main:
        log.on_write = start_trackers(accelerator, config, run_dir)
    if resume is not None:
        state = _resume(run_dir, accelerator.unwrap_model(model), optimizer, scheduler, log)

    loop = _Loop(config, accelerator, model, optimizer, scheduler, loader, val_tokens, data,
                 tokenizer.pad_token_id, run_dir, log, state, total_steps, steps_per_epoch)
    loop.train_cache, loop.val_cache = caches
    try:
        loop.run()
        return _finish(loop, data, tokenizer, breakdown.total, started)
    finally:
        for cache in caches:
            if cache is not None:
                cache.close()


def _broadcast(accelerator: Accelerator, text: str) -> str:
    if accelerator.num_processes == 1:
        return text
    from accelerate.utils import broadcast_object_list

    box = [text]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _resume(run_dir: Path, model, optimizer, scheduler, log: MetricsLog) -> LoopState:
    folder = ckpt.latest_valid(run_dir / "checkpoints")
    if folder is None:
        raise RunFolderError(f"cannot resume {run_dir}: it has no complete checkpoint; start the run again")
    loop = ckpt.load_checkpoint(folder, model, optimizer, scheduler)
    state = LoopState(**{k: v for k, v in loop.items() if k in LoopState.__dataclass_fields__ and k != "best_state"})
    state.best_state = ckpt.trainable_state(model) if state.best_step == state.step else _best_weights(run_dir, state)
    log.truncate_after(state.step)
    print(f"[train] resumed {run_dir} from {folder.name} (epoch {state.epoch}, step {state.step})")
    return state


def _best_weights(run_dir: Path, state: LoopState) -> dict:
    from safetensors.torch import load_file

    best = run_dir / "checkpoints" / f"step-{state.best_step:07d}" / "trainable.safetensors"
    return load_file(str(best)) if best.is_file() else {}


class _Loop:
    """The epoch/step loop; split from :func:`train` so each part reads on one screen."""

    def __init__(self, config, accelerator, model, optimizer, scheduler, loader, val_tokens,
                 data: TrainingData, pad_id, run_dir, log, state, total_steps, steps_per_epoch):
        self.config, self.cfg, self.accelerator = config, config.train, accelerator
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, loader
        self.val_tokens, self.data, self.pad_id = val_tokens, data, pad_id
        self.run_dir, self.log, self.state = run_dir, log, state
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self._tokens = 0  # tokens seen since the last _sync_counters (a device tensor once training runs)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        self.stop = False
        self.train_cache: Optional[PrefixCache] = None
        self.val_cache: Optional[PrefixCache] = None

    def run(self) -> None:
        cfg, state = self.cfg, self.state
        bar = tqdm(total=self.total_steps, initial=state.step, disable=cfg.quiet or not self.accelerator.is_main_process,
                   desc="train", dynamic_ncols=True)
        self.model.train()
        # Loss and token counts stay on the device between log lines: reading them back every
        # micro-batch would make the GPU wait for the host at each step. The window is non-empty
        # only when resuming from an interrupt's checkpoint, taken between log lines.
        window_loss, window_count = state.window_loss, state.window_count
        state.window_loss, state.window_count = 0.0, 0
        # Ctrl-C / SIGTERM stop after the current optimizer step, where a checkpoint is exact.
        interrupt = DeferredInterrupt(enabled=self.accelerator.num_processes == 1)
        with interrupt:
            while state.step < self.total_steps and not self.stop and not interrupt.requested:
                # accelerate's loader re-seeds the sampler with its own iteration count on every
                # __iter__; telling it the epoch keeps the order a function of (seed, epoch) alone.
                # Told through self.loader: a skipping loader's set_epoch does not reach the sampler.
                self.loader.set_epoch(state.epoch)
                batches = self.loader
                if state.batches_done:
                    batches = self.accelerator.skip_first_batches(self.loader, state.batches_done)
                tick = time.time()
                for micro, batch in enumerate(batches, start=state.batches_done):
                    loss = self._forward_backward(batch)
                    window_loss += loss
                    window_count += 1
                    last_of_epoch = micro + 1 == len(self.loader)
                    if (micro + 1) % self.cfg.grad_accum and not last_of_epoch:
                        continue
                    self._optimizer_step()
                    state.batches_done = micro + 1
                    state.train_seconds += time.time() - tick
                    tick = time.time()
                    bar.update(1)
                    if state.step % cfg.log_every_steps == 0 or state.step == self.total_steps:
                        # The mean over processes: each one saw only its share of the rows.
                        self._log_train(float(self.accelerator.reduce(window_loss, "mean")) / window_count, bar)
                        window_loss, window_count = 0.0, 0
                    if (cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0) or \
                            (cfg.eval_every_steps is None and last_of_epoch) or state.step == self.total_steps:
                        self._evaluate_and_checkpoint()
                        # A resumed run starts its loss window here too: logs stay identical.
                        window_loss, window_count = 0.0, 0
                        tick = time.time()
                    if state.step >= self.total_steps or self.stop or interrupt.requested:
                        break
                else:
                    state.epoch += 1
                    state.batches_done = 0
        bar.close()
        if interrupt.requested and state.step < self.total_steps and not self.stop:
            state.window_loss, state.window_count = float(window_loss), window_count
            self._checkpoint()
            raise KeyboardInterrupt(f"{interrupt.requested} at step {state.step} of {self.total_steps}: checkpoint "
                                    f"saved; continue with `textlora train --resume {self.run_dir}`")

    def _forward_backward(self, batch) -> torch.Tensor:
        """One micro-batch; returns its loss as a detached 0-d tensor (still on the device)."""
        with self.accelerator.autocast():
            logits = classifier_logits(self.model, batch, self.train_cache)
            loss = self.loss_fn(logits.float(), batch["labels"])
        self.accelerator.backward(loss / self.cfg.grad_accum)
        self.state.samples += batch["labels"].shape[0] * self.accelerator.num_processes
        self._tokens = self._tokens + batch["attention_mask"].sum() * self.accelerator.num_processes
        return loss.detach()

    def _sync_counters(self) -> None:
        """Move the device-side token count into ``state.tokens`` (one host sync)."""
        self.state.tokens += int(self._tokens)
        self._tokens = 0

    def _optimizer_step(self) -> None:
        if self.config.optim.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _log_train(self, loss: float, bar) -> None:
        self._sync_counters()
        state = self.state
        lr = max(group["lr"] for group in self.optimizer.param_groups)
        rate = state.samples / max(state.train_seconds, 1e-9)
        record = {"kind": "train", "step": state.step, "epoch": round(state.step / self.steps_per_epoch, 4),
                  "loss": round(loss, 6), "lr": lr, "samples_per_s": round(rate, 2),
                  "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
                  "samples": state.samples, "train_seconds": round(state.train_seconds, 3)}
        self.log.write(record)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}")
        if self.cfg.quiet and self.accelerator.is_main_process:
            print(f"[train] step {state.step}/{self.total_steps} loss {loss:.4f} lr {lr:.2e} {rate:.1f} samples/s", flush=True)

    def validate(self) -> dict:
        model = self.accelerator.unwrap_model(self.model)
        probs = predict_proba(model, self.val_tokens, self.pad_id, self.cfg.batch_size * 2,
                              self.accelerator.device, autocast=self.accelerator.autocast, cache=self.val_cache)
        self.model.train()
        self.val_probs = probs  # the last validation's [N, K] probabilities: _finish saves the best model's
        return classification_metrics(self.data.validation.labels, probs, self.data.label_map.names)

    def _evaluate_and_checkpoint(self) -> None:
        state, cfg = self.state, self.cfg
        metrics = self.validate()
        value = metrics[cfg.metric_for_best]
        better = state.best_metric is None or (value < state.best_metric if cfg.metric_for_best == "loss"
                                               else value > state.best_metric)
        if better:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            state.best_state = ckpt.trainable_state(self.accelerator.unwrap_model(self.model))
            self._save_adapter()
        else:
            state.evals_without_improvement += 1
        self.log.write({"kind": "eval", "step": state.step, "epoch": round(state.step / self.steps_per_epoch, 4),
                        "loss": metrics["loss"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                        "best": better})
        if self.accelerator.is_main_process:
            tqdm.write(f"[eval] step {state.step}: accuracy {metrics['accuracy']:.4f} macro-F1 "
                       f"{metrics['macro_f1']:.4f} loss {metrics['loss']:.4f}{'  (best)' if better else ''}")
        if cfg.patience and state.evals_without_improvement >= cfg.patience:
            tqdm.write(f"[train] early stop: {cfg.patience} evaluations without improvement")
            self.stop = True
        self._checkpoint()

    def _save_adapter(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tmp = self.run_dir / "adapter.tmp"
            with ckpt.removed_on_failure(tmp, f"the adapter in {self.run_dir}", "free disk space, then continue "
                                         f"with `textlora train --resume {self.run_dir}`"):
                self.accelerator.unwrap_model(self.model).save_pretrained(tmp)
                ckpt.replace_dir(tmp, self.run_dir / "adapter")

    def _checkpoint(self) -> None:
        self._sync_counters()
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        state = self.state
        loop_state = {k: v for k, v in state.__dict__.items() if k != "best_state"}
        if loop_state["batches_done"] >= len(self.loader):  # a finished epoch resumes at the next one
            loop_state["epoch"], loop_state["batches_done"] = state.epoch + 1, 0
        root = self.run_dir / "checkpoints"
        ckpt.save_checkpoint(root / f"step-{state.step:07d}", self.accelerator.unwrap_model(self.model),
                             self.optimizer, self.scheduler, loop_state)
        ckpt.prune(root, self.cfg.keep_last, root / f"step-{state.best_step:07d}")


def _finish(loop: _Loop, data: TrainingData, tokenizer, trainable: int, started: float) -> Path:
    """Best weights back in, eval.json (+ test_eval.json), summary.json, and the printed summary."""
    state, accelerator, run_dir = loop.state, loop.accelerator, loop.run_dir
    model = accelerator.unwrap_model(loop.model)
    if state.best_state:
        ckpt.load_trainable(model, state.best_state, "the best model's weights")
    metrics = loop.validate()
    summary = {"run_dir": str(run_dir), "best_metric": loop.cfg.metric_for_best, "best_value": state.best_metric,
               "best_step": state.best_step, "steps": state.step, "validation_accuracy": metrics["accuracy"],
               "trainable_params": trainable, "train_seconds": round(state.train_seconds, 2),
               "train_samples_per_s": round(state.samples / max(state.train_seconds, 1e-9), 2),
               "train_tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1)}
    if loop.train_cache is not None:
        summary["prefix_cache"] = {"start_layer": loop.train_cache.start, "build_seconds": round(
            loop.train_cache.build_seconds + loop.val_cache.build_seconds, 2), "gigabytes": round(
            (loop.train_cache.nbytes + loop.val_cache.nbytes) / 1e9, 3)}
    summary["model_params"] = full_model_params(model)
    names = data.label_map.names
    if accelerator.is_main_process:
        write_metrics(run_dir / "eval.json", {**metrics, "split": "validation", "step": state.best_step})
        save_predictions(run_dir / PREDICTIONS_DIR / "validation.csv", data.validation.texts, data.validation.labels,
                         loop.val_probs, names)
    if data.test is not None:
        test_tokens = tokenize_cached(tokenizer, data.test.texts, loop.config.model.max_length)
        probs = predict_proba(model, test_tokens, loop.pad_id, loop.cfg.batch_size * 2, accelerator.device,
                              autocast=accelerator.autocast)
        test = classification_metrics(data.test.labels, probs, data.label_map.names)
        summary["test_accuracy"] = test["accuracy"]
        if accelerator.is_main_process:
            write_metrics(run_dir / "test_eval.json", {**test, "split": "test", "data": loop.config.data.test.path})
            save_predictions(run_dir / PREDICTIONS_DIR / "test.csv", data.test.texts, data.test.labels, probs, names)
    summary["wall_seconds"] = round(time.time() - started, 2)
    if accelerator.is_main_process:
        write_json(run_dir / "summary.json", summary)
        print("\n" + format_metrics(metrics))
        print(_summary_text(summary))
        from .report import report_after_training  # matplotlib is loaded only now

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
    return "\n".join(lines)
