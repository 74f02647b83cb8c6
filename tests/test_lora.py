"""LoRALinear on its own: pure torch, tiny shapes, milliseconds."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_ft.lora import LoRALinear
from lora_ft.lora.sparse_dropout import dropped_positions

IN, OUT, R = 12, 10, 4


def make(r=R, alpha=8.0, dropout=0.0, init="kaiming", rslora=False, bias=True, seed=0) -> LoRALinear:
    torch.manual_seed(seed)
    return LoRALinear(
        nn.Linear(IN, OUT, bias=bias), r=r, alpha=alpha, dropout=dropout, init=init, rslora=rslora
    )


def randomize_b(layer: LoRALinear, seed=1) -> LoRALinear:
    """An adapter that changes something, so equivalence tests cannot pass vacuously."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))
    return layer


def x_of(*shape, seed=2, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_shapes_and_zero_update_at_init():
    layer = make()
    assert layer.lora_A.shape == (R, IN) and layer.lora_B.shape == (OUT, R)
    assert torch.count_nonzero(layer.lora_B) == 0
    x = x_of(3, 5, IN)  # (B, T, in)
    out = layer(x)
    assert out.shape == (3, 5, OUT)
    assert (out - layer.base(x)).abs().max().item() == 0.0


def test_scaling_plain_and_rslora():
    assert make(r=4, alpha=8).scaling == 2.0
    assert make(r=4, alpha=8, rslora=True).scaling == pytest.approx(8 / math.sqrt(4))
    assert make(r=16, alpha=8, rslora=True).scaling == pytest.approx(2.0)


def test_kaiming_bound_and_gaussian_std():
    a = make().lora_A
    assert a.abs().max() <= 1 / math.sqrt(IN)  # kaiming_uniform(a=sqrt(5)): bound 1/sqrt(fan_in)
    torch.manual_seed(0)
    g = LoRALinear(nn.Linear(2048, 4), r=4, init="gaussian").lora_A
    assert g.std().item() == pytest.approx(1 / 4, rel=0.05)
    assert g.mean().abs().item() < 0.01


@pytest.mark.parametrize(("r", "std"), [(4, 0.01), (8, 0.2)])
def test_gaussian_init_std_sets_the_std_of_a(r, std):
    torch.manual_seed(0)
    a = LoRALinear(nn.Linear(4096, 4), r=r, init="gaussian", init_std=std).lora_A
    n = a.numel()
    # The sample std of n normals has standard error std / sqrt(2n); 5 of them is a 1-in-10^6 miss,
    # and far from 1/r (0.25, 0.125), today's std.
    assert abs(a.std().item() - std) < 5 * std / math.sqrt(2 * n)
    assert abs(a.mean().item()) < 5 * std / math.sqrt(n)


def test_default_gaussian_std_is_still_one_over_r():
    torch.manual_seed(0)
    plain = LoRALinear(nn.Linear(64, 4), r=4, init="gaussian").lora_A
    torch.manual_seed(0)
    explicit = LoRALinear(nn.Linear(64, 4), r=4, init="gaussian", init_std=1 / 4).lora_A
    assert torch.equal(plain, explicit)


@pytest.mark.parametrize("std", [math.nan, math.inf, -math.inf, 0.0, -0.01, True, "0.01"])
def test_bad_init_std_raises(std):
    with pytest.raises(ValueError, match="init_std must be a finite number > 0"):
        LoRALinear(nn.Linear(IN, OUT), init="gaussian", init_std=std)


def test_init_std_without_gaussian_raises():
    with pytest.raises(ValueError, match="init_std sets the gaussian init's std"):
        LoRALinear(nn.Linear(IN, OUT), init_std=0.01)


def test_forward_matches_formula_with_nonzero_b():
    layer = randomize_b(make())
    x = x_of(6, IN)
    expected = layer.base(x) + x @ layer.lora_A.T @ layer.lora_B.T * layer.scaling
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), layer.lora_B @ layer.lora_A * layer.scaling)
    torch.testing.assert_close(
        layer(x), F.linear(x, layer.base.weight + layer.delta_weight(), layer.base.bias)
    )


def _keep(shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The keep mask ``LoRALinear`` draws on the CPU for dropout ``p`` <= 0.25, from the same RNG state."""
    keep = torch.ones(math.prod(shape))
    keep[dropped_positions(keep.numel(), p)] = 0.0
    return keep.view(shape)


@pytest.mark.parametrize("p", [0.1, 0.5])  # drawn as dropped positions / by nn.Dropout
def test_dropout_only_on_the_lora_branch(p):
    layer = randomize_b(make(dropout=p))
    x = x_of(8, IN)
    layer.eval()
    assert torch.equal(layer(x), layer(x))  # eval: deterministic, no dropout
    torch.testing.assert_close(layer(x), layer.base(x) + x @ layer.lora_A.T @ layer.lora_B.T * layer.scaling)

    layer.train()
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    dropped = x * _keep(x.shape, p) / (1 - p) if p <= 0.25 else F.dropout(x, p, training=True)
    assert (dropped == 0).any() and (dropped != 0).any()
    torch.testing.assert_close(out, layer.base(x) + dropped @ layer.lora_A.T @ layer.lora_B.T * layer.scaling)
    with torch.no_grad():
        layer.lora_B.zero_()
    # With no update, training-mode output is the base output exactly: the base path sees no dropout.
    assert torch.equal(layer(x), layer.base(x))


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.5])
def test_gradients_match_the_formula(dropout):
    """The fused forward (scale on x A^T, addmm_ into the base output, the dropout Function) has the
    gradients of the plain formula, for x, A and B, on a 3-D input."""
    layer = randomize_b(make(dropout=dropout))
    x = x_of(3, 5, IN).requires_grad_()
    grad_out = x_of(3, 5, OUT, seed=3)
    torch.manual_seed(7)
    layer(x).backward(grad_out)
    ours = (x.grad, layer.lora_A.grad, layer.lora_B.grad)

    a, b = layer.lora_A.detach().clone().requires_grad_(), layer.lora_B.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    torch.manual_seed(7)
    if dropout > 0.25:
        h = F.dropout(x_ref, dropout, training=True)
    else:
        h = x_ref * _keep(x.shape, dropout) / (1 - dropout) if dropout else x_ref
    (layer.base(x_ref) + h @ a.T @ b.T * layer.scaling).backward(grad_out)
    for got, want in zip(ours, (x_ref.grad, a.grad, b.grad), strict=True):
        torch.testing.assert_close(got, want)


class _DropAsFused(nn.Module):
    """Inverted dropout with the mask the fused path draws from the same RNG state (``_keep``), so the
    plain path can drop exactly the elements the fused one drops."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _keep(x.shape, self.p) / (1 - self.p) if self.training else x


def _graph_ops(t: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind ``t``."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node.name() not in seen:
            seen.add(node.name())
            todo.extend(n for n, _ in node.next_functions)
    return seen


def _values_and_grads(layer: LoRALinear, fused: bool, x: torch.Tensor, grad_out: torch.Tensor, seed=7):
    layer.fused = fused
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    out = layer(x)
    assert ("_LoRAUpdateBackward" in _graph_ops(out)) == fused  # each path is the one it claims
    out.backward(grad_out)
    return {
        "out": out.detach(), "x": x.grad, "lora_A": layer.lora_A.grad.clone(),
        "lora_B": layer.lora_B.grad.clone(), "base.bias": layer.base.bias.grad.clone(),
    }  # fmt: skip


def test_fused_is_the_default():
    assert LoRALinear.fused and make().fused


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.5])  # none / the fused sparse sampler / nn.Dropout
@pytest.mark.parametrize("shape", [(6,), (3, 5)])
def test_fused_and_plain_paths_give_the_same_values_and_gradients(dropout, shape):
    """``fused`` is only speed: the same output and the same gradients for x, A, B and a trainable base
    bias, in training mode with the same dropout mask on both paths."""
    layer = randomize_b(make(dropout=dropout))
    layer.base.bias.requires_grad_(True)
    x, grad_out = x_of(*shape, IN), x_of(*shape, OUT, seed=3)
    fused = _values_and_grads(layer, True, x, grad_out)
    if 0 < dropout <= 0.25:
        layer.dropout = _DropAsFused(dropout)
    plain = _values_and_grads(layer, False, x, grad_out)
    without_dropout = layer.eval()(x).detach()
    assert torch.allclose(fused["out"], without_dropout) == (dropout == 0)  # the mask dropped something
    for name, want in plain.items():
        torch.testing.assert_close(fused[name], want, msg=lambda m, name=name: f"{name}: {m}")
    assert not torch.equal(fused["out"], layer.base(x).detach())  # the update changed something


def test_fused_and_plain_paths_agree_for_a_bf16_base_and_under_autocast():
    torch.manual_seed(0)
    layer = randomize_b(LoRALinear(nn.Linear(IN, OUT).to(torch.bfloat16), r=R, alpha=8))
    x = x_of(4, IN, dtype=torch.bfloat16)
    outs = {}
    for fused in (True, False):
        layer.fused = fused
        outs[fused] = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[fused, "autocast"] = layer(x)
    assert outs[True].dtype == outs[False].dtype == torch.bfloat16
    torch.testing.assert_close(outs[True], outs[False], atol=0.05, rtol=0.02)
    torch.testing.assert_close(outs[True, "autocast"], outs[False, "autocast"], atol=0.05, rtol=0.02)


@pytest.mark.parametrize("p", [0.05, 0.25])
def test_dropped_positions_are_independent_with_probability_p(p):
    torch.manual_seed(0)
    n, runs = 6400, 50
    masks = torch.zeros(runs, n, dtype=torch.bool)
    for row in masks:
        positions = dropped_positions(n, p)
        assert positions.dtype == torch.int64 and bool((positions[1:] > positions[:-1]).all())
        assert positions.min() >= 0 and positions.max() < n
        row[positions] = True
    total = masks.numel()
    assert abs(masks.sum().item() - total * p) < 5 * math.sqrt(total * p * (1 - p))
    # No position favoured: the first and the last are dropped at the rate p too.
    for column in (0, n - 1):
        assert abs(masks[:, column].float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / runs) + 0.05
    # Neighbours are independent: a drop is no likelier right after a drop.
    after_drop = masks[:, 1:][masks[:, :-1]].float().mean().item()
    assert abs(after_drop - p) < 5 * math.sqrt(p * (1 - p) / (total * p))


def test_merge_unmerge_round_trip_and_idempotence():
    layer = randomize_b(make())
    x = x_of(6, IN)
    w0 = layer.base.weight.detach().clone()
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    merged_w = layer.base.weight.detach().clone()
    assert not torch.allclose(merged_w, w0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    assert not torch.allclose(layer(x), F.linear(x, w0, layer.base.bias))  # merged differs from base
    layer.merge()  # second merge: no-op
    assert torch.equal(layer.base.weight, merged_w)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    layer.unmerge()  # second unmerge: no-op
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)


def test_eval_never_merges():
    layer = randomize_b(make())
    w0 = layer.base.weight.detach().clone()
    layer.eval()
    assert not layer.merged and torch.equal(layer.base.weight, w0)


def test_disabled_gives_base_output_also_when_merged():
    layer = randomize_b(make())
    x = x_of(6, IN)
    base_out = F.linear(x, layer.base.weight, layer.base.bias).detach()
    layer.disabled = True
    assert torch.equal(layer(x), base_out)
    layer.merge()
    torch.testing.assert_close(layer(x), base_out, atol=1e-5, rtol=0)
    layer.disabled = False
    assert not torch.allclose(layer(x), base_out)


def test_only_lora_params_train_and_base_is_bit_identical_after_a_step():
    layer = randomize_b(make())
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    w0, b0 = layer.base.weight.detach().clone(), layer.base.bias.detach().clone()
    a0, bb0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    layer(x_of(6, IN)).pow(2).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    opt.step()
    assert torch.equal(layer.base.weight, w0) and torch.equal(layer.base.bias, b0)
    assert not torch.equal(layer.lora_A, a0) and not torch.equal(layer.lora_B, bb0)


@pytest.mark.parametrize(
    "kwargs",
    [{"r": 0}, {"r": -1}, {"r": 2.0}, {"r": True}, {"dropout": 1.0}, {"dropout": -0.1}, {"init": "xavier"}],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        LoRALinear(nn.Linear(IN, OUT), **kwargs)


def test_non_linear_base_raises():
    with pytest.raises(ValueError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(IN, OUT, 1))


def test_bf16_base():
    torch.manual_seed(0)
    layer = randomize_b(LoRALinear(nn.Linear(IN, OUT).to(torch.bfloat16), r=R, alpha=8))
    assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32
    x = x_of(4, IN, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    expected = layer.base(x).float() + x.float() @ layer.lora_A.T @ layer.lora_B.T * layer.scaling
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    torch.testing.assert_close(layer(x).float(), expected, atol=0.1, rtol=0.05)


def test_no_bias_base():
    layer = randomize_b(make(bias=False))
    x = x_of(3, IN)
    torch.testing.assert_close(layer(x), x @ (layer.base.weight + layer.delta_weight()).T)
