"""Writing into a run folder (or any output) safely: whole files and folders appear at once, or not at all.

Files go to a temp name beside their destination and are renamed over it; folders are filled under a
temp name and swapped in. Output guards refuse to overwrite an input or a folder textlora did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from textlora.errors import RunFolderError, WriteError, os_error_message


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


def check_output_file(output: Path, example: str, inputs: Sequence[str | Path] = (),
                      own: Optional[tuple[str, Callable[[Path], bool]]] = None) -> None:
    """Refuse, before any work is done, an output file path that names a folder, runs through a file,
    is one of the command's ``inputs`` (also through a symbolic or hard link), or is a file this command did
    not write: writing it would replace them.

    ``own``: (what an earlier output of the command looks like, a test of an existing file); an existing
    file that passes it is the command's own earlier output and may be replaced. Without it, none may.
    """
    if output.is_dir():
        raise WriteError(f"--output {output} is a folder; give a file name such as {example}")
    through = next((p for p in output.parents if p.exists()), None)
    if through is not None and not through.is_dir():
        raise WriteError(f"--output {output}: {through} is a file, not a folder; fix the path")
    if not output.parent.exists():
        raise WriteError(f"--output folder {output.parent} does not exist; create it first")
    for source in inputs:
        with contextlib.suppress(OSError):  # an input that is no file (a hub name) cannot be overwritten
            if output.exists() and os.path.samefile(output, source):
                raise WriteError(f"--output {output} is the input {source}; writing it would replace the data. "
                                 f"Give another file name, such as {example}")
    if output.exists() and not (own is not None and _passes(own[1], output)):
        looks = f" ({own[0]})" if own is not None else ""
        raise WriteError(f"--output {output} already exists and is not an earlier output of this command{looks}; "
                         f"writing it would replace it. Give a new file name, such as {example}, or move the file away")


def _passes(test: Callable[[Path], bool], path: Path) -> bool:
    """``test(path)``, False where the file cannot be read (then it is not known to be the command's own)."""
    try:
        return test(path)
    except (OSError, ValueError):
        return False


def starts_with(prefix: str) -> Callable[[Path], bool]:
    """A test of a file that begins with ``prefix`` (the header or first line a command writes)."""
    def test(path: Path) -> bool:
        with path.open("rb") as handle:
            return handle.read(len(prefix.encode())) == prefix.encode()
    return test


def is_json_with(*keys: str) -> Callable[[Path], bool]:
    """A test of a file holding a JSON object with all of ``keys`` (what a command's JSON output always has)."""
    def test(path: Path) -> bool:
        data = json.loads(path.read_text())
        return isinstance(data, dict) and all(key in data for key in keys)
    return test


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


def read_json(path: Path, required: bool = True, damaged_ok: bool = False) -> dict:
    """The JSON in a run folder's file ``path``.

    Args:
        required: a missing file is an error; otherwise it reads as ``{}``.
        damaged_ok: a file that is not valid JSON reads as ``{}`` (for files that only add information).
    Raises:
        RunFolderError: the file is missing (and ``required``) or not valid JSON; the message names it.
    """
    if not path.is_file():
        if required:
            raise RunFolderError(f"{path.parent} has no {path.name}; pass a finished run folder "
                                 "(the one `textlora train` printed)")
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        if damaged_ok:
            return {}
        raise RunFolderError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None
