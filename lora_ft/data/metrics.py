"""The one home of evaluation metrics: what ``train``, ``compare``, ``eval`` and the ``Trainer`` report,
by problem type (data/task.py), computed with scikit-learn (and scipy's correlations).

``task_metrics(task, predictions, labels)`` takes the raw head outputs, ``(N, K)`` logits (regression
``(N, 1)`` scores), and returns the flat float keys ``METRIC_KEYS[task.problem_type]`` (plus
``f1_accuracy_mean`` for single-label) and, for reports, the non-scalar ``per_class`` and
``confusion_matrix`` (single-label) or ``per_label`` (multi-label). Token classification takes
``(N, T, K)`` logits and ``(N, T)`` tag ids, ``IGNORE`` (-100) where a position is no word's first
sub-token (data/tokenization.py), and scores the words' tag sequences with seqeval (the library
CoNLL and WNUT results are reported with): micro-averaged entity precision, recall and F1 in seqeval's
default (conlleval) mode, where an ``I-X`` after ``O`` opens an entity as conlleval reads it, each
entity type's figures (``per_entity``), and word-level tag accuracy.

Conventions where a figure has nothing to measure, so that no metric is ever NaN for finite outputs:
  - F1, precision and recall with an empty denominator are 0 (scikit-learn's ``zero_division=0``).
  - Macro averages run over the classes (labels) that occur in the true labels or the predictions, as
    scikit-learn's single-label default does: a class absent from both has no F1 to average, not 0.
  - A correlation (Pearson, Spearman) of a constant prediction or a constant target is undefined; it
    is reported as 0.0, no linear (or rank) relationship shown, as scikit-learn reports the Matthews
    correlation of a constant prediction.
Non-finite outputs (a diverged model) give NaN in every scalar, so ``finite.require_finite_metrics``
refuses to publish them rather than a figure computed from garbage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import accuracy_score as seqeval_accuracy
from seqeval.metrics import classification_report
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics import precision_score as seqeval_precision
from seqeval.metrics import recall_score as seqeval_recall
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

from lora_ft.data.task import F1_ACCURACY_MEAN, IGNORE, METRIC_KEYS, Task
from lora_ft.errors import LoraFtError

THRESHOLD = 0.5  # multi-label: a label is predicted when its sigmoid probability is >= this


def f1_average(num_labels: int) -> str:
    """How single-label ``f1`` averages over ``num_labels`` classes: ``"binary"`` (the positive class's,
    for two) or ``"macro"``."""
    return "binary" if num_labels == 2 else "macro"


def scalar_keys(task: Task) -> tuple[str, ...]:
    """The float keys ``task_metrics`` gives for ``task``: what the Trainer logs and metrics.json keeps."""
    return METRIC_KEYS[task.problem_type] + ((F1_ACCURACY_MEAN,) if task.is_single_label else ())


def _present(labels: np.ndarray, preds: np.ndarray) -> list[int]:
    return np.union1d(labels, preds).astype(int).tolist()


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Single-label scalars from ``logits`` ``(N, K)`` and label ids ``labels`` ``(N,)``: accuracy; ``f1``,
    the positive class's for K == 2 (as GLUE reports SST-2 and MRPC) and else ``macro_f1``; ``macro_f1``
    over the classes present; ``matthews_correlation`` (GLUE's CoLA); ``f1_accuracy_mean`` (MRPC, QQP)."""
    preds = logits.argmax(-1)
    accuracy = float(accuracy_score(labels, preds))
    macro = float(f1_score(labels, preds, labels=_present(labels, preds), average="macro", zero_division=0))
    if f1_average(logits.shape[-1]) == "binary":
        f1 = float(f1_score(labels, preds, labels=[1], average="macro", zero_division=0))
    else:
        f1 = macro
    return {
        "accuracy": accuracy,
        "f1": f1,
        "macro_f1": macro,
        "matthews_correlation": float(matthews_corrcoef(labels, preds)),
        F1_ACCURACY_MEAN: (f1 + accuracy) / 2,
    }


def _per_class(labels, preds, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each of ``names`` (index = id), in id order."""
    p, r, f, s = precision_recall_fscore_support(
        labels, preds, labels=list(range(len(names))), average=None, zero_division=0
    )
    return [
        {
            "label": name,
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(names)
    ]


def _single_label(task: Task, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    labels = labels.astype(np.int64)
    preds = logits.argmax(-1)
    ids = list(range(task.num_labels))
    return {
        **classification_metrics(logits, labels),
        "per_class": _per_class(labels, preds, task.label_names),
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
    }


def multi_label_predictions(logits: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """The multi-hot predictions ``(N, K)`` (int) of ``logits``: sigmoid probability >= ``threshold``."""
    return (expit(logits.astype(np.float64)) >= threshold).astype(np.int64)


def _multi_label(task: Task, logits: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    truth = (labels >= 0.5).astype(np.int64)  # the multi-hot 0.0/1.0 floats of data loading
    preds = multi_label_predictions(logits, threshold)
    present = np.flatnonzero(truth.any(0) | preds.any(0)).tolist()
    macro = f1_score(truth, preds, labels=present, average="macro", zero_division=0) if present else 0.0
    return {
        "micro_f1": float(f1_score(truth, preds, average="micro", zero_division=0)),
        "macro_f1": float(macro),
        "subset_accuracy": float(accuracy_score(truth, preds)),
        "per_label": _per_class(truth, preds, task.label_names),
    }


def tag_sequences(
    task: Task, logits: np.ndarray, labels: np.ndarray
) -> tuple[list[list[str]], list[list[str]]]:
    """The true and predicted tag names of each row's words: the positions whose label is not ``IGNORE``."""
    names = task.label_names
    preds = logits.argmax(-1)
    truth, predicted = [], []
    for row_labels, row_preds in zip(labels, preds, strict=True):
        keep = row_labels != IGNORE
        truth.append([names[i] for i in row_labels[keep]])
        predicted.append([names[i] for i in row_preds[keep]])
    return truth, predicted


def entity_types(task: Task) -> list[str]:
    """The entity types of the task's IOB2 tags, in tag order (``B-person`` -> ``person``)."""
    return list(dict.fromkeys(name[2:] for name in task.label_names if name != "O"))


def _token_classification(task: Task, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    truth, predicted = tag_sequences(task, logits, labels.astype(np.int64))
    if not any(truth):
        raise LoraFtError("no words to score: every position of the evaluation split is ignored")
    report = classification_report(truth, predicted, output_dict=True, zero_division=0)
    per_entity = []
    for kind in entity_types(task):
        row = report.get(kind, {})
        per_entity.append(
            {
                "label": kind,
                "precision": float(row.get("precision", 0.0)),
                "recall": float(row.get("recall", 0.0)),
                "f1": float(row.get("f1-score", 0.0)),
                "support": int(row.get("support", 0)),
            }
        )
    return {
        "entity_f1": float(seqeval_f1(truth, predicted, zero_division=0)),
        "entity_precision": float(seqeval_precision(truth, predicted, zero_division=0)),
        "entity_recall": float(seqeval_recall(truth, predicted, zero_division=0)),
        "token_accuracy": float(seqeval_accuracy(truth, predicted)),
        "per_entity": per_entity,
    }


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    """``fn``'s coefficient of ``x`` and ``y``; 0.0 when either is constant (undefined: module docstring)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(fn(x, y)[0])


def _regression(outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    scores = outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64)
    target = labels.reshape(-1).astype(np.float64)
    pearson = _correlation(pearsonr, scores, target)
    spearman = _correlation(spearmanr, scores, target)
    return {
        "pearson": pearson,
        "spearman": spearman,
        "pearson_spearman_mean": (pearson + spearman) / 2,
        "mse": float(mean_squared_error(target, scores)),
        "mae": float(mean_absolute_error(target, scores)),
    }


def task_metrics(
    task: Task, predictions: np.ndarray, labels: np.ndarray, threshold: float = THRESHOLD
) -> dict[str, Any]:
    """Every metric of ``task`` from the raw head outputs ``predictions`` ``(N, K)`` and ``labels``
    (``(N,)`` ids, ``(N, K)`` multi-hot, or ``(N,)`` scores); token classification: ``(N, T, K)``
    and ``(N, T)`` tag ids with ``IGNORE``; ``threshold``: multi-label only.

    Returns:
        ``scalar_keys(task)`` as floats, plus ``per_class`` (a list of {label, precision, recall, f1,
        support}) and ``confusion_matrix`` (rows = true, columns = predicted, in label-id order) for
        single-label, ``per_label`` for multi-label, ``per_entity`` (by entity type) for tokens.

    Raises:
        LoraFtError: no rows, or outputs whose width is not ``task.num_labels``.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(labels) == 0:
        raise LoraFtError("no examples to score: the evaluation split is empty")
    width = predictions.shape[-1] if predictions.ndim > 1 else 1
    if width != task.num_labels:
        raise LoraFtError(
            f"the model gives {width} output(s) per example but the task has {task.num_labels} "
            f"({', '.join(task.label_names)}); evaluate it on the data it was trained for"
        )
    if not np.isfinite(predictions).all():
        return {key: float("nan") for key in scalar_keys(task)}
    if task.is_single_label:
        return _single_label(task, predictions, labels)
    if task.is_multi_label:
        return _multi_label(task, predictions, labels, threshold)
    if task.is_token_classification:
        return _token_classification(task, predictions, labels)
    return _regression(predictions, labels)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The float entries of ``metrics`` (what the Trainer logs), without the per-class reports."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def primary(task: Task, metrics: dict[str, Any]) -> float:
    """The figure that ranks models on ``task``: ``metrics[task.primary_metric]``."""
    return float(metrics[task.primary_metric])


def compute_metrics_for(task: Task) -> Callable[[Any], dict[str, float]]:
    """The ``Trainer``'s ``compute_metrics`` for ``task``: the scalars of ``task_metrics`` of an
    ``EvalPrediction`` (the Trainer logs them as ``eval_<key>``)."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        outputs = eval_pred.predictions
        if isinstance(outputs, tuple):
            outputs = outputs[0]
        return scalars(task_metrics(task, outputs, eval_pred.label_ids))

    return compute_metrics


def label_counts(labels, num_labels: int) -> list[int]:
    """How many of ``labels`` (ids) fall in each of the ``num_labels`` classes."""
    return np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=num_labels).tolist()


def majority_accuracy(counts: list[int]) -> float:
    """The accuracy of always predicting the most frequent class: what a model that learned nothing scores."""
    return max(counts) / sum(counts)
