"""The training stacks the benchmarks compare, built from one :class:`TrainSetup`.

- the published notebooks' stack: ``Trainer`` + peft ``get_peft_model``, ``padding=True`` inside
  ``datasets.map``, ``DataCollatorWithPadding`` and a batch-8 prediction loop;
- the best-practice Trainer: the same with length-grouped sampling, dynamic padding and bf16 where it pays;
- textlora: its config overrides for the same setup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import LABEL_NAMES, Rows, num_layers, read_rows, token_limit


@dataclass(frozen=True)
class TrainSetup:
    """One training configuration, applied identically to every arm."""

    model_dir: str
    device: str = "cpu"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "value")
    layers: Optional[tuple[int, ...]] = None
    """Encoder layers with LoRA; None = all."""
    batch_size: int = 48
    steps: Optional[int] = None
    """Optimizer steps; None trains ``epochs``."""
    epochs: float = 1.0
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: Optional[float] = 1.0
    """The Trainer's default (the notebooks clip at 1.0); textlora gets the same."""
    max_length: int = 128
    seed: int = 42
    log_every: int = 10

    @property
    def layers_spec(self) -> Optional[str]:
        return None if self.layers is None else f"{self.layers[0]}-{self.layers[-1]}"


def top_third(model_dir: str) -> tuple[int, ...]:
    """The top third of the encoder layers (roberta-base: 8-11, MiniLM-L6: 4-5)."""
    total = num_layers(model_dir)
    return tuple(range(total - max(1, total // 3), total))


def build_peft_classifier(setup: TrainSetup, num_labels: int):
    """The notebooks' model: stock classifier + ``get_peft_model`` (peft picks the head to train)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModelForSequenceClassification.from_pretrained(setup.model_dir, num_labels=num_labels)
    config = LoraConfig(task_type="SEQ_CLS", r=setup.lora_r, lora_alpha=setup.lora_alpha,
                        lora_dropout=setup.lora_dropout, target_modules=list(setup.targets),
                        layers_to_transform=list(setup.layers) if setup.layers else None)
    return get_peft_model(model, config)


def tokenized_dataset(tokenizer, rows: Rows, notebook: bool, max_length: int, model_limit: Optional[int] = None):
    """``datasets.Dataset`` for the Trainer arms.

    notebook: ``padding=True, truncation=True`` in ``map(batched=True)`` (1,000-row chunks, each
    padded to its longest text, truncation at the tokenizer's limit) as the published notebooks do;
    ``model_limit`` caps that limit for a tokenizer that has none (a bare vocabulary).
    Otherwise unpadded ids truncated at ``max_length`` plus a ``length`` column for length grouping.
    """
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    dataset = Dataset.from_dict({"text": rows.texts, "label": rows.labels})
    if notebook:
        limit = token_limit(tokenizer, model_limit or tokenizer.model_max_length)
        return dataset.map(lambda b: tokenizer(b["text"], padding=True, truncation=True, max_length=limit),
                           batched=True, remove_columns=["text"])

    def encode(batch):
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    return dataset.map(encode, batched=True, remove_columns=["text"])


def cpu_bf16_beneficial() -> tuple[bool, str]:
    """bf16 autocast pays on CPUs with AMX; with AVX-512 only it is slower than fp32 (textlora's measurement)."""
    from textlora.model.precision import cpu_has_amx

    if cpu_has_amx():
        return True, "bf16: the CPU has AMX bf16 tiles"
    return False, "fp32: this CPU has no AMX, where bf16 autocast is slower than fp32"


def make_trainer(setup: TrainSetup, model, tokenizer, dataset, best_practice: bool, output_dir: Path,
                 bf16: bool = False):
    """A ``transformers.Trainer`` for the notebook stack or the best-practice variant.

    Both: ``DataCollatorWithPadding``, the setup's batch/lr/schedule/seed, no evaluation or saving.
    Best practice adds length-grouped sampling (``train_sampling_strategy="group_by_length"``, the
    transformers 5 spelling of ``group_by_length=True``) and ``bf16`` where asked.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    length = {"max_steps": setup.steps} if setup.steps else {"num_train_epochs": setup.epochs}
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=setup.batch_size, learning_rate=setup.lr,
        weight_decay=setup.weight_decay, lr_scheduler_type="linear", warmup_steps=setup.warmup_ratio,
        max_grad_norm=setup.max_grad_norm or 0.0, logging_steps=setup.log_every, save_strategy="no",
        eval_strategy="no", report_to="none", seed=setup.seed, use_cpu=setup.device == "cpu",
        bf16=bf16, disable_tqdm=True, dataloader_pin_memory=setup.device == "cuda",
        train_sampling_strategy="group_by_length" if best_practice else "random", **length)
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
                   processing_class=tokenizer)


def build_trainer_arm(setup: TrainSetup, rows_csv: Path, notebook: bool, output_dir: Path, bf16: bool = False):
    """Tokenizer, dataset, peft model and Trainer of the notebook stack (or its best-practice variant)."""
    from transformers import AutoTokenizer, set_seed

    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    # Trainer seeds only when it is built; seeding here too makes the head and LoRA init repeatable
    # (without it the same seed gave 0.8618 and 0.8584 test accuracy in two parity runs).
    set_seed(setup.seed)
    model = build_peft_classifier(setup, num_labels=len(LABEL_NAMES))
    dataset = tokenized_dataset(tokenizer, read_rows(rows_csv), notebook=notebook, max_length=setup.max_length,
                                model_limit=model.config.max_position_embeddings)
    return make_trainer(setup, model, tokenizer, dataset, best_practice=not notebook, output_dir=output_dir, bf16=bf16)


def trainer_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# textlora arms with one setting forced: fp32 (to isolate what train.mixed_precision=auto gives: bf16 on GPUs
# and on CPUs with AMX), the frozen-prefix cache on / off, batches of random rows instead of length-grouped ones,
# torch's own dropout instead of textlora's CPU masks, torch.compile on.
# Plain "textlora" keeps every default.
TEXTLORA_ARM_OVERRIDES = {"textlora-fp32": ("train.mixed_precision=no",), "textlora-cache": ("train.prefix_cache=on",),
                          "textlora-nocache": ("train.prefix_cache=off",),
                          "textlora-random-batches": ("train.length_pool_batches=1",),
                          "textlora-torch-dropout": ("train.fast_cpu_dropout=false",),
                          "textlora-compile": ("train.compile=true",),
                          "textlora-base-fp32": ("model.base_dtype=fp32",),
                          "textlora-base-bf16": ("model.base_dtype=bf16",)}


def textlora_overrides(setup: TrainSetup, train_csv: Path, val_csv: Path, output_dir: Path, run_name: str,
                       test_csv: Optional[Path] = None, eval_only_at_end: bool = True,
                       extra: Sequence[str] = ()) -> list[str]:
    """``key=value`` overrides that give textlora exactly ``setup`` on the rows in ``train_csv``.

    Validation rows come from a separate file so that the training rows are the same as the
    Trainer arms'; ``eval_only_at_end`` keeps validation out of the timed steps.
    """
    out = [f"model.name_or_path={setup.model_dir}", f"model.max_length={setup.max_length}",
           f"model.lora_r={setup.lora_r}", f"model.lora_alpha={setup.lora_alpha}",
           f"model.lora_dropout={setup.lora_dropout}", f"model.target_modules=[{','.join(setup.targets)}]",
           "model.max_trainable_params=100000000",
           f"data.train.path={train_csv}", "data.train.text_columns=[text]",
           f"data.validation.path={val_csv}", "data.validation.text_columns=[text]",
           f"data.label_names=[{','.join(LABEL_NAMES)}]",
           "optim.name=adamw", f"optim.lr={setup.lr}", f"optim.weight_decay={setup.weight_decay}",
           "optim.scheduler=linear", f"optim.warmup_ratio={setup.warmup_ratio}",
           f"train.batch_size={setup.batch_size}", f"train.seed={setup.seed}",
           f"train.log_every_steps={setup.log_every}", f"train.device={setup.device}",
           f"train.output_dir={output_dir}", f"train.run_name={run_name}", "train.quiet=true", "train.keep_last=1"]
    if setup.layers_spec:
        out.append(f"model.layers='{setup.layers_spec}'")
    if setup.max_grad_norm:
        out.append(f"optim.max_grad_norm={setup.max_grad_norm}")
    out.append(f"train.max_steps={setup.steps}" if setup.steps else f"train.epochs={setup.epochs}")
    if eval_only_at_end:
        out.append("train.eval_every_steps=1000000000")  # the run still validates once, after its last step
    if test_csv is not None:
        out += [f"data.test.path={test_csv}", "data.test.text_columns=[text]"]
    return out + list(extra)


def textlora_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("kind") == "train"]


def notebook_predict(model, tokenizer, texts: Sequence[str], batch_size: int = 8, device: str = "cpu",
                     chunk_padding: bool = True) -> np.ndarray:
    """The notebooks' prediction loop on the unmerged peft model, ``no_grad``, argmax. Returns class ids ``[N]``.

    chunk_padding: as the notebooks do, tokenize with ``padding=True`` inside ``datasets.map(batched=True)``
    (every 1,000-row chunk padded to its longest text), then a ``DataLoader`` of ``batch_size`` rows with
    ``DataCollatorWithPadding``. Without it, a more generous loop: each batch tokenized and padded on its own.
    """
    import torch

    model.to(device).eval()
    limit = token_limit(tokenizer, model.config.max_position_embeddings)
    preds: list[int] = []
    if chunk_padding:
        from datasets import Dataset, disable_progress_bars
        from torch.utils.data import DataLoader
        from transformers import DataCollatorWithPadding

        disable_progress_bars()
        dataset = Dataset.from_dict({"text": list(texts)}).map(
            lambda b: tokenizer(b["text"], padding=True, truncation=True, max_length=limit),
            batched=True, remove_columns=["text"])
        batches = DataLoader(dataset, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    else:
        batches = (tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=limit,
                             return_tensors="pt") for start in range(0, len(texts), batch_size))
    for batch in batches:
        with torch.no_grad():
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        preds.extend(logits.argmax(-1).tolist())
    return np.asarray(preds, dtype=np.int64)
