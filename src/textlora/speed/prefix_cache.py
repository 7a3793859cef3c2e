"""Frozen-prefix cache: run the frozen bottom of the encoder once per text, train only the top.

When LoRA touches only layers k..N-1 (the "layers 8-11" layout), the embeddings and layers 0..k-1
are frozen; in eval mode they are a fixed function of the tokens. Their output (the hidden states
entering layer k) is computed once, stored in half precision, and every training step runs only
layers k..N-1 and the head. The one semantic difference from uncached training: the cached layers
run without dropout. Validation in eval mode gives the same outputs either way (up to fp16 rounding
of the cached states).

The model stays stock: for a cached forward pass the embeddings module is swapped for a
pass-through and the encoder's layer list for its top part, then both are put back.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from textlora.data.batching import Tokenized, make_loader
from textlora.errors import ConfigError
from textlora.model.parts import EncoderParts, encoder_parts


class _PassthroughEmbeddings(torch.nn.Module):
    """Stands in for the embeddings module: the cached hidden states come in as ``inputs_embeds``."""

    def forward(self, input_ids=None, inputs_embeds=None, **_unused):
        return inputs_embeds


def lowest_trained_layer(parts: EncoderParts) -> int:
    """Index of the lowest layer with a trainable parameter (0 if the embeddings train, N if no layer does)."""
    if any(p.requires_grad for p in parts.base.embeddings.parameters()):
        return 0
    for index, layer in enumerate(parts.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return len(parts.layers)


class _Swap:
    """Puts a pass-through embeddings module and a slice of the layers in place for one forward pass.

    The replacement modules are made once, so a compiled model sees the same objects every step.
    """

    def __init__(self, parts: EncoderParts, layers: torch.nn.ModuleList, passthrough: bool):
        self.parts = parts
        self.layers = layers
        self.embeddings = _PassthroughEmbeddings() if passthrough else None

    @contextlib.contextmanager
    def __call__(self):
        base, encoder = self.parts.base, self.parts.base.encoder
        saved_embeddings, saved_layers = base.embeddings, encoder.layer
        if self.embeddings is not None:
            base.embeddings = self.embeddings
        encoder.layer = self.layers
        try:
            yield
        finally:
            base.embeddings, encoder.layer = saved_embeddings, saved_layers


def estimate_bytes(lengths: np.ndarray, hidden_size: int) -> int:
    """Size of a cache for texts of these token lengths: real tokens x hidden x 2 bytes (fp16)."""
    return int(lengths.sum()) * hidden_size * 2


class PrefixCache:
    """Hidden states entering layer ``start`` for every text, as one ragged fp16 array ``[tokens, hidden]``.

    Row ``i`` of the texts occupies ``states[offsets[i] : offsets[i] + lengths[i]]``; the array lives in
    memory or in a memory-mapped file (deleted by :meth:`close`).
    """

    def __init__(self, parts: EncoderParts, start: int, lengths: np.ndarray, directory: Optional[Path] = None):
        self.parts, self.start = parts, start
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        shape = (int(self.lengths.sum()), parts.hidden_size)
        self.path: Optional[Path] = None
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix="prefix-cache-", suffix=".f16", dir=directory)
            os.close(handle)
            self.path = Path(name)
            self.states = np.memmap(self.path, dtype=np.float16, mode="w+", shape=shape)
        else:
            self.states = np.empty(shape, dtype=np.float16)
        self.top = _Swap(parts, parts.layers[start:], passthrough=True)
        self.build_seconds = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.states.size) * 2

    @torch.inference_mode()
    def fill(self, tokens: Tokenized, pad_id: int, device: torch.device, batch_size: int = 64,
             autocast=contextlib.nullcontext) -> "PrefixCache":
        """Run embeddings + layers ``0..start-1`` in eval mode over ``tokens`` and store their output."""
        started = time.time()
        bottom = _Swap(self.parts, self.parts.layers[:self.start], passthrough=False)
        base = self.parts.base
        was_training = base.training
        base.eval()
        for batch in make_loader(tokens, None, batch_size, pad_id, shuffle=False):
            with bottom(), autocast():
                hidden = base(input_ids=batch["input_ids"].to(device),
                              attention_mask=batch["attention_mask"].to(device)).last_hidden_state
            hidden = hidden.to(torch.float16).cpu().numpy()
            for row, index in enumerate(batch["index"].tolist()):
                offset, length = self.offsets[index], self.lengths[index]
                self.states[offset:offset + length] = hidden[row, :length]
        base.train(was_training)
        self.build_seconds = time.time() - started
        return self

    def gather(self, indices, longest: int) -> torch.Tensor:
        """Hidden states ``[B, longest, hidden]`` (fp16, zeros at padding) for the rows ``indices``."""
        out = torch.zeros((len(indices), longest, self.states.shape[1]), dtype=torch.float16)
        for row, index in enumerate(indices):
            offset, length = self.offsets[index], self.lengths[index]
            out[row, :length] = torch.from_numpy(np.asarray(self.states[offset:offset + length]))
        return out

    def logits(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """Logits ``[B, K]`` of a batch whose ``hidden`` states this cache gathered: only the top layers run."""
        dtype = next(self.parts.layers.parameters()).dtype
        with self.top():
            return model(inputs_embeds=batch["hidden"].to(dtype), attention_mask=batch["attention_mask"]).logits

    def close(self) -> None:
        """Free the states and delete the memory-mapped file, if any."""
        self.states = np.empty((0, self.parts.hidden_size), dtype=np.float16)
        if self.path is not None and self.path.exists():
            self.path.unlink()


def prefix_start(mode: str, model: torch.nn.Module, lengths: np.ndarray, max_gb: float,
                 directory: Optional[Path] = None) -> tuple[Optional[int], str]:
    """Decide whether to cache: the layer to start training from (or None) and a line saying why.

    Args:
        mode: ``train.prefix_cache`` (``auto``, ``on``, ``off``).
        lengths: token lengths of every text the cache would hold.
        directory: where a memory-mapped cache would go (its free space is checked), or None for memory.
    Raises:
        ConfigError: ``mode == "on"`` and the cache cannot be used.
    """
    if mode == "off":
        return None, "prefix cache off (train.prefix_cache=off)"
    parts = encoder_parts(model)
    reason = None
    if parts is None:
        reason = "this model has no <base>.embeddings + <base>.encoder.layer layout (BERT/RoBERTa-style) to cache"
    else:
        # With no layer trained, cache what enters the last layer: it may run for the first token only
        # (first_token.py), so its output is not a per-token state to store.
        start = min(lowest_trained_layer(parts), len(parts.layers) - 1)
        size_gb = estimate_bytes(lengths, parts.hidden_size) / 1e9
        if start == 0:
            reason = "LoRA or trained weights start at layer 0, so there is no frozen prefix (set model.layers, e.g. 8-11)"
        elif size_gb > max_gb:
            reason = (f"the cache would need {size_gb:.2f} GB > train.prefix_cache_max_gb={max_gb}; raise the limit, "
                      f"or set train.prefix_cache_dir to keep it on disk")
        elif directory is not None and size_gb > _free_gb(directory):
            reason = (f"the cache would need {size_gb:.2f} GB but {directory} has {_free_gb(directory):.2f} GB free; "
                      f"point train.prefix_cache_dir at a larger disk")
    if reason is None:
        return start, (f"prefix cache on: embeddings + layers 0-{start - 1} run once per text "
                       f"({size_gb:.2f} GB fp16), layers {start}-{len(parts.layers) - 1} train")
    if mode == "on":
        raise ConfigError(f"train.prefix_cache=on cannot be used: {reason}; or set train.prefix_cache=auto/off")
    return None, f"prefix cache off: {reason}"


def _free_gb(directory: Path) -> float:
    """Free space where ``directory`` is (or would be created)."""
    import shutil

    existing = Path(directory).absolute()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free / 1e9


def build_prefix_caches(cfg, model: torch.nn.Module, token_sets: tuple[Tokenized, ...], pad_id: int,
                        device: torch.device, autocast=contextlib.nullcontext, log: bool = True) -> tuple:
    """One filled cache per token set (e.g. training and validation texts), or Nones, per ``cfg.prefix_cache``.

    Args:
        cfg: the run's TrainConfig (``prefix_cache``, ``prefix_cache_dir``, ``prefix_cache_max_gb``, ``batch_size``).
        model: the unwrapped (peft) model, already on ``device``.
    """
    lengths = np.concatenate([tokens.lengths for tokens in token_sets])
    directory = Path(cfg.prefix_cache_dir) if cfg.prefix_cache_dir else None
    start, reason = prefix_start(cfg.prefix_cache, model, lengths, cfg.prefix_cache_max_gb, directory)
    if log:
        print(f"[train] {reason}")
    if start is None:
        return tuple(None for _ in token_sets)
    parts = encoder_parts(model)
    caches = tuple(PrefixCache(parts, start, tokens.lengths, directory).fill(
        tokens, pad_id, device, cfg.batch_size * 2, autocast) for tokens in token_sets)
    if log:
        print(f"[train] prefix cache built in {sum(c.build_seconds for c in caches):.1f} s "
              f"({sum(c.nbytes for c in caches) / 1e9:.2f} GB)")
    return caches
