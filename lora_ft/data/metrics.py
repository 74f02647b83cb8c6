"""The one home of evaluation metrics: what ``train``, ``compare``, ``eval`` and the ``Trainer`` report."""

from __future__ import annotations

import numpy as np


def f1_average(num_labels: int) -> str:
    """How ``classification_metrics`` averages F1 over ``num_labels`` classes: ``"binary"`` (the positive
    class's, for two) or ``"macro"``."""
    return "binary" if num_labels == 2 else "macro"


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 from ``logits`` ``(N, K)`` and ``labels`` ``(N,)``.

    F1 is the positive class's for K == 2 (as GLUE reports SST-2) and otherwise the macro average over
    the classes that occur in ``labels`` or in the predictions (scikit-learn's ``labels=`` their union):
    a class absent from both has no F1 to average, not an F1 of 0.
    Written by hand because the ``evaluate`` library downloads its metrics from the Hub.
    """
    preds = logits.argmax(-1)
    k = logits.shape[-1]
    accuracy = float((preds == labels).mean()) if len(labels) else 0.0

    def f1_of(c: int) -> float:
        tp = float(((preds == c) & (labels == c)).sum())
        fp = float(((preds == c) & (labels != c)).sum())
        fn = float(((preds != c) & (labels == c)).sum())
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    if f1_average(k) == "binary":
        f1 = f1_of(1)
    else:
        present = np.union1d(labels, preds)
        f1 = float(np.mean([f1_of(int(c)) for c in present])) if len(present) else 0.0
    return {"accuracy": accuracy, "f1": f1}


def label_counts(labels, num_labels: int) -> list[int]:
    """How many of ``labels`` (ids) fall in each of the ``num_labels`` classes."""
    return np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=num_labels).tolist()


def majority_accuracy(counts: list[int]) -> float:
    """The accuracy of always predicting the most frequent class: what a model that learned nothing scores."""
    return max(counts) / sum(counts)


def compute_metrics(eval_pred) -> dict[str, float]:
    """The ``Trainer``'s ``compute_metrics``: ``classification_metrics`` of an ``EvalPrediction``."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return classification_metrics(np.asarray(logits), np.asarray(labels))
