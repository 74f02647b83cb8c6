"""The task: what a model is trained to predict, in one object that data loading fixes and the model
head, the loss, the metrics, ``eval``, ``predict``, ``merge``'s verification, ``compare`` and every
saved record (run dir, adapter header, a merged model's ``config.json``) take from it.

A task is a problem type (Hugging Face's names, so ``config.problem_type`` gives the Trainer and any
plain-transformers loader the right loss), its label names, whether inputs are text pairs, and the
metric that ranks models on it (GLUE's primary metric where GLUE defines one). Pure Python: the CLI
reads it without torch.

Label columns after ``load_data``, by problem type:
  - ``single_label_classification``: ``label``, a ``ClassLabel`` (ids 0..K-1); the loss is cross-entropy.
  - ``multi_label_classification``: ``label``, a multi-hot list of K floats (0.0/1.0); BCE-with-logits.
  - ``regression``: ``label``, one float; MSE; ``label_names == ("score",)``, so ``num_labels == 1``.
  - ``token_classification``: ``label``, one tag id per word (``label_names`` are IOB2 tags, ``O``
    first); cross-entropy per word, scored by entity (seqeval): data/token_data.py reads it.
Inputs: ``sentence`` (str), and ``sentence2`` (str) when ``text_pair`` is true; a token task's input
is ``tokens`` (a list of words, ``TOKENS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lora_ft.config.schema import PROBLEM_TYPES
from lora_ft.errors import LoraFtError

SINGLE_LABEL, MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION = PROBLEM_TYPES
REGRESSION_LABELS = ("score",)

# The keys every problem type's metrics carry (data/metrics.py computes them), and the one that ranks
# models when the task sets none: what train.metric_for_best may name besides "loss".
METRIC_KEYS = {
    SINGLE_LABEL: ("accuracy", "f1", "macro_f1", "matthews_correlation"),
    MULTI_LABEL: ("micro_f1", "macro_f1", "subset_accuracy"),
    REGRESSION: ("pearson", "spearman", "pearson_spearman_mean", "mse", "mae"),
    TOKEN_CLASSIFICATION: ("entity_f1", "entity_precision", "entity_recall", "token_accuracy"),
}
DEFAULT_PRIMARY = {
    SINGLE_LABEL: "accuracy",
    MULTI_LABEL: "micro_f1",
    REGRESSION: "pearson_spearman_mean",
    TOKEN_CLASSIFICATION: "entity_f1",  # CoNLL's and WNUT's ranking figure: micro-averaged entity F1
}
# Single-label only: GLUE's MRPC and QQP rank by the mean of F1 and accuracy.
F1_ACCURACY_MEAN = "f1_accuracy_mean"
LOWER_IS_BETTER = frozenset({"mse", "mae", "loss"})
SENTENCE2 = "sentence2"
TOKENS = "tokens"
IGNORE = -100  # a token task's position that is no word's first sub-token (the loss's ignore_index)


def check_problem_type(value: Any, where: str = "data.problem_type") -> str:
    """``value`` if it is one of ``PROBLEM_TYPES``; else one line naming them."""
    if value not in PROBLEM_TYPES:
        raise LoraFtError(f"{where} must be one of {', '.join(PROBLEM_TYPES)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Task:
    """What is predicted from what.

    Attributes:
        problem_type: one of ``PROBLEM_TYPES``.
        label_names: index -> name; ``("score",)`` for regression.
        text_pair: whether each example is a pair of texts (``sentence``, ``sentence2``).
        primary_metric: the metrics key that ranks models (``METRIC_KEYS`` of the problem type, or
            ``F1_ACCURACY_MEAN`` for single-label).
        name: the data set's name as the user gave it (``glue/cola``, ``rt-ratings``, a path), for reports.
    """

    problem_type: str = SINGLE_LABEL
    label_names: tuple[str, ...] = ()
    text_pair: bool = False
    primary_metric: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        check_problem_type(self.problem_type, "task.problem_type")
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if not self.primary_metric:
            object.__setattr__(self, "primary_metric", DEFAULT_PRIMARY[self.problem_type])
        allowed = METRIC_KEYS[self.problem_type] + ((F1_ACCURACY_MEAN,) if self.is_single_label else ())
        if self.primary_metric not in allowed:
            raise LoraFtError(
                f"primary metric {self.primary_metric!r} is not reported for {self.problem_type}; "
                f"choose one of {', '.join(allowed)}"
            )
        if self.is_regression and self.label_names != REGRESSION_LABELS:
            raise LoraFtError(f"a regression task has one output named 'score', got {list(self.label_names)}")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_single_label(self) -> bool:
        return self.problem_type == SINGLE_LABEL

    @property
    def is_multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL

    @property
    def is_regression(self) -> bool:
        return self.problem_type == REGRESSION

    @property
    def is_token_classification(self) -> bool:
        return self.problem_type == TOKEN_CLASSIFICATION

    @property
    def greater_is_better(self) -> bool:
        return self.primary_metric not in LOWER_IS_BETTER

    def to_dict(self) -> dict[str, Any]:
        """The JSON form every saved record keeps (``metrics.json``'s ``task``, an adapter's header)."""
        return {
            "problem_type": self.problem_type,
            "label_names": list(self.label_names),
            "text_pair": self.text_pair,
            "primary_metric": self.primary_metric,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, value: Any, where: str) -> Task:
        """A ``Task`` read back from a saved record; one line naming ``where`` when it is malformed."""
        if not isinstance(value, dict):
            raise LoraFtError(f"{where}: the task record must be a mapping, got {type(value).__name__}")
        names = value.get("label_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LoraFtError(f"{where}: the task's label_names must be a list of strings")
        return cls(
            problem_type=check_problem_type(value.get("problem_type"), f"{where}: task.problem_type"),
            label_names=tuple(names),
            text_pair=bool(value.get("text_pair", False)),
            primary_metric=str(value.get("primary_metric") or ""),
            name=str(value.get("name") or ""),
        )

    @classmethod
    def legacy(cls, label_names: list[str] | tuple[str, ...], name: str = "") -> Task:
        """The task of a record written before tasks were recorded: single-label over ``label_names``."""
        return cls(SINGLE_LABEL, tuple(label_names), False, "", name)
