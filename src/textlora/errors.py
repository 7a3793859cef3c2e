"""The exception types the CLI turns into one clear ``error:`` line and exit status 2, and the wording of file-system errors."""

import errno


class TextloraError(Exception):
    """A problem the user can fix: the message says what is wrong, where, and how to fix it.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    """


class ConfigError(TextloraError):
    """A configuration value is unknown, of the wrong type, or out of range."""


class DataError(TextloraError):
    """An input file or dataset cannot be read or does not have the expected shape."""


class BudgetError(TextloraError):
    """The LoRA configuration has more trainable parameters than the budget allows."""


class RunFolderError(TextloraError):
    """A run folder is missing a file or a file in it is corrupt."""


class WriteError(TextloraError):
    """A result could not be written (disk full, read-only folder, no permission); nothing half-written is left."""


# What to do about a file-system error, by errno: the strerror alone ("Not a directory") does not say.
_OS_FIXES = {
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free disk space (disk quota exceeded)",
    errno.EACCES: "choose a place you may write to, or fix its permissions",
    errno.EPERM: "choose a place you may write to, or fix its permissions",
    errno.EROFS: "the file system is read-only; choose a path on a writable one",
    errno.ENOENT: "a folder on the path does not exist; create it or fix the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "that is a folder; give a file path",
    errno.EEXIST: "a file of that name is in the way; move it or choose another path",
}


def os_error_message(exc: OSError, action: str = "") -> str:
    """One line for a file-system error: what could not be done (``action``, e.g. ``write predictions
    out.csv``), the path, the reason and the fix."""
    fix = _OS_FIXES.get(exc.errno, "check the path and free disk space")
    if not action:
        return f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}; {fix}"
    path = f" ({exc.filename})" if exc.filename and str(exc.filename) not in action else ""
    return f"could not {action}{path}: {exc.strerror or exc}; {fix}"
