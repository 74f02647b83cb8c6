"""The fused LoRA update: ``LoRALinear.forward``'s formula in fewer, CPU-friendlier operations.

``lora_forward(layer, x)`` computes ``layer.base(x) + dropout(x) @ A.T @ B.T * scaling`` for ``x`` of
shape ``(..., in_features)`` with the same values and gradients as the plain formula, through one
autograd Function (``_LoRAUpdate``) that accumulates the update into the base's output in place. On
the CPU, at dropout ``p <= SPARSE_DROPOUT_MAX``, it draws where the dropped elements are
(``sparse_dropout.dropped_positions``) instead of one Bernoulli draw per element.
"""

from __future__ import annotations

import torch

from lora_ft.lora.sparse_dropout import SPARSE_DROPOUT_MAX, dropped_positions, zero_at


def lora_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """``layer.base(x) + layer.dropout(x) @ A.T @ B.T * layer.scaling`` for an unmerged, enabled
    ``LoRALinear``; ``x``: ``(..., in_features)`` -> ``(..., out_features)``."""
    # In 2-D, so that the update accumulates into the base's output itself; for a 3-D x that output
    # would be a view, and an in-place op on a view makes autograd copy the gradient twice.
    x2 = x.reshape(-1, layer.in_features)  # (N, in)
    out = layer.base(x2)  # (N, out)
    h = x2
    if h.dtype != layer.lora_A.dtype and not torch.is_autocast_enabled(h.device.type):
        h = h.to(layer.lora_A.dtype)  # a low-precision base without autocast: the update in float32
    p = layer.dropout_p if layer.training else 0.0
    if p and not (p <= SPARSE_DROPOUT_MAX and h.device.type == "cpu"):
        h, p = layer.dropout(h), 0.0
    scale = layer.scaling / (1 - p)  # inverted dropout's 1 / (1 - p), on the r-wide product
    out = _LoRAUpdate.apply(out, h, layer.lora_A, layer.lora_B, scale, p)
    return out.view(*x.shape[:-1], layer.out_features)


class _LoRAUpdate(torch.autograd.Function):
    """``out += scale * drop(x) @ A.T @ B.T``, in place, for the base output ``out`` ``(N, out)``.

    The LoRA paper's cheapest order (``x @ A.T`` first, never the ``(out, in)`` ΔW) with three savings
    over autograd composing the same ops: the scale is applied to the r-wide product, the GEMM with
    ``B`` accumulates into ``out`` (``addmm_``), and every thin product keeps ``r`` as its short
    outer dimension (``A @ x.T``, ``grad_u.T @ x``), the orientation MKL is fastest at: autograd's
    ``x.T @ grad_u`` is 5x slower for r = 8 on one core. With ``p > 0`` (the CPU's sparse dropout) the
    dropped positions are drawn here (``dropped_positions``); backward keeps them (8 bytes each) and
    ``x``, which the layer's other users hold anyway, not a dropped copy and a float mask.
    """

    @staticmethod
    def forward(ctx, out, x, a, b, scale: float, p: float):
        x = x.contiguous()  # (N, in)
        dropped = dropped_positions(x.numel(), p) if p else None
        h = x if dropped is None else zero_at(x, dropped)
        u_t = (a @ h.t()).mul_(scale)  # (r, N): the scaled x A^T, transposed
        out.addmm_(u_t.t().to(out.dtype), b.t().to(out.dtype))
        ctx.mark_dirty(out)
        ctx.save_for_backward(x, a, b, u_t, dropped)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        x, a, b, u_t, dropped = ctx.saved_tensors
        dtype = u_t.dtype  # the forward's compute dtype (bf16 under autocast)
        grad_out = grad.to(dtype)  # (N, out)
        gu_t = (b.to(dtype).t() @ grad_out.t()).mul_(ctx.scale)  # (r, N): scale * dL/du, transposed
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_x = gu_t.t() @ a.to(dtype)  # (N, in)
            if dropped is not None:
                grad_x.view(-1).index_fill_(0, dropped, 0.0)
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[2]:
            h = x if dropped is None else zero_at(x, dropped)
            grad_a = (gu_t @ h.to(dtype)).to(a.dtype)  # (r, in)
        if ctx.needs_input_grad[3]:
            grad_b = (u_t @ grad_out).t().to(b.dtype)  # (out, r)
        return grad, grad_x, grad_a, grad_b, None, None
