"""Data presets: a data name that sets its own columns, problem type, label names and primary metric.

``data.name: glue/mrpc`` is enough: the preset maps the Hub's own column names (``sentence1`` and
``sentence2``) to ours, names the labels as the Hub's ``ClassLabel`` does, and ranks models by the
metric GLUE ranks them by (Wang et al. 2019, Table 1; SuperGLUE: Wang et al. 2019b, Table 1). A value
the user sets in ``data`` wins; the preset fills only what was left at its ``DataConfig`` default.

GLUE's and SuperGLUE's test splits are unlabelled (all -1) and so never used as test (``loading``);
MNLI's validation is ``validation_matched``, and ``validation_mismatched`` is evaluated and reported
beside it (``extra_eval_splits``). Pure Python: the CLI reads it without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lora_ft.config import DataConfig
from lora_ft.data.task import F1_ACCURACY_MEAN, MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION

# The DataConfig fields a preset may set; None in a Preset leaves the field to the user.
PRESET_FIELDS = (
    "text_column",
    "text_pair_column",
    "label_column",
    "problem_type",
    "label_names",
    "validation_split",
    "test_split",
    "label_separator",
)


@dataclass(frozen=True)
class Preset:
    """What a data name sets by itself: ``DataConfig`` field values (None = not set by the preset), the
    metric that ranks models on it ("" = the problem type's default) and the labelled splits evaluated
    and reported besides validation and test (their metrics.json key is the split's name)."""

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


_NLI = ("entailment", "not_entailment")

# GLUE (Hub: nyu-mll/glue), with the Hub's column and label names.
PRESETS: dict[str, Preset] = {
    "glue/cola": Preset(
        text_column="sentence",
        label_names=("unacceptable", "acceptable"),
        primary_metric="matthews_correlation",
    ),
    "glue/sst2": Preset(text_column="sentence", label_names=("negative", "positive")),
    "glue/mrpc": Preset(
        text_column="sentence1",
        text_pair_column="sentence2",
        label_names=("not_equivalent", "equivalent"),
        primary_metric=F1_ACCURACY_MEAN,
    ),
    "glue/qqp": Preset(
        text_column="question1",
        text_pair_column="question2",
        label_names=("not_duplicate", "duplicate"),
        primary_metric=F1_ACCURACY_MEAN,
    ),
    "glue/stsb": Preset(
        text_column="sentence1",
        text_pair_column="sentence2",
        problem_type=REGRESSION,
        primary_metric="pearson_spearman_mean",
    ),
    "glue/mnli": Preset(
        text_column="premise",
        text_pair_column="hypothesis",
        label_names=("entailment", "neutral", "contradiction"),
        validation_split="validation_matched",
        test_split="test_matched",
        extra_eval_splits=("validation_mismatched",),
    ),
    "glue/qnli": Preset(text_column="question", text_pair_column="sentence", label_names=_NLI),
    "glue/rte": Preset(text_column="sentence1", text_pair_column="sentence2", label_names=_NLI),
    "glue/wnli": Preset(
        text_column="sentence1", text_pair_column="sentence2", label_names=("not_entailment", "entailment")
    ),
    # SuperGLUE (Hub: aps/super_glue): the tasks that are one text or a pair and one label. COPA and
    # MultiRC (choices, answers to a passage), WiC (a word in two sentences), WSC and ReCoRD (spans)
    # are other shapes.
    "super_glue/boolq": Preset(
        text_column="question", text_pair_column="passage", label_names=("False", "True")
    ),
    "super_glue/cb": Preset(
        text_column="premise",
        text_pair_column="hypothesis",
        label_names=("entailment", "contradiction", "neutral"),
        primary_metric=F1_ACCURACY_MEAN,  # SuperGLUE's CB: the mean of macro-F1 and accuracy
    ),
    "super_glue/rte": Preset(text_column="premise", text_pair_column="hypothesis", label_names=_NLI),
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
    "wnut16": Preset(problem_type=TOKEN_CLASSIFICATION, primary_metric="entity_f1"),
}

_DEFAULTS = DataConfig()


def preset_for(name: str) -> Preset | None:
    """The preset of data name ``name``, or None: a file, a directory or another hub data set."""
    return PRESETS.get(name)


def apply_preset(cfg: DataConfig) -> DataConfig:
    """``cfg`` with its preset's values for every field the user left at its ``DataConfig`` default."""
    preset = preset_for(cfg.name)
    if preset is None:
        return cfg
    changes = {}
    for key in PRESET_FIELDS:
        value = getattr(preset, key)
        if value is not None and getattr(cfg, key) == getattr(_DEFAULTS, key):
            changes[key] = list(value) if key == "label_names" else value
    return dataclasses.replace(cfg, **changes) if changes else cfg
