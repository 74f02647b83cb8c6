"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class LoraFtError(Exception):
    """A user-facing error: the message names the problem and, where there is one, the fix.

    The CLI prints ``error: <message>`` and exits with ``exit_code``; no traceback unless ``--debug``.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
