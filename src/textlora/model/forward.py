"""Running a classifier: the device, logits of a batch, and batched class probabilities.

Texts are run longest-first in length-sorted batches (little padding) and the results are put
back in input order. Shared by training-time validation, evaluate, predict, classify and serve.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch

from textlora.data.batching import Tokenized, make_loader
from textlora.errors import ConfigError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str = "auto", key: Optional[str] = None) -> torch.device:
    """The device ``name`` (``auto``, ``cpu``, ``cuda``, ``mps``) means: ``auto`` is CUDA, else MPS, else CPU.

    Args:
        key: the setting ``name`` came from (``train.device``); given, a device that is not there is refused.
    Raises:
        ConfigError: with ``key``, ``cuda`` or ``mps`` asked for where there is none.
    """
    if key and name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}=cuda but no CUDA GPU is visible; use {key}=auto or cpu")
    if key and name == "mps" and not _mps_available():
        raise ConfigError(f"{key}=mps but MPS is not available; use {key}=auto or cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, tokens: Tokenized, pad_id: int, batch_size: int = 64,
                  device: Optional[torch.device] = None, autocast=contextlib.nullcontext,
                  progress: Optional[callable] = None, cache=None) -> np.ndarray:
    """Class probabilities ``[N, K]`` (float32) for every tokenized text, in input order.

    ``cache`` (the prefix cache of exactly these texts) skips the frozen bottom layers.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    loader = make_loader(tokens, None, batch_size, pad_id, shuffle=False, cache=cache)
    out: Optional[np.ndarray] = None
    for batch in loader:
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with autocast():
            logits = classifier_logits(model, batch, cache)
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        if out is None:
            out = np.zeros((len(tokens.ids), probs.shape[1]), dtype=np.float32)
        out[batch["index"].cpu().numpy()] = probs
        if progress:
            progress(len(batch["index"]))
    model.train(was_training)
    return out



def classifier_logits(model: torch.nn.Module, batch: dict, cache=None) -> torch.Tensor:
    """Logits ``[B, K]`` for a collated batch: from token ids, or, when the batch carries ``hidden`` states
    gathered from ``cache`` (an optional speedup, see textlora.speed), by the cache's own forward pass."""
    if cache is None or "hidden" not in batch:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return cache.logits(model, batch)
