"""LoRALinear: a low-rank update beside a frozen ``nn.Linear`` (Hu et al., 2021). Pure torch.

The layer computes ``base(x) + dropout(x) @ A.T @ B.T * scaling`` with ``lora_A`` of shape
``(r, in_features)`` and ``lora_B`` of shape ``(out_features, r)``, so ``B @ A`` has the layout of
``nn.Linear.weight``. ``B`` starts at zero, so a freshly wrapped model computes exactly what the base
model computes. ``delta_weight()`` is the single source of the update for ``merge()`` and ``unmerge()``.

With ``use_dora`` the layer is DoRA (Liu et al., 2024): the adapted weight ``W + ΔW`` is split into a
direction and a trainable magnitude ``m`` (one per output feature), and computes
``m / ‖W + ΔW‖_row ⊙ (W x + ΔW x) + bias``, exactly as PEFT's ``use_dora`` layer does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

INITS = ("kaiming", "gaussian")
# Up to this dropout probability the LoRA branch on the CPU draws where the dropped elements are
# (_dropped_positions); above it, or on a GPU, one draw per element (nn.Dropout) is the cheaper.
SPARSE_DROPOUT_MAX = 0.25


class LoRALinear(nn.Module):
    """Wrap ``base`` with a trainable rank-``r`` update; the base weights are frozen.

    Args:
        base: the Linear to adapt; it is kept as ``self.base`` (its parameters keep their names).
        r: rank of the update, ``r >= 1``.
        alpha: scaling numerator; the update is scaled by ``alpha / r`` (LoRA §4.1), or by
            ``alpha / sqrt(r)`` with ``rslora`` (Kalajdzievski, 2023), which keeps the update's
            magnitude stable as ``r`` grows.
        dropout: dropout probability on the LoRA branch's input only, in ``[0, 1)``.
        init: ``"kaiming"`` (uniform, a=sqrt(5), as ``nn.Linear`` and PEFT) or ``"gaussian"``
            (normal with std ``1/r``, PEFT's ``init_lora_weights="gaussian"``) for ``lora_A``.
        rslora: use rank-stabilised scaling.
        use_dora: add DoRA's magnitude ``lora_magnitude`` of shape ``(out_features,)``, initialised to
            the row norms of ``W``, so the layer starts equal to the base.

    Raises:
        ValueError: ``r < 1``, a NaN or infinite ``alpha``, dropout outside ``[0, 1)``, an unknown
            ``init`` or a non-Linear base.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
        use_dora: bool = False,
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"LoRA alpha must be a finite number, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        if init not in INITS:
            raise ValueError(f"LoRA init must be one of {', '.join(INITS)}, got {init!r}")
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r = r
        self.alpha = float(alpha)
        self.rslora = rslora
        self.init = init
        self.scaling = self.alpha / (math.sqrt(r) if rslora else r)
        # No dropout module at p=0: nn.Dropout(0) still costs a copy of x in training mode.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_p = float(dropout)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=torch.float32))
        self.use_dora = use_dora
        if use_dora:
            self.lora_magnitude = nn.Parameter(
                torch.empty(self.out_features, device=w.device, dtype=torch.float32)
            )
        else:
            self.register_parameter("lora_magnitude", None)
        # DoRA's ‖W + ΔW‖_row at merge time: unmerge needs the norm of the weight it can no longer see.
        self.register_buffer("_merged_norm", None, persistent=False)
        self.merged = False
        self.disabled = False
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """Re-draw ``lora_A``, zero ``lora_B`` and (DoRA) set ``m = ‖W‖_row``, so the layer equals its base."""
        with torch.no_grad():
            if self.init == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            else:
                nn.init.normal_(self.lora_A, std=1.0 / self.r)
            self.lora_B.zero_()
            if self.use_dora:
                self.lora_magnitude.copy_(self.weight_norm())

    def delta_weight(self) -> torch.Tensor:
        """The update ``B @ A * scaling``, shape ``(out_features, in_features)``, in float32."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """DoRA's ``‖W + ΔW‖`` over each row (one per output feature), shape ``(out_features,)``, float32.

        Computed without gradient: DoRA §4.3 treats the norm as a constant in backward, which saves the
        memory of a graph through ``W + ΔW``; PEFT does the same. While merged it is the norm at merge time.
        """
        if self.merged:
            return self._merged_norm
        # One fused addmm: W + scaling · B @ A, the (out, in) weight the norm needs, and nothing more.
        adapted = torch.addmm(self.base.weight.float(), self.lora_B, self.lora_A, alpha=self.scaling)
        return torch.linalg.vector_norm(adapted, dim=1)

    def _dora_factor(self) -> torch.Tensor:
        """``m / ‖W + ΔW‖_row``, shape ``(out_features,)``; the gradient reaches ``m`` only."""
        return self.lora_magnitude / self.weight_norm()

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base.weight`` (W += ΔW). A second call is a no-op.

        DoRA: ``W' = (m / ‖W + ΔW‖_row)[:, None] · (W + ΔW)``, and the norm is kept for ``unmerge``.
        The sum is taken in float32 and cast back, so a low-precision base loses no more than one
        rounding of the merged weight.
        """
        if self.merged:
            return
        w = self.base.weight
        adapted = w.float() + self.delta_weight()
        if self.use_dora:
            self._merged_norm = torch.linalg.vector_norm(adapted, dim=1)
            adapted *= (self.lora_magnitude / self._merged_norm)[:, None]
        w.copy_(adapted.to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of ``base.weight`` (W -= ΔW; DoRA first divides by the merge's
        factor). A no-op when not merged."""
        if not self.merged:
            return
        w = self.base.weight
        merged = w.float()
        if self.use_dora:
            merged = merged / (self.lora_magnitude / self._merged_norm)[:, None]
            self._merged_norm = None
        w.copy_((merged - self.delta_weight()).to(w.dtype))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(..., in_features)`` -> ``(..., out_features)``."""
        if self.use_dora:
            return self._dora_forward(x)
        if not self.merged and not self.disabled:
            return self._forward_with_update(x)
        out = self.base(x)
        if self.merged and self.disabled:
            # Disabled while merged: take the update back out so the switch means the same thing.
            return out - (self._branch(x) * self.scaling).to(out.dtype)
        return out

    def _forward_with_update(self, x: torch.Tensor) -> torch.Tensor:
        # In 2-D, so that the update accumulates into the base's output itself; for a 3-D x that output
        # would be a view, and an in-place op on a view makes autograd copy the gradient twice.
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        out = self.base(x2)  # (N, out)
        h = x2
        if h.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.lora_A.dtype)  # a low-precision base without autocast: the update in float32
        p = self.dropout_p if self.training else 0.0
        if p and not (p <= SPARSE_DROPOUT_MAX and h.device.type == "cpu"):
            h, p = self.dropout(h), 0.0
        scale = self.scaling / (1 - p)  # inverted dropout's 1 / (1 - p), on the r-wide product
        out = _LoRAUpdate.apply(out, h, self.lora_A, self.lora_B, scale, p)
        return out.view(*x.shape[:-1], self.out_features)

    def _dora_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged != self.disabled:  # merged and on, or unmerged and off: the base computes it
            return self.base(x)
        w, bias = self.base.weight, self.base.bias
        if self.merged:  # disabled while merged: W x = W' x / factor - ΔW x, with the merge's factor
            h = F.linear(x, w)
            h = h / (self.lora_magnitude / self._merged_norm).to(h.dtype)
            h = torch.sub(h, self._branch(x).to(h.dtype), alpha=self.scaling)
            return h if bias is None else h + bias
        factor = self._dora_factor()  # (out,)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            # m / ‖W + ΔW‖ · (W x + ΔW x) + bias: the bias is not rescaled (PEFT subtracts it first).
            h = F.linear(x, w)
            h = torch.add(h, self._branch(x).to(h.dtype), alpha=self.scaling)
            factor = factor.to(h.dtype)
            return h * factor if bias is None else torch.addcmul(bias, h, factor)
        # Dropout as PEFT applies it: base(x) + (factor - 1) · W drop(x) + factor · ΔW drop(x). It costs
        # one more matmul with W than plain LoRA; without dropout it is the formula above.
        xd = self.dropout(x)
        out = self.base(x)
        hd = F.linear(xd, w)
        hd_adapted = torch.add(hd, self._branch(xd).to(hd.dtype), alpha=self.scaling)
        return out - hd + hd_adapted * factor.to(hd.dtype)

    def _branch(self, h: torch.Tensor) -> torch.Tensor:
        # (x @ A.T) @ B.T: two thin matmuls, never the (out, in) ΔW.
        if h.dtype != self.lora_A.dtype:
            h = h.to(self.lora_A.dtype)
        return F.linear(F.linear(h, self.lora_A), self.lora_B)  # (..., out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout_p:g}, "
            f"{'dora=True, ' if self.use_dora else ''}merged={self.merged}"
        )


class _LoRAUpdate(torch.autograd.Function):
    """``out += scale * drop(x) @ A.T @ B.T``, in place, for the base output ``out`` ``(N, out)``.

    The LoRA paper's cheapest order (``x @ A.T`` first, never the ``(out, in)`` ΔW) with three savings
    over autograd composing the same ops: the scale is applied to the r-wide product, the GEMM with
    ``B`` accumulates into ``out`` (``addmm_``), and every thin product keeps ``r`` as its short
    outer dimension (``A @ x.T``, ``grad_u.T @ x``), the orientation MKL is fastest at: autograd's
    ``x.T @ grad_u`` is 5x slower for r = 8 on one core. With ``p > 0`` (the CPU's sparse dropout) the
    dropped positions are drawn here (``_dropped_positions``); backward keeps them (8 bytes each) and
    ``x``, which the layer's other users hold anyway, not a dropped copy and a float mask.
    """

    @staticmethod
    def forward(ctx, out, x, a, b, scale: float, p: float):
        x = x.contiguous()  # (N, in)
        dropped = _dropped_positions(x.numel(), p) if p else None
        h = x if dropped is None else _zero_at(x, dropped)
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
            h = x if dropped is None else _zero_at(x, dropped)
            grad_a = (gu_t @ h.to(dtype)).to(a.dtype)  # (r, in)
        if ctx.needs_input_grad[3]:
            grad_b = (u_t @ grad_out).t().to(b.dtype)  # (out, r)
        return grad, grad_x, grad_a, grad_b, None, None


def _zero_at(x: torch.Tensor, flat_positions: torch.Tensor) -> torch.Tensor:
    """A copy of contiguous ``x`` with the elements at ``flat_positions`` set to zero."""
    return x.clone().view(-1).index_fill_(0, flat_positions, 0.0).view(x.shape)


def _dropped_positions(n: int, p: float) -> torch.Tensor:
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
