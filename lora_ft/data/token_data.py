"""Token-classification splits (``token_classification``): every row a list of words and one IOB2 tag per
word (data/iob2.py), checked word by word, with the tag set fixed by the train split.

Rows come from CoNLL files (``.conll``, read by data/sources.py with each word's line number) or from
JSONL/parquet/hub rows with a list of words and a list of tags (names, or ids of a hub
``Sequence(ClassLabel)``). The columns are ``data.text_column`` and ``data.label_column``; left at their
sentence-task defaults (``sentence``, ``label``) they read ``tokens`` and ``tags`` (a CoNLL file has
those two columns).

The tag set (``label_names``): ``data.label_names`` when given, else ``O`` and, for every entity type
in train in order of first appearance sorted by name, its ``B-`` and ``I-`` tags (both, so the model can
tag a one-word and a longer entity of every type it saw). A tag of another split outside that set is
an error naming its line, as is every malformed row: nothing is dropped.
Each split comes out with ``tokens`` (list of str) and ``label`` (list of tag ids).
"""

from __future__ import annotations

from collections.abc import Callable

import datasets

from lora_ft.config import DataConfig
from lora_ft.data.iob2 import check_tag_names, check_tags, entity_type, tag_names
from lora_ft.data.sources import CONLL_LINES, RawSplits
from lora_ft.data.task import TOKENS
from lora_ft.errors import LoraFtError

TAGS = "tags"
_SENTENCE_DEFAULTS = {"text_column": "sentence", "label_column": "label"}


def token_columns(cfg: DataConfig) -> tuple[str, str]:
    """The data's words and tags columns: ``data.text_column`` / ``data.label_column``, or ``tokens`` /
    ``tags`` where those are left at their sentence-task defaults."""
    words = TOKENS if cfg.text_column == _SENTENCE_DEFAULTS["text_column"] else cfg.text_column
    tags = TAGS if cfg.label_column == _SENTENCE_DEFAULTS["label_column"] else cfg.label_column
    return words, tags


def _locator(lines: list[int] | None, row: int, where: str) -> Callable[[int], str]:
    """Where word ``i`` of ``row`` is: its CoNLL line (``lines``), else the row (from 1) and the word (from 1)."""
    if lines is not None:
        return lambda i: f"line {lines[i]} of {where}"
    return lambda i: f"row {row + 1} of {where} (word {i + 1})"


def _row_tags(value, row: int, where: str, column: str, class_names: list[str] | None) -> list[str]:
    if not isinstance(value, list | tuple):
        raise LoraFtError(
            f"tags {value!r} at row {row} of {where} (column {column!r}) are not a list; a token task's "
            "rows hold a list of words and a list of tags, one per word"
        )
    if class_names is not None:
        if not all(isinstance(i, int) and 0 <= i < len(class_names) for i in value):
            raise LoraFtError(
                f"tags {list(value)!r} at row {row} of {where} are not all ids 0..{len(class_names) - 1}"
            )
        return [class_names[i] for i in value]
    return list(value)


def _rows(ds: datasets.Dataset, where: str, cfg: DataConfig) -> list[tuple[list[str], list[str], Callable]]:
    """Each row's words, tags (checked as IOB2) and locator."""
    words_col, tags_col = (TOKENS, TAGS) if CONLL_LINES in ds.column_names else token_columns(cfg)
    for column, key in ((words_col, "data.text_column"), (tags_col, "data.label_column")):
        if column not in ds.column_names:
            raise LoraFtError(
                f"{where} has no column {column!r}; columns are: {', '.join(ds.column_names)} (set {key})"
            )
    if len(ds) == 0:
        raise LoraFtError(f"{where} has no rows")
    inner = getattr(ds.features[tags_col], "feature", None)
    class_names = list(inner.names) if isinstance(inner, datasets.ClassLabel) else None
    lines = ds[CONLL_LINES][:] if CONLL_LINES in ds.column_names else None
    out = []
    for row, (words, tags) in enumerate(zip(ds[words_col], ds[tags_col], strict=True)):
        if (
            not isinstance(words, list)
            or not words
            or not all(isinstance(w, str) and w.strip() for w in words)
        ):
            raise LoraFtError(
                f"row {row + 1} of {where} (column {words_col!r}) is not a non-empty list of words; "
                "fix or remove that row"
            )
        tags = _row_tags(tags, row + 1, where, tags_col, class_names)
        if len(tags) != len(words):
            raise LoraFtError(
                f"row {row + 1} of {where} has {len(words)} words but {len(tags)} tags; give one tag per word"
            )
        locate = _locator(lines[row] if lines is not None else None, row, where)
        check_tags(tags, locate)
        out.append((words, tags, locate))
    return out


def _names(train: list, cfg: DataConfig, where: str) -> list[str]:
    if cfg.label_names is not None:
        check_tag_names(list(cfg.label_names), "data.label_names")
        return list(cfg.label_names)
    types = sorted({entity_type(t) for _, tags, _ in train for t in tags} - {None})
    if not types:
        raise LoraFtError(
            f"{where} tags no entity (every tag is O); a token classifier needs entities to learn"
        )
    return tag_names(types)


def token_splits(raw: RawSplits, cfg: DataConfig) -> tuple[dict[str, datasets.Dataset], list[str]]:
    """Every split as ``tokens`` and ``label`` (tag ids over the train split's tag set); the tag set.

    Raises:
        LoraFtError: a missing column, an empty row or word, a row whose tag count is not its word
            count, a tag that is not IOB2 (named by its line), or a tag outside the train split's set.
    """
    if cfg.text_pair_column is not None:
        raise LoraFtError(
            "data.text_pair_column does not apply to token classification (one word list per row)"
        )
    rows = {split: _rows(ds, raw.where[split], cfg) for split, ds in raw.splits.items()}
    names = _names(rows["train"], cfg, raw.where["train"])
    index = {name: i for i, name in enumerate(names)}
    features = datasets.Features(
        {
            TOKENS: datasets.Sequence(datasets.Value("string")),
            "label": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    splits = {}
    for split, split_rows in rows.items():
        ids = []
        for _, tags, locate in split_rows:
            for i, tag in enumerate(tags):
                if tag not in index:
                    raise LoraFtError(
                        f"tag {tag!r} at {locate(i)} is not a tag of the train split ({', '.join(names)}); "
                        "fix that line, or give every tag in data.label_names"
                    )
            ids.append([index[t] for t in tags])
        values = {TOKENS: [words for words, _, _ in split_rows], "label": ids}
        splits[split] = datasets.Dataset.from_dict(values, features=features)
    return splits, names
