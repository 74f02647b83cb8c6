"""Labels of the two problem types beyond single-label classification (data/task.py), read and checked
as ``load_data`` reads single-label ones: every bad cell is one line naming the file, the row (from 1)
and the column; nothing is dropped silently.

Multi-label (``multi_label_classification``): each row's labels are a list of names or of ids (JSONL,
parquet, a hub ``Sequence(ClassLabel)``), or one string split on ``data.label_separator`` (CSV:
``"fire;flood"``). The label names are fixed by the train split, as for single-label: a hub
``ClassLabel``'s names, ``data.label_names`` or a directory's ``labels.json`` for ids (index = id; ids
alone name themselves ``"0"``..``"K-1"``, K = the largest id in train + 1), else the sorted names used
in train. A row naming a label the names do not hold is an error. An empty list is a row with none of
the labels (an all-zero target is legitimate: a message in no category); an empty or null cell is a
missing label (an error, as for single-label), so a CSV cannot say "none": use JSONL's ``[]``.
The split's ``label`` is a multi-hot list of K float32 (1.0 = the label applies).

Regression (``regression``): each label is a number (ints accepted; a CSV's text must parse as one);
NaN, infinities and values beyond float32 are errors. ``label`` is a float32; the one output is named
``score``. A test split whose labels are all -1 (GLUE's unlabelled STS-B test set) is not used.
"""

from __future__ import annotations

import math

import datasets
import numpy as np

from lora_ft.config import DataConfig
from lora_ft.data.labels import check_label_names
from lora_ft.data.sources import RawSplits
from lora_ft.data.task import REGRESSION_LABELS
from lora_ft.errors import LoraFtError

UNLABELLED = -1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def integral(labels: list, where: str) -> list[int]:
    """``labels`` as ints (a float that is a whole number counts: csv readers turn an int column with gaps
    into floats); one line naming the first that is not."""
    out = []
    for i, v in enumerate(labels):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int):
            raise LoraFtError(
                f"label {v!r} at row {i + 1} of {where} is not an integer; labels must be all integers 0..K-1 "
                "or all class names"
            )
        out.append(int(v))
    return out


def configured_names(
    cfg: DataConfig, raw: RawSplits, where: str, named: bool, class_names: list[str] | None = None
) -> list[str] | None:
    """``data.label_names``, checked against the data's own names (``class_names``: a ``ClassLabel``'s,
    as a preset names the Hub's labels); None when not set.

    Raises:
        LoraFtError: malformed names, labels that are names already, or a ``labels.json`` that disagrees.
    """
    if cfg.label_names is None:
        return None
    given = check_label_names(cfg.label_names, "data.label_names")
    if class_names is not None and class_names != given:
        raise LoraFtError(
            f"data.label_names ({', '.join(given)}) and the label names {where} gives "
            f"({', '.join(class_names)}) disagree; remove data.label_names"
        )
    if named and class_names is None:
        raise LoraFtError(
            f"data.label_names names integer labels, but the labels of {where} are names already; "
            "remove data.label_names"
        )
    if raw.label_names is not None and raw.label_names != given:
        raise LoraFtError(
            f"data.label_names ({', '.join(given)}) and {raw.source}/labels.json "
            f"({', '.join(raw.label_names)}) disagree; give the names in one place"
        )
    return given


def _row_labels(value, row: int, where: str, column: str, separator: str | None) -> list:
    """One multi-label cell as its list of names or ids."""
    if isinstance(value, str):
        if separator is None:
            raise LoraFtError(
                f"label {value!r} at row {row} of {where} (column {column!r}) is a string; multi-label labels "
                "are a list per row, or one string split on data.label_separator (e.g. ';'): set it"
            )
        parts = [part.strip() for part in value.split(separator)]
        if not all(parts):
            raise LoraFtError(
                f"label {value!r} at row {row} of {where} (column {column!r}) has an empty label between "
                f"separators {separator!r}; remove the extra separator"
            )
        return parts
    if not isinstance(value, list | tuple):
        raise LoraFtError(
            f"label {value!r} at row {row} of {where} (column {column!r}) is not a list of labels; "
            "multi-label labels are a list of names or ids per row (or a string split on data.label_separator)"
        )
    for v in value:
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if not number and not (isinstance(v, str) and v.strip()):
            raise LoraFtError(
                f"label list {list(value)!r} at row {row} of {where} (column {column!r}) holds {v!r}; "
                "give label names (non-empty strings) or integer ids"
            )
    return list(value)


def _multi_label_names(rows: list[list], feature, where: str, raw: RawSplits, cfg: DataConfig) -> list[str]:
    """The K label names, fixed by the train split's ``rows`` (see the module docstring)."""
    inner = getattr(feature, "feature", None)
    classes = isinstance(inner, datasets.ClassLabel)
    named = not classes and any(isinstance(v, str) for row in rows for v in row)
    configured = configured_names(cfg, raw, where, classes or named)
    if classes:
        names = list(inner.names)
    elif configured is None and raw.label_names is not None:
        names = raw.label_names
    elif named:
        names = sorted({v for row in rows for v in row})
    else:
        ids = [i for row in rows for i in integral(row, where)]
        names = configured if configured is not None else [str(i) for i in range(max(ids, default=-1) + 1)]
    if len(names) < 2:
        raise LoraFtError(
            f"{where} has {len(names)} distinct label(s); a multi-label classifier needs two or more "
            "(one label is single_label_classification with two classes)"
        )
    return names


def _multi_hot(
    rows: list[list], names: list[str], where: str, column: str, by_name: bool
) -> list[list[float]]:
    index = {n: i for i, n in enumerate(names)}
    out = []
    for r, row in enumerate(rows, start=1):
        hot = [0.0] * len(names)
        for v in row:
            if by_name != isinstance(v, str):
                raise LoraFtError(
                    f"label {v!r} at row {r} of {where} (column {column!r}) is "
                    f"{'an id' if by_name else 'a name'}, but the train split's labels are "
                    f"{'names' if by_name else 'ids'}; use one kind throughout"
                )
            i = index.get(v) if by_name else integral([v], where)[0]
            if i is None or not 0 <= i < len(names):
                shown = ", ".join(names) if by_name else f"ids 0..{len(names) - 1}"
                raise LoraFtError(
                    f"label {v!r} at row {r} of {where} (column {column!r}) is not a label of the train split "
                    f"({shown}); fix that row, or give every label in data.label_names"
                )
            hot[i] = 1.0
        out.append(hot)
    return out


def multi_label_labels(
    columns: dict[str, datasets.Dataset], raw: RawSplits, cfg: DataConfig
) -> tuple[dict[str, list[list[float]]], list[str], datasets.Sequence]:
    """Each split's multi-hot labels over the names the train split fixes; the names; the feature."""
    rows = {
        split: [
            _row_labels(v, i + 1, raw.where[split], cfg.label_column, cfg.label_separator)
            for i, v in enumerate(ds["label"][:])
        ]
        for split, ds in columns.items()
    }
    feature = columns["train"].features["label"]
    names = _multi_label_names(rows["train"], feature, raw.where["train"], raw, cfg)
    by_name = not isinstance(getattr(feature, "feature", None), datasets.ClassLabel) and any(
        isinstance(v, str) for row in rows["train"] for v in row
    )
    labels = {
        split: _multi_hot(rows[split], names, raw.where[split], cfg.label_column, by_name) for split in rows
    }
    return labels, names, datasets.Sequence(datasets.Value("float32"))


def _score(value, row: int, where: str, column: str) -> float:
    """One regression label as a finite float32-representable float."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise LoraFtError(
            f"label {value!r} at row {row} of {where} (column {column!r}) is not a number; regression "
            "labels are numbers (or choose another data.problem_type)"
        )
    value = float(number)
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise LoraFtError(
            f"label {value} at row {row} of {where} (column {column!r}) is not a finite number (float32); "
            "fix or remove that row"
        )
    return value


def regression_labels(
    columns: dict[str, datasets.Dataset], raw: RawSplits, cfg: DataConfig
) -> tuple[dict[str, list[float]], list[str], list[str]]:
    """Each labelled split's scores; the names (``score``); the notes on splits not used."""
    if cfg.label_names is not None:
        raise LoraFtError(
            "data.label_names names classes, but a regression task has one output (score); remove data.label_names"
        )
    labels, notes = {}, []
    for split, ds in columns.items():
        where = raw.where[split]
        scores = [_score(v, i + 1, where, cfg.label_column) for i, v in enumerate(ds["label"][:])]
        if all(s == UNLABELLED for s in scores):
            if split == "test":
                notes.append("test split unlabelled (all -1), not used")
                continue
            raise LoraFtError(f"the {split} split ({where}) has no labels (all -1); it must be labelled")
        labels[split] = scores
    return labels, list(REGRESSION_LABELS), notes
