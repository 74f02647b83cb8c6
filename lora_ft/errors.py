"""The one exception type the CLI turns into a one-line message and a non-zero exit, and how any
other error is cut to one line for such a message."""

from __future__ import annotations


class LoraFtError(Exception):
    """A user-facing error: the message names the problem and, where there is one, the fix.

    The CLI prints ``error: <message>`` and exits with ``exit_code``; no traceback unless ``--debug``.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of ``exc``'s message, or ``default`` when it has none.

    Libraries' messages can run to pages (a traceback of the worker, a list of every argument); a
    one-line error quotes their first line only.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else default
