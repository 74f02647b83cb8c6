"""data/metrics.py: every figure of every problem type against numbers computed independently here
(numpy by hand, scipy's rank function), the conventions where a figure has nothing to measure, and
non-finite outputs turned into NaN that is never published."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import rankdata

from lora_ft.data.metrics import (
    compute_metrics_for,
    primary,
    scalar_keys,
    task_metrics,
)
from lora_ft.data.task import F1_ACCURACY_MEAN, METRIC_KEYS, MULTI_LABEL, REGRESSION, SINGLE_LABEL, Task
from lora_ft.errors import LoraFtError
from lora_ft.finite import require_finite_metrics

THREE = Task(SINGLE_LABEL, ("a", "b", "c"))
TWO = Task(SINGLE_LABEL, ("neg", "pos"))
TAGS = Task(MULTI_LABEL, ("x", "y", "z", "w"))
SCORE = Task(REGRESSION, ("score",))


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _counts(truth: np.ndarray, preds: np.ndarray, c: int) -> tuple[int, int, int]:
    return (
        int(((preds == c) & (truth == c)).sum()),
        int(((preds == c) & (truth != c)).sum()),
        int(((preds != c) & (truth == c)).sum()),
    )


def _mcc(cm: np.ndarray) -> float:
    """Gorodkin's multi-class Matthews correlation from a confusion matrix (rows true, columns predicted)."""
    n, correct = cm.sum(), np.trace(cm)
    t, p = cm.sum(1), cm.sum(0)
    return (correct * n - t @ p) / math.sqrt((n**2 - p @ p) * (n**2 - t @ t))


def test_single_label_three_classes_against_hand_counts():
    truth = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    preds = np.array([0, 1, 1, 1, 2, 2, 0, 0, 1, 1])
    logits = np.eye(3)[preds] * 3.0 - 1.0
    m = task_metrics(THREE, logits, truth)

    cm = np.zeros((3, 3), dtype=int)
    for t, p in zip(truth, preds, strict=True):
        cm[t, p] += 1
    f1s = [_f1(*_counts(truth, preds, c)) for c in range(3)]
    accuracy = 6 / 10
    assert m["confusion_matrix"] == cm.tolist() == [[2, 1, 0], [0, 3, 1], [1, 1, 1]]
    assert m["accuracy"] == pytest.approx(accuracy)
    assert m["macro_f1"] == pytest.approx(np.mean(f1s)) and m["f1"] == m["macro_f1"]  # K > 2: f1 is macro
    assert m["matthews_correlation"] == pytest.approx(_mcc(cm))
    assert m[F1_ACCURACY_MEAN] == pytest.approx((np.mean(f1s) + accuracy) / 2)
    for c, row in enumerate(m["per_class"]):
        tp, fp, fn = _counts(truth, preds, c)
        assert row == pytest.approx(
            {"label": "abc"[c], "precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": f1s[c],
             "support": int((truth == c).sum())}
        )  # fmt: skip
    assert set(m) == {*scalar_keys(THREE), "per_class", "confusion_matrix"}


def test_single_label_binary_f1_is_the_positive_class_and_macro_is_both():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    preds = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    m = task_metrics(TWO, np.eye(2)[preds], truth)
    positive, negative = _f1(*_counts(truth, preds, 1)), _f1(*_counts(truth, preds, 0))
    assert m["f1"] == pytest.approx(positive) == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((positive + negative) / 2)
    assert m["matthews_correlation"] == pytest.approx(_mcc(np.array([[3, 1], [1, 3]]))) == pytest.approx(0.5)


def test_macro_f1_skips_a_class_absent_from_labels_and_predictions():
    truth, preds = np.array([0, 1, 0, 1]), np.array([0, 1, 1, 1])  # class 2 never occurs
    m = task_metrics(THREE, np.eye(3)[preds], truth)
    assert m["macro_f1"] == pytest.approx((_f1(1, 0, 1) + _f1(2, 1, 0)) / 2)
    assert m["per_class"][2] == {"label": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"][2] == [0, 0, 0]


def test_multi_label_against_hand_counts():
    truth = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
    logits = np.array(
        [[2.0, -1.0, 0.0, -3.0], [-2.0, 1.5, 0.5, -1.0], [1.0, -0.1, -2.0, -2.0], [-1.0, -1.0, -1.0, -1.0],
         [0.3, -0.2, -4.0, -0.5]]
    )  # fmt: skip
    preds = (logits >= 0).astype(int)  # sigmoid(logit) >= 0.5; a logit of exactly 0 is predicted
    m = task_metrics(TAGS, logits, truth)
    tp = (preds * truth).sum(0)
    fp = (preds * (1 - truth)).sum(0)
    fn = ((1 - preds) * truth).sum(0)
    present = [k for k in range(4) if truth[:, k].any() or preds[:, k].any()]
    assert present == [0, 1, 2]  # label w: never true, never predicted
    assert m["micro_f1"] == pytest.approx(_f1(tp.sum(), fp.sum(), fn.sum()))
    assert m["macro_f1"] == pytest.approx(np.mean([_f1(tp[k], fp[k], fn[k]) for k in present]))
    assert m["subset_accuracy"] == pytest.approx(np.mean((preds == truth).all(1)))  # rows 0, 3, 4
    assert m["subset_accuracy"] == pytest.approx(3 / 5)
    assert [r["support"] for r in m["per_label"]] == truth.sum(0).astype(int).tolist()
    assert [r["f1"] for r in m["per_label"]] == pytest.approx([_f1(tp[k], fp[k], fn[k]) for k in range(4)])
    assert [r["label"] for r in m["per_label"]] == ["x", "y", "z", "w"]
    assert set(m) == {*METRIC_KEYS[MULTI_LABEL], "per_label"}


def test_multi_label_threshold_moves_the_predictions():
    truth = np.array([[1, 0], [0, 1]], dtype=np.float32)
    logits = np.array([[1.0, -1.0], [-1.0, 1.0]])  # probabilities 0.73 / 0.27
    tags = Task(MULTI_LABEL, ("x", "y"))
    assert task_metrics(tags, logits, truth)["subset_accuracy"] == 1.0
    assert task_metrics(tags, logits, truth, threshold=0.8)["micro_f1"] == 0.0  # nothing predicted


def test_regression_against_numpy():
    target = np.array([-2.0, -0.5, 0.0, 1.2, 3.4, 2.0])
    outputs = np.array([[-1.5], [0.1], [-0.3], [1.0], [2.6], [2.9]])
    m = task_metrics(SCORE, outputs, target)
    scores = outputs[:, 0]
    pearson = np.corrcoef(scores, target)[0, 1]
    spearman = np.corrcoef(rankdata(scores), rankdata(target))[0, 1]
    assert m["pearson"] == pytest.approx(pearson)
    assert (
        m["spearman"] == pytest.approx(spearman) == pytest.approx(1 - 6 * 4 / (6 * 35))
    )  # two swapped pairs: sum d^2 = 4
    assert m["pearson_spearman_mean"] == pytest.approx((pearson + spearman) / 2)
    assert m["mse"] == pytest.approx(np.mean((scores - target) ** 2))
    assert m["mae"] == pytest.approx(np.mean(np.abs(scores - target)))
    assert set(m) == set(METRIC_KEYS[REGRESSION])


def test_a_constant_prediction_reports_zero_correlation_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning would mean it was asked anyway
        m = task_metrics(SCORE, np.full((4, 1), 0.7), np.array([0.0, 1.0, 2.0, 3.0]))
        constant_target = task_metrics(SCORE, np.array([[0.0], [1.0]]), np.array([2.0, 2.0]))
    assert (m["pearson"], m["spearman"], m["pearson_spearman_mean"]) == (0.0, 0.0, 0.0)
    assert m["mse"] == pytest.approx(np.mean((0.7 - np.arange(4)) ** 2))
    assert constant_target["pearson"] == 0.0
    require_finite_metrics({"validation": m}, "m")  # publishable


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("task", [TWO, TAGS, SCORE], ids=lambda t: t.problem_type)
def test_non_finite_outputs_give_nan_that_is_never_published(task, bad):
    outputs = np.ones((4, task.num_labels))
    outputs[2, 0] = bad
    labels = {SINGLE_LABEL: np.array([0, 1, 1, 0]), REGRESSION: np.arange(4.0)}.get(
        task.problem_type, np.eye(4, dtype=np.float32)
    )
    m = task_metrics(task, outputs, labels)
    assert set(m) == set(scalar_keys(task)) and all(math.isnan(v) for v in m.values())
    with pytest.raises(LoraFtError):
        require_finite_metrics({"validation": m}, "refusing")


def test_outputs_of_the_wrong_width_and_no_rows_are_one_line_errors():
    with pytest.raises(LoraFtError, match=r"2 output\(s\) per example but the task has 3"):
        task_metrics(THREE, np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(LoraFtError, match="no examples to score"):
        task_metrics(SCORE, np.zeros((0, 1)), np.zeros(0))


def test_compute_metrics_for_gives_the_trainer_scalars_only():
    class EvalPrediction:  # the two fields the Trainer hands compute_metrics
        predictions = (np.eye(3)[[0, 1, 2, 2]], np.zeros((4, 2)))  # a tuple: the logits come first
        label_ids = np.array([0, 1, 2, 1])

    out = compute_metrics_for(THREE)(EvalPrediction())
    assert set(out) == {"accuracy", "f1", "macro_f1", "matthews_correlation", F1_ACCURACY_MEAN}
    assert out["accuracy"] == 0.75 and all(isinstance(v, float) for v in out.values())


def test_primary_is_the_tasks_primary_metric():
    m = task_metrics(SCORE, np.array([[0.0], [1.0], [3.0]]), np.array([0.0, 1.0, 2.0]))
    assert primary(SCORE, m) == m["pearson_spearman_mean"]
    mrpc = Task(SINGLE_LABEL, ("no", "yes"), primary_metric=F1_ACCURACY_MEAN)
    pm = task_metrics(mrpc, np.eye(2)[[1, 1, 0]], np.array([1, 0, 0]))
    assert primary(mrpc, pm) == pytest.approx((2 / 3 + _f1(1, 1, 0)) / 2) == pytest.approx(2 / 3)
