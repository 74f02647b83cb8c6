"""DoRALinear: LoRA with the adapted weight split into direction and magnitude (Liu et al., 2024).

The adapted weight ``W + ΔW`` (``(out_features, in_features)``, ``ΔW = B @ A * scaling``) is split
into a direction and a trainable magnitude ``lora_magnitude`` ``m`` of shape ``(out_features,)``, and
the layer computes ``m / ‖W + ΔW‖_row ⊙ (W x + ΔW x) + bias``, exactly as PEFT's ``use_dora`` layer
does. ``m`` starts at ``‖W‖_row`` and ``B`` at zero, so a freshly wrapped layer equals its base.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lora_ft.lora.layer import LoRALinear


class DoRALinear(LoRALinear):
    """``LoRALinear`` with DoRA's magnitude; the same Args and Raises as ``LoRALinear``."""

    use_dora = True

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
        super().__init__(base, r=r, alpha=alpha, dropout=dropout, init=init, rslora=rslora, init_std=init_std)
        self.lora_magnitude = nn.Parameter(
            torch.empty(self.out_features, device=base.weight.device, dtype=torch.float32)
        )
        # ‖W + ΔW‖_row at merge time: unmerge needs the norm of the weight it can no longer see.
        self.register_buffer("_merged_norm", None, persistent=False)
        with torch.no_grad():
            self.lora_magnitude.copy_(self.weight_norm())

    def reset_lora_parameters(self) -> None:
        """Re-draw ``lora_A``, zero ``lora_B`` and set ``m = ‖W‖_row``, so the layer equals its base."""
        super().reset_lora_parameters()
        with torch.no_grad():
            self.lora_magnitude.copy_(self.weight_norm())

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """``‖W + ΔW‖`` over each row (one per output feature), shape ``(out_features,)``, float32.

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
        """``W' = (m / ‖W + ΔW‖_row)[:, None] · (W + ΔW)``, the norm kept for ``unmerge``. A second call
        is a no-op. In float32, cast back once, as ``LoRALinear.merge``."""
        if self.merged:
            return
        w = self.base.weight
        adapted = w.float() + self.delta_weight()
        self._merged_norm = torch.linalg.vector_norm(adapted, dim=1)
        adapted *= (self.lora_magnitude / self._merged_norm)[:, None]
        w.copy_(adapted.to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide by the merge's factor, then W -= ΔW. A no-op when not merged."""
        if not self.merged:
            return
        w = self.base.weight
        merged = w.float() / (self.lora_magnitude / self._merged_norm)[:, None]
        self._merged_norm = None
        w.copy_((merged - self.delta_weight()).to(w.dtype))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``m / ‖W + ΔW‖_row ⊙ (W x + ΔW x) + bias``; ``x``: ``(..., in_features)`` -> ``(..., out_features)``."""
        if self.merged != self.disabled:  # merged and on, or unmerged and off: the base computes it
            return self.base(x)
        w, bias = self.base.weight, self.base.bias
        if self.merged:  # disabled while merged: W x = W' x / factor - ΔW x, with the merge's factor
            h = F.linear(x, w)
            h = h / (self.lora_magnitude / self._merged_norm).to(h.dtype)
            h = torch.sub(h, self.lora_branch(x).to(h.dtype), alpha=self.scaling)
            return h if bias is None else h + bias
        factor = self._dora_factor()  # (out,)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            # m / ‖W + ΔW‖ · (W x + ΔW x) + bias: the bias is not rescaled (PEFT subtracts it first).
            h = F.linear(x, w)
            h = torch.add(h, self.lora_branch(x).to(h.dtype), alpha=self.scaling)
            factor = factor.to(h.dtype)
            return h * factor if bias is None else torch.addcmul(bias, h, factor)
        # Dropout as PEFT applies it: base(x) + (factor - 1) · W drop(x) + factor · ΔW drop(x). It costs
        # one more matmul with W than plain LoRA; without dropout it is the formula above.
        xd = self.dropout(x)
        out = self.base(x)
        hd = F.linear(xd, w)
        hd_adapted = torch.add(hd, self.lora_branch(xd).to(hd.dtype), alpha=self.scaling)
        return out - hd + hd_adapted * factor.to(hd.dtype)
