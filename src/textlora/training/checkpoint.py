"""Resumable checkpoints, written atomically: a temp folder, a manifest last, then one rename.

A checkpoint holds only what changes during training (trainable weights, optimizer, scheduler,
RNG, loop counters), never the frozen base model, so keeping several is cheap.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from textlora.errors import RunFolderError
from textlora.run.files import remove_path, removed_on_failure, replace_dir

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every trainable parameter (a snapshot: later optimizer steps do not change it)."""
    # copy=True: on a CPU model .cpu() returns the live parameter, which the optimizer keeps updating.
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model, optimizer, scheduler, loop_state: dict) -> Path:
    """Write ``folder`` (e.g. ``checkpoints/step-000120``) atomically; returns it."""
    tmp = folder.with_name(folder.name + ".tmp")
    remove_path(tmp)
    run_dir = folder.parent.parent  # checkpoints live in RUN/checkpoints/
    with removed_on_failure(tmp, f"checkpoint {folder}", "continue from the last complete checkpoint with "
                            f"`textlora train --resume {run_dir}`"):
        tmp.mkdir(parents=True)
        _write_checkpoint_files(tmp, model, optimizer, scheduler, loop_state)
        replace_dir(tmp, folder)
    return folder


def _write_checkpoint_files(tmp: Path, model, optimizer, scheduler, loop_state: dict) -> None:
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    rng = rng_state()
    # numpy's and python's RNG states are plain data: JSON keeps torch.load(weights_only=True) usable.
    torch.save({k: v for k, v in rng.items() if k in ("torch", "cuda")}, tmp / "rng.pt")
    py_state = {"python": [rng["python"][0], list(rng["python"][1]), rng["python"][2]],
                "numpy": [rng["numpy"][0], rng["numpy"][1].tolist(), *rng["numpy"][2:]]}
    (tmp / "loop.json").write_text(json.dumps({**loop_state, "rng": py_state}))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def is_valid(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
        return all((folder / name).is_file() and (folder / name).stat().st_size == meta["bytes"]
                   and _sha256(folder / name) == meta["sha256"] for name, meta in files.items())
    except (ValueError, KeyError, OSError):
        return False


def list_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (temp folders excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and "." not in p.name)


def latest_valid(root: Path) -> Optional[Path]:
    """The newest checkpoint whose manifest checks out; corrupt ones are skipped with a warning."""
    for folder in reversed(list_checkpoints(root)):
        if is_valid(folder):
            return folder
        warnings.warn(f"checkpoint {folder} is incomplete or corrupt; falling back to an earlier one", stacklevel=2)
    return None


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Copy saved trainable weights (as from :func:`trainable_state`) into ``model`` in place."""
    params = dict(model.named_parameters())
    unknown = [n for n in weights if n not in params]
    if unknown:
        raise RunFolderError(f"{where} does not match the model (unknown weights such as {unknown[0]})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``folder``; returns the loop state."""
    load_trainable(model, load_file(str(folder / "trainable.safetensors")), f"checkpoint {folder}")
    try:  # weights_only: a checkpoint from elsewhere cannot run code, only hold tensors and plain data
        optim_state = torch.load(folder / "optim.pt", weights_only=True)
        rng = torch.load(folder / "rng.pt", weights_only=True)
    except pickle.UnpicklingError:
        raise RunFolderError(f"checkpoint {folder} holds a pickle that asks for more than tensors and plain data; "
                             "it was refused without running it. Delete that checkpoint folder to resume from "
                             "an earlier one") from None
    optimizer.load_state_dict(optim_state["optimizer"])
    scheduler.load_state_dict(optim_state["scheduler"])
    loop = json.loads((folder / "loop.json").read_text())
    saved = loop.pop("rng")
    rng["python"] = (saved["python"][0], tuple(saved["python"][1]), saved["python"][2])
    rng["numpy"] = (saved["numpy"][0], np.array(saved["numpy"][1], dtype=np.uint32), *saved["numpy"][2:])
    set_rng_state(rng)
    return loop


def prune(root: Path, keep_last: int, keep: Optional[Path]) -> None:
    """Delete all but the newest ``keep_last`` checkpoints and ``keep`` (the best)."""
    folders = list_checkpoints(root)
    for folder in folders[:-keep_last]:
        if keep is None or folder.resolve() != keep.resolve():
            shutil.rmtree(folder, ignore_errors=True)
