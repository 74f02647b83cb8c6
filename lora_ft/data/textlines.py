"""Sentences one per line, or text pairs (``text<TAB>text_pair`` lines, or two columns of a csv, tsv or
jsonl file), from a file or stdin, streamed in bounded chunks; and echoing them back short.

Lines end at ``"\\n"`` only (with a ``"\\r"`` before it dropped): ``str.splitlines`` would also break
a sentence at U+2028, form feeds, record separators and other characters that occur inside text.
Bytes are decoded as strict UTF-8 line by line, so a bad byte is reported with its offset.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from lora_ft.errors import LoraFtError

T = TypeVar("T")

ECHO_CHARS = 200  # an echoed sentence is cut to this many characters, the last an ellipsis
# A pair file with named columns; any other file (and stdin) holds text<TAB>text_pair lines.
PAIR_TABLES = (".csv", ".tsv", ".jsonl")


def read_lines(stream: BinaryIO, where: str) -> Iterator[str]:
    """The non-blank lines of ``stream`` (opened in binary), without their line ends, in order.

    Raises:
        LoraFtError: a line is not UTF-8; the message names ``where``, the byte, its offset and line.
    """
    for _, line in _numbered_lines(stream, where):
        yield line


def read_pair_lines(stream: BinaryIO, where: str) -> Iterator[tuple[str, str]]:
    """The pairs of ``stream``'s non-blank ``text<TAB>text_pair`` lines, in order.

    Raises:
        LoraFtError: a line that is not UTF-8, without exactly one tab, or with an empty text.
    """
    for lineno, line in _numbered_lines(stream, where):
        fields = line.split("\t")
        if len(fields) != 2:
            found = "no tab" if len(fields) == 1 else f"{len(fields) - 1} tabs"
            raise LoraFtError(
                f"line {lineno} of {where} has {found}; this model classifies text pairs: give one pair per "
                "line as text<TAB>text_pair"
            )
        yield _pair(fields[0], fields[1], f"line {lineno} of {where}")


def read_pair_table(path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """The pairs in ``columns`` (text, text pair) of a csv or tsv file with a header, or a jsonl file
    of objects, in row order.

    Raises:
        LoraFtError: a file that is not UTF-8, lacks a column, or has a row with an empty or non-text cell.
    """
    with path.open("rb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")
        try:
            if path.suffix.lower() == ".jsonl":
                yield from _jsonl_pairs(stream, path, columns)
            else:
                yield from _csv_pairs(stream, path, columns)
        except UnicodeDecodeError:
            raise LoraFtError(
                f"{path} is not UTF-8 text; re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None


def _csv_pairs(stream, path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    # QUOTE_NONE for .tsv, as data files are read (data/sources.py): stray quotes stay text.
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix.lower() == ".tsv" else {}
    reader = csv.DictReader(stream, **options)
    header = reader.fieldnames or []
    _check_columns(header, path, columns)
    for i, row in enumerate(reader, start=1):  # rows counted from 1, the header not counted, as in loading
        yield _pair(row[columns[0]], row[columns[1]], f"row {i} of {path}")


def _jsonl_pairs(stream, path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoraFtError(
                f"line {lineno} of {path} is not JSON ({exc.msg}); give one object per line"
            ) from None
        if not isinstance(row, dict):
            raise LoraFtError(f"line {lineno} of {path} is not a JSON object; give one object per line")
        _check_columns(list(row), path, columns, f"line {lineno} of ")
        yield _pair(row[columns[0]], row[columns[1]], f"line {lineno} of {path}")


def _check_columns(found: list[str], path: Path, columns: tuple[str, str], where: str = "") -> None:
    missing = [c for c in columns if c not in found]
    if missing:
        raise LoraFtError(
            f"{where}{path} has no column {missing[0]!r} (it has: {', '.join(found) or 'none'}); this model "
            f"classifies text pairs from the columns {columns[0]!r} and {columns[1]!r}"
        )


def _pair(text, text_pair, where: str) -> tuple[str, str]:
    for value, which in ((text, "first"), (text_pair, "second")):
        if not isinstance(value, str) or not value.strip():
            raise LoraFtError(f"the {which} text at {where} is empty or not text; fix or remove that row")
    return text, text_pair


def _numbered_lines(stream: BinaryIO, where: str) -> Iterator[tuple[int, str]]:
    """``read_lines`` with each line's number (from 1, blank lines counted)."""
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
            yield lineno, line


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter); never more than one list in memory."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def shorten(text: str, limit: int = ECHO_CHARS) -> str:
    """``text``, or its first ``limit - 1`` characters and an ellipsis when it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unzip_pairs(items: list[str] | list[tuple[str, str]]) -> tuple[list[str], list[str] | None]:
    """Sentences -> (them, None); pairs -> (first texts, second texts)."""
    if items and isinstance(items[0], tuple):
        return [a for a, _ in items], [b for _, b in items]
    return list(items), None
