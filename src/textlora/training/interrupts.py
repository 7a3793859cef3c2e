"""Ctrl-C and scheduler stops (SIGINT, SIGTERM) that end training at a step boundary with a checkpoint.

A signal arriving mid-step cannot be checkpointed exactly: gradients are half accumulated, the
optimizer may be half applied and dropout has drawn from the RNG. So the first signal only asks
the loop to stop after the current optimizer step; the loop then checkpoints and stops. A second
signal stops at once (KeyboardInterrupt), leaving the newest periodic checkpoint as the resume point.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredInterrupt:
    """While installed, SIGINT/SIGTERM set :attr:`requested` instead of interrupting.

    Args:
        enabled: install nothing when False (several processes: a signal reaches them at different
            steps, and stopping at different steps would hang the collectives).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: Optional[str] = None
        """Name of the first signal received (``SIGINT``/``SIGTERM``), or None."""
        self._previous: dict = {}

    def __enter__(self) -> "DeferredInterrupt":
        if self.enabled:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            raise KeyboardInterrupt(f"{name} received twice: stopped at once; the newest checkpoint is the "
                                    "resume point")
        self.requested = name
        # os.write, not print: a handler that prints while the loop is printing raises "reentrant call".
        os.write(2, f"\n[train] {name}: stopping after this step with a checkpoint "
                    "(send it again to stop at once)\n".encode())
