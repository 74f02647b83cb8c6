"""A data spec to validated splits: ``load_data`` reads what ``DataConfig`` names (``sources``), maps
its columns, checks every cell, fixes the label names, carves a validation split and applies the caps.

Every split comes out with the columns ``sentence`` (str), ``sentence2`` (str, the second text of a
pair task: ``data.text_pair_column``) and ``label``: a ``ClassLabel`` (ids 0..K-1) for single-label
classification; for multi-label a multi-hot float list and for regression a float
(data/label_types.py reads those two; data/task.py gives the types); a token task's splits have
``tokens`` (list of words) and ``label`` (one tag id per word) instead (data/token_data.py). A preset data name
(``glue/mrpc``, ``data/presets.py``) sets the columns, problem type and label names the user leaves
at their defaults. Empty or null sentences and labels are errors naming the file, the row (counted
from 1, a csv header not counted) and the column: nothing is dropped silently, so the same data gives
the same evaluation set in every tool (and an empty label cell does not become a class of its own). A split
whose labels are all -1 (GLUE's unlabelled test sets) is not used as a test split. A single local
file is the train split, with 10% carved out (seed 42) as validation.

Integer labels are named, in order of precedence, by ``data.label_names``, a directory's
``labels.json`` (index = label id), or their ids (``"0"``, ``"1"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import datasets

from lora_ft.config import DataConfig
from lora_ft.data.label_types import (
    UNLABELLED,
    configured_names,
    integral,
    multi_label_labels,
    regression_labels,
)
from lora_ft.data.presets import apply_preset, preset_for
from lora_ft.data.sources import SPLITS, RawSplits, read_spec
from lora_ft.data.task import MULTI_LABEL, REGRESSION, SENTENCE2, TOKEN_CLASSIFICATION, Task
from lora_ft.data.token_data import token_splits
from lora_ft.errors import LoraFtError

CARVE_FRACTION, CARVE_SEED = 0.1, 42
SAMPLE_SEED = 42  # fixed, not the training seed: every seed and method sees the same capped sample
# What decides the rows and labels of every split: the source, its columns, the label names, and which
# splits exist (the train split fixes the label names; validation is carved from train when absent).
# Not max_length: evaluation truncates as each model was trained (its own data.max_length).
_ROWS_SETTINGS = (
    "name",
    "text_column",
    "text_pair_column",
    "label_column",
    "problem_type",
    "label_separator",
    "label_names",
    "train_split",
    "validation_split",
    "test_split",
)


def split_settings(split: str) -> tuple[str, ...]:
    """The ``DataConfig`` fields that decide the rows of ``split``: two configs equal in these fields give
    the same ``split`` (``max_train_samples`` caps train only, ``max_eval_samples`` the others)."""
    return (*_ROWS_SETTINGS, "max_train_samples" if split == "train" else "max_eval_samples")


@dataclass
class LoadedData:
    """Splits ready for tokenization.

    Attributes:
        splits: keys among ``train``, ``validation``, ``test``, then a preset's ``extra_eval_splits``
            (MNLI's ``validation_mismatched``) under their own names; columns ``sentence`` (str),
            ``sentence2`` (str) iff ``task.text_pair``, and ``label`` (``ClassLabel`` with ``label_names``;
            multi-label: multi-hot float32 list; regression: float32).
        label_names: index -> name (regression: ``["score"]``).
        source: human-readable origin, with notes on carved-out or unused splits.
        task: what is predicted (problem type, label names, pairs, primary metric): data/task.py.
        fingerprint: what was read -> the sha256 of its content: each local file by absolute path, a
            built-in's files as ``<name>/<file>``, a hub split as ``<name>[<split>]``.
    """

    splits: datasets.DatasetDict
    label_names: list[str]
    source: str
    fingerprint: dict[str, str]
    task: Task

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _input_columns(cfg: DataConfig) -> dict[str, str]:
    """Our input column -> the data's: ``sentence``, and ``sentence2`` for a pair task."""
    columns = {"sentence": cfg.text_column}
    if cfg.text_pair_column is not None:
        columns[SENTENCE2] = cfg.text_pair_column
    return columns


def _map_columns(ds: datasets.Dataset, where: str, cfg: DataConfig) -> datasets.Dataset:
    wanted = {**_input_columns(cfg), "label": cfg.label_column}
    for ours, column in wanted.items():
        if column not in ds.column_names:
            fix = "data.text_pair_column" if ours == SENTENCE2 else "data.text_column / data.label_column"
            raise LoraFtError(
                f"{where} has no column {column!r}; columns are: {', '.join(ds.column_names)} (set {fix})"
            )
    if len(set(wanted.values())) < len(wanted):
        raise LoraFtError(
            f"data.text_column, data.text_pair_column and data.label_column must be three different columns, "
            f"got {', '.join(wanted.values())}"
        )
    ds = ds.select_columns(list(wanted.values()))
    return ds.rename_columns({column: ours for ours, column in wanted.items()})


def _missing(value) -> bool:
    """An empty cell: csv gives ``""`` (na_filter off), json and parquet ``None``, a float column NaN."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_cells(ds: datasets.Dataset, where: str, cfg: DataConfig) -> None:
    if len(ds) == 0:
        raise LoraFtError(f"{where} has no rows")
    keys = {"sentence": "data.text_column", SENTENCE2: "data.text_pair_column"}
    for ours, column in _input_columns(cfg).items():
        for i, sentence in enumerate(ds[ours]):
            if not isinstance(sentence, str) or not sentence.strip():
                raise LoraFtError(
                    f"empty, missing or non-text sentence at row {i + 1} of {where} (column {column!r}, "
                    f"{keys[ours]}); fix or remove that row"
                )
    for i, label in enumerate(ds["label"]):
        if _missing(label):
            raise LoraFtError(
                f"empty or missing label at row {i + 1} of {where} (column {cfg.label_column!r}); "
                "fill it in or remove that row"
            )


def _label_names(feature, train_labels: list, where: str, raw: RawSplits, cfg: DataConfig) -> list[str]:
    """Names of the label ids, fixed by the train split: ClassLabel, data.label_names, labels.json,
    sorted strings or 0..K-1.

    Raises:
        LoraFtError: see ``configured_names``; ``data.label_names`` whose count is not the number of
            integer labels in the train split.
    """
    classes = isinstance(feature, datasets.ClassLabel)
    strings = not classes and any(isinstance(v, str) for v in train_labels)
    configured = configured_names(cfg, raw, where, classes or strings, feature.names if classes else None)
    if classes:
        return list(feature.names)
    if configured is None and raw.label_names is not None:
        return raw.label_names
    if strings:
        return sorted({str(v) for v in train_labels})
    ids = sorted(set(integral(train_labels, where)) - {UNLABELLED})
    if configured is None:
        return [str(i) for i in range(len(ids))]
    if len(configured) != len(ids):
        count = f"{len(configured)} name{'' if len(configured) == 1 else 's'}"
        raise LoraFtError(
            f"data.label_names has {count} but {where} has {len(ids)} labels ({', '.join(map(str, ids))}); "
            "give one name per label, in id order"
        )
    return configured


def _label_ids(labels: list, names: list[str], where: str, by_name: bool) -> list[int] | None:
    """Label ids checked against ``names``; None when the split is unlabelled (all -1)."""
    if by_name:
        index = {n: i for i, n in enumerate(names)}
        for i, v in enumerate(labels):
            if v not in index:
                raise LoraFtError(
                    f"label {v!r} at row {i + 1} of {where} does not occur in train; labels are: {', '.join(names)}"
                )
        return [index[v] for v in labels]
    ids = integral(labels, where)
    if all(v == UNLABELLED for v in ids):
        return None
    for i, v in enumerate(ids):
        if not 0 <= v < len(names):
            raise LoraFtError(
                f"label {v} at row {i + 1} of {where} is out of range 0..{len(names) - 1} "
                f"(integer labels must be 0..K-1, K = {len(names)}; or use class-name strings)"
            )
    return ids


def _with_labels(ds: datasets.Dataset, labels: list, feature) -> datasets.Dataset:
    """``ds`` with its ``label`` column replaced by ``labels`` typed ``feature``, its text columns kept."""
    text = datasets.Value("string")
    features = datasets.Features({c: feature if c == "label" else text for c in ds.column_names})
    values = {c: labels if c == "label" else ds[c][:] for c in ds.column_names}
    return datasets.Dataset.from_dict(values, features=features)


def _cap(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None or n >= len(ds) else ds.shuffle(seed=SAMPLE_SEED).select(range(n))


def _labelled(
    columns: dict[str, datasets.Dataset], raw: RawSplits, cfg: DataConfig
) -> tuple[dict, list[str], list[str]]:
    """Every split with label ids under the names the train split fixes; with the notes on splits dropped."""
    train = columns["train"]
    train_labels = train["label"][:]
    names = _label_names(train.features["label"], train_labels, raw.where["train"], raw, cfg)
    if len(names) < 2:
        raise LoraFtError(
            f"{raw.where['train']} has {len(names)} distinct label(s); a classifier needs two or more"
        )
    by_name = not isinstance(train.features["label"], datasets.ClassLabel) and any(
        isinstance(v, str) for v in train_labels
    )
    splits, notes = {}, []
    for split, ds in columns.items():
        ids = _label_ids(ds["label"][:], names, raw.where[split], by_name)
        if ids is None and split == "test":
            notes.append("test split unlabelled (all -1), not used")
            continue
        if ids is None:
            raise LoraFtError(
                f"the {split} split ({raw.where[split]}) has no labels (all -1); it must be labelled"
            )
        splits[split] = _with_labels(ds, ids, datasets.ClassLabel(names=names))
    return splits, names, notes


def _typed(
    columns: dict[str, datasets.Dataset], raw: RawSplits, cfg: DataConfig
) -> tuple[dict, list[str], list[str]]:
    """``_labelled`` for the problem type ``cfg.problem_type`` names (multi-label and regression:
    data/label_types.py)."""
    if cfg.problem_type == MULTI_LABEL:
        labels, names, feature = multi_label_labels(columns, raw, cfg)
        return {s: _with_labels(columns[s], labels[s], feature) for s in labels}, names, []
    if cfg.problem_type == REGRESSION:
        labels, names, notes = regression_labels(columns, raw, cfg)
        feature = datasets.Value("float32")
        return {s: _with_labels(columns[s], labels[s], feature) for s in labels}, names, notes
    return _labelled(columns, raw, cfg)


def load_data(cfg: DataConfig) -> LoadedData:
    """Read the data named by ``cfg.name``; map columns, validate labels, carve validation, apply caps.

    Returns:
        ``LoadedData`` whose splits have columns ``sentence`` (str), ``sentence2`` (str, pair tasks)
        and ``label`` (typed by ``cfg.problem_type``: see ``LoadedData``).

    Raises:
        LoraFtError: missing files or columns (a ``data.text_pair_column`` the data lacks), non-UTF-8
            text, empty data or sentences, labels out of range or unseen in train, ``data.label_names``
            that do not fit the labels, a multi-label row naming an unknown label, a regression label
            that is not a finite number, or a hub data
            set that cannot be reached, or ``data.name`` listing several data sets (only ``compare``
            takes a list).
    """
    if "," in cfg.name and not Path(cfg.name).exists():
        raise LoraFtError(
            f"data.name {cfg.name!r} lists several data sets; this command takes one "
            f"(lora-ft compare --data {cfg.name} runs every method on each)"
        )
    cfg = apply_preset(cfg)
    preset = preset_for(cfg.name)
    extra = preset.extra_eval_splits if preset else ()
    raw = read_spec(cfg, extra)
    if cfg.problem_type == TOKEN_CLASSIFICATION:
        (splits, names), notes = token_splits(raw, cfg), []
    else:
        columns = {split: _map_columns(ds, raw.where[split], cfg) for split, ds in raw.splits.items()}
        for split, ds in columns.items():
            _check_cells(ds, raw.where[split], cfg)
        splits, names, notes = _typed(columns, raw, cfg)
    if "validation" not in splits:
        if len(splits["train"]) < 2:
            raise LoraFtError(f"{raw.where['train']} has one row; need more to carve out a validation split")
        parts = splits["train"].train_test_split(test_size=CARVE_FRACTION, seed=CARVE_SEED)
        splits["train"], splits["validation"] = parts["train"], parts["test"]
        notes.append(f"validation: {CARVE_FRACTION:.0%} of train, seed {CARVE_SEED}")
    splits["train"] = _cap(splits["train"], cfg.max_train_samples)
    for split in ("validation", "test", *extra):
        if split in splits:
            splits[split] = _cap(splits[split], cfg.max_eval_samples)
    source = raw.source + (f" ({'; '.join(notes)})" if notes else "")
    ordered = datasets.DatasetDict({split: splits[split] for split in (*SPLITS, *extra) if split in splits})
    primary = preset.primary_metric if preset else ""
    task = Task(cfg.problem_type, tuple(names), cfg.text_pair_column is not None, primary, cfg.name)
    return LoadedData(ordered, names, source, raw.fingerprint, task)
