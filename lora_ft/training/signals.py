"""SIGINT / SIGTERM during training: stop at the next step boundary with a checkpoint; a second one aborts.

``StopSignals`` only notes the first signal while the training loop runs; ``callbacks.StopOnSignal``
turns the note into a checkpoint and a stop at the end of the current optimizer step. Before the
loop starts (loading, tokenizing) there is nothing to save, so a signal aborts at once, as does a
second signal at any time: checkpoints are written under a temporary name and renamed, so an abort
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import signal
import threading

from lora_ft.errors import LoraFtError

log = logging.getLogger("lora_ft")

HANDLED = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(LoraFtError):
    """Training stopped by a signal; the exit code is 128 + its number (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message, exit_code=128 + signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Context manager installing the SIGINT/SIGTERM handlers (main thread only), restoring the old ones.

    Attributes:
        training: set by ``StopOnSignal`` while the training loop runs.
        signum: the signal that asked for a graceful stop, or None.
        aborted_by: the signal that aborted at once (raised as KeyboardInterrupt), or None.
    """

    def __init__(self) -> None:
        self.training = False
        self.signum: int | None = None
        self.aborted_by: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers there only
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.training and self.signum is None:
            self.signum = signum
            log.warning(
                "%s: stopping after this step and saving a checkpoint (send it again to abort at once)",
                signal_name(signum),
            )
            return
        self.aborted_by = signum
        raise KeyboardInterrupt
