"""A frozen base's dropout drawn as dropped positions: nn.Dropout's distribution, values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_ft.config import load_config
from lora_ft.data.task import Task
from lora_ft.lora.sparse_dropout import SPARSE_DROPOUT_MAX, SparseDropout, use_sparse_dropout


@pytest.mark.parametrize("p", [0.1, SPARSE_DROPOUT_MAX])
def test_sparse_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_it(p):
    torch.manual_seed(0)
    x = torch.rand(64, 100) + 0.5  # no zeros, so a zero in the output is a drop
    drop = SparseDropout(p)
    outs = torch.stack([drop(x) for _ in range(20)])  # (20, 64, 100)
    dropped = outs == 0
    # Every kept element is what nn.Dropout makes of it, to the last bit.
    plain = F.dropout(x, p, training=True)
    scaled = x * (1 / (1 - p))
    assert torch.equal(plain[plain != 0], scaled[plain != 0])
    assert torch.equal(outs[~dropped], scaled.expand_as(outs)[~dropped])
    n = dropped.numel()
    assert abs(dropped.sum().item() - n * p) < 5 * math.sqrt(n * p * (1 - p))
    # The mean is unbiased like nn.Dropout's: E[out] = x.
    assert abs(outs.mean().item() - x.mean().item()) < 5 * outs.std().item() / math.sqrt(outs.numel())
    # Each draw is fresh: two calls do not drop the same elements.
    assert not torch.equal(dropped[0], dropped[1])


@pytest.mark.parametrize("p", [0.1, 0.2])
def test_sparse_dropout_gradient_is_the_mask_over_1_minus_p(p):
    torch.manual_seed(1)
    x = (torch.rand(8, 16, 32) + 0.5).requires_grad_(True)
    upstream = torch.randn(8, 16, 32)
    out = SparseDropout(p)(x)
    out.backward(upstream)
    keep = (out != 0).float()
    assert 0 < keep.mean().item() < 1
    torch.testing.assert_close(x.grad, upstream * keep / (1 - p))
    assert torch.equal(x.grad == 0, keep == 0)


def test_sparse_dropout_matches_nn_dropout_at_each_rate_in_a_two_sample_count():
    """The two drop counts over the same number of elements agree within sampling error."""
    p, n = 0.1, 200_000
    torch.manual_seed(2)
    ones = torch.ones(n)
    sparse = (SparseDropout(p)(ones) == 0).sum().item()
    plain = (F.dropout(ones, p, training=True) == 0).sum().item()
    assert abs(sparse - plain) < 5 * math.sqrt(2 * n * p * (1 - p))


def test_sparse_dropout_is_the_identity_in_eval_and_nn_dropout_above_the_sparse_range():
    x = torch.randn(4, 10)
    drop = SparseDropout(0.1).eval()
    assert torch.equal(drop(x), x)
    high = SparseDropout(0.5)  # above SPARSE_DROPOUT_MAX: one Bernoulli draw per element
    torch.manual_seed(3)
    expected = F.dropout(x, 0.5, training=True)
    torch.manual_seed(3)
    assert torch.equal(high(x), expected)


def test_use_sparse_dropout_swaps_plain_dropout_modules_and_keeps_p_and_mode():
    class WithDropoutSubclass(nn.Dropout):
        pass

    model = nn.Sequential(
        nn.Linear(3, 3), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.2)), WithDropoutSubclass(0.3)
    )
    model.eval()
    assert use_sparse_dropout(model) == 2
    assert type(model[1]) is SparseDropout and model[1].p == 0.1 and not model[1].training
    assert type(model[2][0]) is SparseDropout and model[2][0].p == 0.2
    assert type(model[3]) is WithDropoutSubclass  # someone else's subclass is left alone
    assert use_sparse_dropout(model) == 0  # idempotent


@pytest.mark.parametrize("base_dropout", ["sparse", "torch"])
@pytest.mark.parametrize("method", ["lora", "head", "full"])
def test_only_a_frozen_base_gets_the_sparse_dropout_and_only_when_asked(tiny_bert_dir, method, base_dropout):
    from lora_ft.training.modeling import build_for_method, load_model

    overrides = [f"model.name={tiny_bert_dir}", "lora.r=2", f"train.method={method}"]
    cfg = load_config(None, [*overrides, f"train.base_dropout={base_dropout}"])
    loaded = load_model(cfg.model, Task.legacy(["neg", "pos"]))
    before = {n: m.p for n, m in loaded.model.named_modules() if type(m) is nn.Dropout}
    assert before  # the tiny BERT has embedding, attention, hidden and classifier dropout
    x = torch.tensor([[101, 2023, 2003, 102]])
    loaded.model.eval()
    with torch.no_grad():
        logits = loaded.model(input_ids=x).logits
    build_for_method(loaded, cfg)
    kinds = {type(m) for n, m in loaded.model.named_modules() if n in before}
    sparse = method != "full" and base_dropout == "sparse"
    assert kinds == ({SparseDropout} if sparse else {nn.Dropout})
    assert {n: m.p for n, m in loaded.model.named_modules() if n in before} == before
    with torch.no_grad():  # in eval the swap changes nothing (LoRA's B is zero at init)
        torch.testing.assert_close(loaded.model(input_ids=x).logits, logits, rtol=0, atol=0)


def test_an_unknown_base_dropout_is_one_clear_error():
    from lora_ft.errors import LoraFtError

    with pytest.raises(LoraFtError, match=r"train.base_dropout must be one of sparse, torch, got 'fast'"):
        load_config(None, ["train.base_dropout=fast"])
