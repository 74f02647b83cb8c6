"""LoRALinear: a low-rank update beside a frozen ``nn.Linear`` (Hu et al., 2021). Pure torch.

The layer computes ``base(x) + dropout(x) @ A.T @ B.T * scaling`` with ``lora_A`` of shape
``(r, in_features)`` and ``lora_B`` of shape ``(out_features, r)``, so ``B @ A`` has the layout of
``nn.Linear.weight``. ``B`` starts at zero, so a freshly wrapped model computes exactly what the base
model computes. ``delta_weight()`` is the single source of the update for ``merge()`` and ``unmerge()``.

``forward`` states the formula; with ``fused`` (the default) training and inference go through
``fused.lora_forward``, the same values and gradients computed faster on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lora_ft.lora.fused import lora_forward
from lora_ft.lora.scaling import lora_scaling

INITS = ("kaiming", "gaussian")


def check_init_std(init: str, init_std: float | None) -> None:
    """``init_std`` is None, or a finite number > 0 for the ``"gaussian"`` init (the one it scales).

    Raises:
        ValueError: a NaN, infinite, zero or negative std, or one given with another init.
    """
    if init_std is None:
        return
    number = not isinstance(init_std, bool) and isinstance(init_std, (int, float))
    if not number or not math.isfinite(init_std) or init_std <= 0:
        raise ValueError(f"LoRA init_std must be a finite number > 0, got {init_std!r}")
    if init != "gaussian":
        raise ValueError(f"LoRA init_std sets the gaussian init's std; it was given with init={init!r}")


class LoRALinear(nn.Module):
    """Wrap ``base`` with a trainable rank-``r`` update; the base weights are frozen.

    Args:
        base: the Linear to adapt; it is kept as ``self.base`` (its parameters keep their names).
        r: rank of the update, ``r >= 1``.
        alpha: scaling numerator; the update is scaled by ``lora_scaling(alpha, r, rslora)``.
        dropout: dropout probability on the LoRA branch's input only, in ``[0, 1)``.
        init: ``"kaiming"`` (uniform, a=sqrt(5), as ``nn.Linear`` and PEFT) or ``"gaussian"``
            (normal, PEFT's ``init_lora_weights="gaussian"``) for ``lora_A``.
        init_std: the gaussian init's standard deviation; None (the default) is PEFT's ``1/r``.
            The LoRA tutorials draw ``A ~ N(0, 0.01)``: ``init_std=0.01``. Only with ``"gaussian"``.
        rslora: use rank-stabilised scaling.

    Raises:
        ValueError: ``r < 1``, a NaN or infinite ``alpha``, dropout outside ``[0, 1)``, an unknown
            ``init``, an ``init_std`` that is not a finite number > 0 or is given without
            ``init="gaussian"``, or a non-Linear base.

    Example::

        layer = LoRALinear(nn.Linear(64, 32), r=4, alpha=8)  # lora_A (4, 64), lora_B (32, 4)
        y = layer(torch.randn(10, 64))  # (10, 32); equals base(x) until lora_B leaves zero
    """

    use_dora = False  # DoRALinear (lora_ft.lora.dora) says True
    # The update through fused.lora_forward, the same values and gradients faster on the CPU; set
    # False (on the class, or on one layer) for the plain formula in forward.
    fused = True

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
        init_std: float | None = None,
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
        check_init_std(init, init_std)
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r = r
        self.alpha = float(alpha)
        self.rslora = rslora
        self.init = init
        self.init_std = None if init_std is None else float(init_std)
        self.scaling = lora_scaling(self.alpha, r, rslora)
        # No dropout module at p=0: nn.Dropout(0) still costs a copy of x in training mode.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_p = float(dropout)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=torch.float32))
        self.merged = False
        self.disabled = False
        for p in self.base.parameters():
            p.requires_grad_(False)
        # This class's own reset: a subclass's override may need parameters it has not made yet.
        LoRALinear.reset_lora_parameters(self)

    def reset_lora_parameters(self) -> None:
        """Re-draw ``lora_A`` and zero ``lora_B``, so the layer equals its base."""
        with torch.no_grad():
            if self.init == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            else:
                std = 1.0 / self.r if self.init_std is None else self.init_std
                nn.init.normal_(self.lora_A, std=std)
            self.lora_B.zero_()

    def delta_weight(self) -> torch.Tensor:
        """The update ``B @ A * scaling``, shape ``(out_features, in_features)``, in float32."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base.weight`` (W += ΔW). A second call is a no-op.

        The sum is taken in float32 and cast back, so a low-precision base loses no more than one
        rounding of the merged weight.
        """
        if self.merged:
            return
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of ``base.weight`` (W -= ΔW). A no-op when not merged."""
        if not self.merged:
            return
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + B(A(dropout(x))) * scaling``; ``x``: ``(..., in_features)`` -> ``(..., out_features)``.

        Merged, ``base`` already computes the sum; disabled, the layer computes ``base(x)`` alone.
        """
        if self.merged and self.disabled:
            # Disabled while merged: take the update back out, so the switch means the same thing.
            out = self.base(x)
            return out - (self.lora_branch(x) * self.scaling).to(out.dtype)
        if self.merged or self.disabled:
            return self.base(x)
        if self.fused:
            return lora_forward(self, x)
        out = self.base(x)  # (..., out)
        update = self.lora_branch(self.dropout(x)) * self.scaling  # (..., out)
        return out + update.to(out.dtype)

    def lora_branch(self, h: torch.Tensor) -> torch.Tensor:
        """``(h @ A.T) @ B.T``, unscaled: ``(..., in_features)`` -> ``(..., out_features)``.

        Two thin matmuls, never the ``(out, in)`` ΔW; in ``lora_A``'s float32 unless autocast decides.
        """
        if h.dtype != self.lora_A.dtype:
            h = h.to(self.lora_A.dtype)
        return F.linear(F.linear(h, self.lora_A), self.lora_B)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout_p:g}, "
            f"{'dora=True, ' if self.use_dora else ''}merged={self.merged}"
        )
