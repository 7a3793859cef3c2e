"""The training loop: optimizer steps, logging, validation, checkpoints and interrupts.

:func:`textlora.training.recipe.setup` builds everything, :func:`~textlora.training.recipe.fit` runs :class:`TrainLoop`; a resumed run
gets its :class:`LoopState` back from the newest valid checkpoint (:func:`resume_state`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from textlora.training import checkpoint as ckpt
from textlora.run.files import removed_on_failure, replace_dir
from textlora.errors import RunFolderError
from textlora.training.eval_sets import eval_line, headline, lower_is_better, selection_value
from textlora.run.metrics import classification_metrics
from textlora.model.forward import classifier_logits, predict_proba
from textlora.training.interrupts import DeferredInterrupt
from textlora.run.folder import MetricsLog
from textlora.run.layout import ADAPTER_DIR, CHECKPOINTS_DIR


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
    wall_seconds: float = 0.0
    """Wall time of earlier invocations of this run (a resume continues it), up to their last checkpoint."""
    window_loss: float = 0.0
    """Loss sum and micro-batch count since the last train log line (saved by an interrupt, between log lines)."""
    window_count: int = 0
    best_state: dict = field(default_factory=dict, repr=False)


def resume_state(run_dir: Path, model, optimizer, scheduler, log: MetricsLog) -> LoopState:
    folder = ckpt.latest_valid(run_dir / CHECKPOINTS_DIR)
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

    best = run_dir / CHECKPOINTS_DIR / f"step-{state.best_step:07d}" / "trainable.safetensors"
    return load_file(str(best)) if best.is_file() else {}


class TrainLoop:
    """The epoch/step loop over prepared model, optimizer, scheduler and loader, writing the run folder as it goes."""

    def __init__(self, parts):
        """``parts``: the :class:`textlora.training.recipe.Components` that setup built."""
        self.config, self.cfg, self.accelerator = parts.config, parts.config.train, parts.accelerator
        self.model, self.optimizer, self.scheduler, self.loader = parts.model, parts.optimizer, parts.scheduler, parts.loader
        self.val_tokens, self.set_tokens, self.data = parts.val_tokens, parts.set_tokens, parts.data
        self.pad_id = parts.tokenizer.pad_token_id
        self.run_dir, self.log, self.state = parts.run_dir, parts.log, parts.state
        self.total_steps, self.steps_per_epoch, self.started = parts.total_steps, parts.steps_per_epoch, parts.started
        # Prefix caches (an optional speedup) of train, validation and each eval set, or Nones.
        caches = parts.speed.caches or (None,) * (2 + len(parts.set_tokens))
        self.train_cache, self.val_cache = caches[0], caches[1]
        self.set_caches = dict(zip(parts.set_tokens, caches[2:]))
        self._tokens = 0  # tokens seen since the last _sync_counters (a device tensor once training runs)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        self.stop = False

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

    def validate(self) -> tuple[dict, np.ndarray]:
        """Validation metrics and the class probabilities ``[N, K]`` they were computed from."""
        return self._score(self.val_tokens, self.data.validation.labels, self.val_cache)

    def evaluate_sets(self) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
        """Every ``data.eval_sets`` set's metrics ``{name: metrics}`` and probabilities ``{name: [N, K]}``, run as
        validation is (batches, autocast)."""
        results, set_probs = {}, {}
        for name, tokens in self.set_tokens.items():
            results[name], set_probs[name] = self._score(tokens, self.data.eval_sets[name].labels,
                                                         self.set_caches.get(name))
        return results, set_probs

    def _score(self, tokens, labels, cache) -> tuple[dict, np.ndarray]:
        """Metrics and probabilities ``[N, K]`` of the model as it stands on ``tokens``; the model is left training."""
        probs = predict_proba(self.accelerator.unwrap_model(self.model), tokens, self.pad_id, self.cfg.batch_size * 2,
                              self.accelerator.device, autocast=self.accelerator.autocast, cache=cache)
        self.model.train()
        return classification_metrics(labels, probs, self.data.label_map.names), probs

    def _evaluate_and_checkpoint(self) -> None:
        state, cfg = self.state, self.cfg
        metrics, _ = self.validate()
        sets, _ = self.evaluate_sets()
        value = selection_value(cfg.metric_for_best, metrics, sets)
        better = state.best_metric is None or (value < state.best_metric if lower_is_better(cfg.metric_for_best)
                                               else value > state.best_metric)
        if better:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            state.best_state = ckpt.trainable_state(self.accelerator.unwrap_model(self.model))
            self._save_adapter()
        else:
            state.evals_without_improvement += 1
        record = {"kind": "eval", "step": state.step, "epoch": round(state.step / self.steps_per_epoch, 4),
                  "loss": metrics["loss"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                  "best": better}
        if sets:  # validation stays at the top level, as in runs without eval sets
            record["sets"] = {name: headline(result) for name, result in sets.items()}
        self.log.write(record)
        if self.accelerator.is_main_process:
            tqdm.write(eval_line(state.step, metrics, sets, cfg.metric_for_best, value, better))
        if cfg.patience and state.evals_without_improvement >= cfg.patience:
            tqdm.write(f"[train] early stop: {cfg.patience} evaluations without improvement")
            self.stop = True
        self._checkpoint()

    def wall_seconds(self) -> float:
        """Wall time of this run so far, earlier invocations included."""
        return self.state.wall_seconds + time.time() - self.started

    def _save_adapter(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tmp = self.run_dir / "adapter.tmp"
            with removed_on_failure(tmp, f"the adapter in {self.run_dir}",
                                         f"continue with `textlora train --resume {self.run_dir}`"):
                self.accelerator.unwrap_model(self.model).save_pretrained(tmp)
                replace_dir(tmp, self.run_dir / ADAPTER_DIR)

    def _checkpoint(self) -> None:
        self._sync_counters()
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        state = self.state
        loop_state = {k: v for k, v in state.__dict__.items() if k != "best_state"}
        loop_state["wall_seconds"] = self.wall_seconds()
        if loop_state["batches_done"] >= len(self.loader):  # a finished epoch resumes at the next one
            loop_state["epoch"], loop_state["batches_done"] = state.epoch + 1, 0
        root = self.run_dir / CHECKPOINTS_DIR
        ckpt.save_checkpoint(root / f"step-{state.step:07d}", self.accelerator.unwrap_model(self.model),
                             self.optimizer, self.scheduler, loop_state)
        ckpt.prune(root, self.cfg.keep_last, root / f"step-{state.best_step:07d}")
