"""Dropout drawn as the dropped positions: the same distribution as ``nn.Dropout``, cheaper on the CPU.

``nn.Dropout(p)`` draws one Bernoulli variable per element. At small ``p`` it is cheaper to draw
only where the dropped elements are (``dropped_positions``: about ``p * n`` geometric gaps) and
zero those; backward keeps the positions (8 bytes each, ``p * n`` of them) instead of an
``n``-element mask. The LoRA branch uses it (``fused.py``), and so does a frozen base's own
``nn.Dropout`` modules once ``use_sparse_dropout`` has swapped them for ``SparseDropout``: on one
core a 1024 x 384 activation's dropout at p = 0.1 costs about a third of ``nn.Dropout``'s time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Up to this dropout probability, on the CPU, drawing where the dropped elements are is the cheaper;
# above it, or on a GPU, one draw per element (nn.Dropout) is.
SPARSE_DROPOUT_MAX = 0.25


def dropped_positions(n: int, p: float) -> torch.Tensor:
    """Indices in ``[0, n)``, each present independently with probability ``p``, sorted; int64.

    The gaps between successes of independent Bernoulli(p) trials are independent Geometric(p), so
    drawing about ``p * n`` gaps gives the same distribution as ``n`` Bernoulli draws.
    """
    mean = n * p
    count = int(mean + 8 * math.sqrt(mean) + 8)  # enough gaps to pass n, but for a 1e-15 chance
    ends = torch.empty(count, dtype=torch.float64).geometric_(p).cumsum_(0)  # 1-based, exact in float64
    while ends[-1] < n:
        more = torch.empty(count, dtype=torch.float64).geometric_(p).cumsum_(0)
        ends = torch.cat([ends, more + ends[-1]])
    return ends[ends <= n].long() - 1


def zero_at(x: torch.Tensor, flat_positions: torch.Tensor) -> torch.Tensor:
    """A copy of contiguous ``x`` with the elements at ``flat_positions`` set to zero."""
    return x.clone().view(-1).index_fill_(0, flat_positions, 0.0).view(x.shape)


class _SparseDropout(torch.autograd.Function):
    """Inverted dropout of ``x`` at ``p``: ``x / (1 - p)`` with the drawn positions zeroed."""

    @staticmethod
    def forward(ctx, x, p: float):
        x = x.contiguous()
        dropped = dropped_positions(x.numel(), p)
        out = x.mul(1.0 / (1.0 - p))
        out.view(-1).index_fill_(0, dropped, 0.0)
        ctx.save_for_backward(dropped)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad):
        (dropped,) = ctx.saved_tensors
        grad_x = grad.contiguous().mul(1.0 / (1.0 - ctx.p))
        grad_x.view(-1).index_fill_(0, dropped, 0.0)
        return grad_x, None


class SparseDropout(nn.Dropout):
    """``nn.Dropout`` that, in training on the CPU at ``p <= SPARSE_DROPOUT_MAX``, draws the dropped
    positions instead of a mask; otherwise it is ``nn.Dropout``. Same ``p``, same distribution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        if self.training and 0.0 < p <= SPARSE_DROPOUT_MAX and x.device.type == "cpu" and not self.inplace:
            return _SparseDropout.apply(x, p)
        return super().forward(x)


def use_sparse_dropout(model: nn.Module) -> int:
    """Swap every plain ``nn.Dropout`` of ``model`` (the class itself, not subclasses) for a
    ``SparseDropout`` with the same ``p``, in place; returns how many were swapped.

    Only the module's own forward changes: code that reads ``module.p`` (an attention layer passing
    its probability to ``scaled_dot_product_attention``) reads the same value.
    """
    swapped = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                sparse = SparseDropout(child.p, inplace=child.inplace)
                setattr(module, name, sparse.train(child.training))
                swapped += 1
    return swapped
