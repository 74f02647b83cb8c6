"""IOB2 tags and CoNLL files, in pure Python (the built-in ``wnut16`` is prepared with it, local files
are read with it).

A CoNLL file holds one word per line, the word first and its tag last (tab- or space-separated; any
columns between them, CoNLL-2003's part-of-speech and chunk tags, are ignored), and a blank line
(whitespace only) between sentences; ``-DOCSTART-`` lines are skipped.

Tags are IOB2 (Tjong Kim Sang & Veenstra 1999, the scheme of CoNLL-2003's distributed files after
conversion and of WNUT): ``O`` outside any entity, ``B-<type>`` on an entity's first word, ``I-<type>``
on its next words. An ``I-<type>`` that does not continue a ``B-``/``I-`` of the same type is refused
rather than read as IOB1 would read it: the two schemes give different entities for the same file, and
which one a file uses cannot be told from the file, so IOB1 and BIOES files must be converted first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lora_ft.errors import LoraFtError

OUTSIDE = "O"
_TAG = re.compile(r"([BI])-(\S+)")
_DOCSTART = "-DOCSTART-"


@dataclass
class Sentence:
    """One sentence of a CoNLL file: its words, their tags and the line (from 1) of each word."""

    tokens: list[str]
    tags: list[str]
    lines: list[int]


def parse_conll(text: str, where: str) -> list[Sentence]:
    """The sentences of CoNLL ``text`` (see the module docstring); tags are checked by ``check_tags``.

    Raises:
        LoraFtError: a word line with no tag, naming its line number in ``where``; no sentence at all.
    """
    sentences, current = [], Sentence([], [], [])
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("\t") if "\t" in line.strip() else line.split()
        fields = [f.strip() for f in fields]
        if not line.strip():
            if current.tokens:
                sentences.append(current)
                current = Sentence([], [], [])
            continue
        if fields[0] == _DOCSTART:
            continue
        if len(fields) < 2 or not fields[0] or not fields[-1]:
            raise LoraFtError(
                f"line {number} of {where} is {line!r}, not a word and its tag; a CoNLL file has one word "
                "and its tag per line (tab- or space-separated, the tag last) and a blank line between "
                "sentences"
            )
        current.tokens.append(fields[0])
        current.tags.append(fields[-1])
        current.lines.append(number)
    if current.tokens:
        sentences.append(current)
    if not sentences:
        raise LoraFtError(f"{where} has no sentences (no word and tag lines)")
    return sentences


def entity_type(tag: str) -> str | None:
    """``person`` for ``B-person`` or ``I-person``; None for ``O``."""
    return None if tag == OUTSIDE else tag[2:]


def check_tags(tags: list[str], locate: Callable[[int], str]) -> None:
    """Refuse tags that are not IOB2; ``locate(i)`` names word ``i``'s place (``line 12 of FILE``).

    Raises:
        LoraFtError: a tag that is neither ``O`` nor ``B-``/``I-<type>``, or an ``I-<type>`` that does
            not continue an entity of that type.
    """
    previous = OUTSIDE
    for i, tag in enumerate(tags):
        match = _TAG.fullmatch(tag) if isinstance(tag, str) else None
        if tag != OUTSIDE and match is None:
            raise LoraFtError(
                f"tag {tag!r} at {locate(i)} is not an IOB2 tag; tags are O, B-<type> (an entity's first "
                "word) or I-<type> (its next words)"
            )
        if match is not None and match.group(1) == "I" and entity_type(previous) != match.group(2):
            raise LoraFtError(
                f"tag {tag!r} at {locate(i)} follows {previous!r}; in IOB2 an entity starts with "
                f"B-{match.group(2)} (convert IOB1 or BIOES files to IOB2)"
            )
        previous = tag


def tag_names(types: list[str]) -> list[str]:
    """The tag set of entity ``types``: ``O``, then ``B-`` and ``I-`` of each type, in the given order."""
    return [OUTSIDE, *(f"{prefix}-{kind}" for kind in types for prefix in "BI")]


def check_tag_names(names: list[str], where: str) -> None:
    """Refuse a tag set that is not ``O`` plus IOB2 tags, or that lacks ``O``."""
    bad = [n for n in names if n != OUTSIDE and not _TAG.fullmatch(n)]
    if bad or OUTSIDE not in names:
        what = f"{', '.join(map(repr, bad))} not IOB2" if bad else "no 'O'"
        raise LoraFtError(
            f"{where} must be IOB2 tags with 'O' among them (O, B-<type>, I-<type>), got {what}"
        )
