"""Resumable checkpoints, written atomically: a temp folder, a manifest last, then one rename.

A checkpoint holds only what changes during training (trainable weights, optimizer, scheduler,
RNG, loop counters), never the frozen base model, so keeping several is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import secrets
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import RunFolderError, WriteError, os_error_message

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def removed_on_failure(tmp: Path, what: str, then: str = "run the command again"):
    """Delete ``tmp`` (a file or folder being written) when writing it fails or is interrupted.

    An ``OSError`` (disk full, read-only, no permission, a file where a folder should be) becomes a
    :class:`WriteError` naming ``what``, the fix for that error and ``then`` (how to go on); the file
    or folder ``tmp`` was to replace is untouched.
    """
    try:
        yield
    except BaseException as exc:
        remove_path(tmp)
        if isinstance(exc, OSError):
            raise WriteError(f"{os_error_message(exc, 'write ' + what)}, then {then}") from None
        raise


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree, if there is one (also when the path runs through a file)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()


def check_output_file(output: Path, example: str, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse, before any work is done, an output file path that names a folder, runs through a file,
    or is one of the command's ``inputs`` (also through a symbolic or hard link): writing it would replace them."""
    if output.is_dir():
        raise WriteError(f"--output {output} is a folder; give a file name such as {example}")
    through = next((p for p in output.parents if p.exists()), None)
    if through is not None and not through.is_dir():
        raise WriteError(f"--output {output}: {through} is a file, not a folder; fix the path")
    for source in inputs:
        with contextlib.suppress(OSError):  # an input that is no file (a hub name) cannot be overwritten
            if output.exists() and os.path.samefile(output, source):
                raise WriteError(f"--output {output} is the input {source}; writing it would replace the data. "
                                 f"Give another file name, such as {example}")


def temp_beside(path: Path) -> Path:
    """A temporary name beside ``path`` for writing it atomically: a name of its own, so that a file the
    user keeps beside it (``out.csv.tmp``) is never overwritten or deleted."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = temp_beside(path)
    with removed_on_failure(tmp, str(path)):
        tmp.write_text(text)
        os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place; the old one is removed only after the new one exists.

    The old folder is set aside under a new name of its own, so a folder the user named ``FINAL.old``
    is never touched.
    """
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, old)  # onto the new, empty folder
    os.replace(tmp, final)
    if old is not None:
        remove_path(old)


OUTPUT_LIST = ".textlora-files"
"""In a folder written by :func:`folder_written_whole`: the names it wrote (JSON), so that only those are replaced."""


def _report_file(name: str) -> bool:
    """The kinds of file report and compare write (for their outputs from before :data:`OUTPUT_LIST` was kept)."""
    return name.endswith((".md", ".png", ".json"))


def _not_replaceable(output: Path, marker: str, own: Callable[[str], bool]) -> Optional[str]:
    """Why replacing ``output`` would delete something this command did not write (None when it would not)."""
    entries = {path.name for path in output.iterdir()}
    if not entries:
        return None
    if marker not in entries:
        return f"it has no {marker}, so it is not an earlier output of this command"
    if (output / OUTPUT_LIST).is_file():
        try:
            written = set(json.loads((output / OUTPUT_LIST).read_text())) | {OUTPUT_LIST}
        except (ValueError, TypeError):  # an edited or damaged list proves nothing: trust no name in the folder
            written = {marker, OUTPUT_LIST}
        foreign = sorted(entries - written)
    else:  # written before the list was kept: only the kinds of file this command writes
        foreign = sorted(name for name in entries if not own(name))
    return f"it also holds {', '.join(foreign[:3])}, which this command did not write" if foreign else None


def check_output_folder(output: Path, marker: str, flag: str, own: Callable[[str], bool] = _report_file) -> None:
    """Refuse, before any work is done, an output folder whose replacement would delete what the user keeps there.

    Only a new or empty folder, or an earlier output of this command (it holds ``marker``, e.g. report.md)
    with nothing added to it, may be replaced. ``own`` tells the names this command writes, for an earlier
    output that has no list of what it wrote (:data:`OUTPUT_LIST`).
    """
    if output.exists() and not output.is_dir():
        raise WriteError(f"{flag} {output} is a file; give the path of a folder to write")
    reason = _not_replaceable(output, marker, own) if output.is_dir() else None
    if reason:
        raise WriteError(f"{flag} {output} already exists and {reason}; writing there would delete what it holds. "
                         "Choose a new or empty folder, or move those files out")


@contextlib.contextmanager
def folder_written_whole(output: Path, marker: str, flag: str, own: Callable[[str], bool] = _report_file):
    """A temporary folder to write an output folder into; on success it replaces ``output`` as a whole.

    Replacing deletes the old ``output``, so it is first checked by :func:`check_output_folder` (``marker``
    and ``own`` as there). The temporary folder has a name of its own beside ``output``; on failure it is
    removed and ``output`` is untouched.
    """
    check_output_folder(output, marker, flag, own)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as exc:
        raise WriteError(os_error_message(exc, f"write {flag} {output}")) from None
    with removed_on_failure(tmp, f"{flag} {output}"):
        yield tmp
        (tmp / OUTPUT_LIST).write_text(json.dumps(sorted(path.name for path in tmp.iterdir())) + "\n")
        replace_dir(tmp, output)


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
