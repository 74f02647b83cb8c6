"""Sentences one per line, from a file or stdin, streamed in bounded chunks; and echoing them back short.

Lines end at ``"\\n"`` only (with a ``"\\r"`` before it dropped): ``str.splitlines`` would also break
a sentence at U+2028, form feeds, record separators and other characters that occur inside text.
Bytes are decoded as strict UTF-8 line by line, so a bad byte is reported with its offset.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import BinaryIO, TypeVar

from lora_ft.errors import LoraFtError

T = TypeVar("T")

ECHO_CHARS = 200  # an echoed sentence is cut to this many characters, the last an ellipsis


def read_lines(stream: BinaryIO, where: str) -> Iterator[str]:
    """The non-blank lines of ``stream`` (opened in binary), without their line ends, in order.

    Raises:
        LoraFtError: a line is not UTF-8; the message names ``where``, the byte, its offset and line.
    """
    offset = 0
    for lineno, raw in enumerate(stream, start=1):  # a binary stream splits at b"\n" only
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LoraFtError(
                f"{where} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {offset + exc.start}, "
                f"line {lineno}); re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None
        offset += len(raw)
        line = line.removesuffix("\n").removesuffix("\r")
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark, as some editors write
        if line.strip():  # blank lines (spacing, a trailing newline) carry no sentence
            yield line


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter); never more than one list in memory."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def shorten(text: str, limit: int = ECHO_CHARS) -> str:
    """``text``, or its first ``limit - 1`` characters and an ellipsis when it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
