"""The one exception type the CLI turns into a clear message and a non-zero exit."""


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
