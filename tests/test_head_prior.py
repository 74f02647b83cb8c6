"""A new multi-label head starts at the training labels' base rates (training/head_prior.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_ft.data.task import MULTI_LABEL, REGRESSION, SINGLE_LABEL, Task
from lora_ft.training.head_prior import RATE_FLOOR, init_bias_to_prior, label_rates, output_layer
from lora_ft.training.prepare import prepare
from tests.test_problem_types import _cfg, typed_data


def test_a_multi_label_runs_new_head_starts_at_the_log_odds_of_the_train_labels(
    tmp_path, cache, tiny_bert_dir
):
    p = prepare(_cfg(tiny_bert_dir, typed_data(tmp_path, MULTI_LABEL), MULTI_LABEL))
    assert p.data.label_names == ["bad", "good", "three"]
    # 32 train rows j = 0..31: "good" on odd j (16), "bad" on even j (16), "three" where 3 | j (11).
    expected = torch.tensor([0.0, 0.0, math.log(11 / 21)])
    torch.testing.assert_close(p.loaded.model.classifier.bias.detach(), expected)
    assert p.loaded.model.classifier.bias.requires_grad  # the head still trains


def test_rates_are_clamped_so_a_label_every_row_or_no_row_has_stays_finite():
    rates = label_rates([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(rates, torch.tensor([1 - RATE_FLOOR, RATE_FLOOR, 0.5], dtype=torch.float64))
    assert torch.isfinite(torch.logit(rates)).all()


class _Head(nn.Module):
    def __init__(self, k: int = 3, second: bool = False):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.classifier = nn.Linear(4, k)
        self.other = nn.Linear(4, k) if second else None


@pytest.mark.parametrize(
    "task, newly, second",
    [
        (Task(SINGLE_LABEL, ("a", "b", "c")), ["classifier"], False),  # cross-entropy: no per-label prior
        (Task(REGRESSION, ("score",)), ["classifier"], False),
        (Task(MULTI_LABEL, ("a", "b", "c")), [], False),  # the checkpoint's own head: left as trained
        (Task(MULTI_LABEL, ("a", "b", "c")), ["classifier", "other"], True),  # two candidates: neither
    ],
)
def test_only_a_single_new_multi_label_output_layer_is_touched(task, newly, second):
    torch.manual_seed(0)
    model = _Head(task.num_labels, second)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    labels = [[1.0] * task.num_labels, [0.0] * task.num_labels]
    assert init_bias_to_prior(model, task, labels, newly) is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_output_layer_is_the_new_linear_with_one_output_per_label():
    model = _Head(3)
    assert output_layer(model, 3, ["classifier"])[0] == "classifier"
    assert output_layer(model, 4, ["classifier"]) is None  # the body's 4 outputs: not new
    task = Task(MULTI_LABEL, ("a", "b", "c"))
    assert init_bias_to_prior(model, task, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], ["classifier"]) == "classifier"
    torch.testing.assert_close(
        model.classifier.bias.detach(), torch.logit(torch.tensor([0.5, RATE_FLOOR, RATE_FLOOR]))
    )
