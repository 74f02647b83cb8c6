"""Data presets: the task settings a named data set fixes by itself (its columns, problem type, label
names, splits, primary metric), keyed by ``data.name``.

A preset's fields are ``DataConfig`` field values; None leaves the field as the user set it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_ft.data.task import MULTI_LABEL, REGRESSION, SINGLE_LABEL


@dataclass(frozen=True)
class Preset:
    """What ``data.name`` sets by itself: ``DataConfig`` values (None = not set by the preset), the
    metric that ranks models on it, and the splits evaluated besides validation and test."""

    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    problem_type: str | None = None
    label_names: tuple[str, ...] | None = None
    validation_split: str | None = None
    test_split: str | None = None
    label_separator: str | None = None
    primary_metric: str = ""
    extra_eval_splits: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    # Built-in data sets (assets): data/assets/registry.py. Two names where one file holds two tasks,
    # so that the name alone picks the task.
    "rt-ratings": Preset(label_column="rating", problem_type=REGRESSION, primary_metric="pearson"),
    "vader-sentiment": Preset(label_column="score", problem_type=REGRESSION, primary_metric="pearson"),
    "vader-sentiment-domain": Preset(
        label_column="domain", problem_type=SINGLE_LABEL, primary_metric="macro_f1"
    ),
    "disaster-response": Preset(
        label_column="categories", problem_type=MULTI_LABEL, primary_metric="micro_f1"
    ),
    "disaster-response-genre": Preset(
        label_column="genre", problem_type=SINGLE_LABEL, primary_metric="macro_f1"
    ),
}
