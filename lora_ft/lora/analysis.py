"""Rank analysis of learned weight updates: is the update of each wrapped Linear low rank, and is full
fine-tuning's?

For each module LoRA wrapped, ``ΔW = B @ A * scaling`` (out, in), from the adapter's own tensors and
the scaling it was trained with, and optionally full fine-tuning's ``ΔW_full = W_ft - W_0`` for the
same module. For each update: its singular values σ (float64), the energy curve
``cumsum(σ²) / Σσ²``, the effective rank at 90% and 99% of the energy (the fewest directions that
hold that share), and ``‖ΔW‖_F / ‖W_0‖_F``. Between the two updates: the overlap of LoRA's top-k
left singular subspace with full fine-tuning's top-k, ``‖U_lora[:, :k]^T U_full[:, :k]‖_F² / k``, in
[0, 1] (1: the same output directions; ``k / out`` is what random subspaces give), as in the LoRA
paper's §7 subspace-similarity analysis; and, weighting full fine-tuning's directions by their energy,
the share of ``‖ΔW_full‖_F²`` inside LoRA's output subspace, ``‖U_lora^T ΔW_full‖_F² / ‖ΔW_full‖_F²``
(at most full's own top-k energy; ``k / out`` by chance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from lora_ft.errors import LoraFtError
from lora_ft.lora.scaling import lora_scaling

THRESHOLDS = (0.90, 0.99)
# Singular values below this fraction of the largest count as zero for the numerical rank (float64).
_RANK_TOL = 1e-10
_LAYER = re.compile(r"(?:^|\.)(\d+)\.(.+)$")  # the first numbered component: the layer


@dataclass
class Spectrum:
    """The singular values of one update, and the norm of the weight it updates."""

    singular_values: np.ndarray  # (min(out, in),) or (r,), descending, float64
    base_norm: float  # ‖W_0‖_F

    @property
    def norm(self) -> float:
        return float(np.sqrt(np.sum(self.singular_values**2)))

    @property
    def rel_norm(self) -> float:
        return self.norm / self.base_norm if self.base_norm else float("nan")

    def energy(self) -> np.ndarray:
        """``cumsum(σ²) / Σσ²``: the share of ‖ΔW‖_F² in the top 1, 2, ... directions (zeros for ΔW = 0)."""
        power = self.singular_values**2
        total = power.sum()
        return np.cumsum(power) / total if total > 0 else np.zeros_like(power)

    def effective_rank(self, threshold: float) -> int:
        """The fewest directions holding ``threshold`` of the energy; 0 for a zero update."""
        energy = self.energy()
        if not len(energy) or energy[-1] == 0:
            return 0
        # The tolerance keeps float64 rounding from counting an exact rank-k update as k + 1.
        return int(np.searchsorted(energy, threshold - 1e-12) + 1)

    @property
    def numerical_rank(self) -> int:
        s = self.singular_values
        return int(np.sum(s > _RANK_TOL * s[0])) if len(s) and s[0] > 0 else 0


@dataclass
class ModuleUpdate:
    """LoRA's update of one Linear and, with a full fine-tuning run, full fine-tuning's update of it."""

    module: str
    shape: tuple[int, int]  # (out, in)
    r: int
    scaling: float
    lora: Spectrum
    full: Spectrum | None = None
    overlap: float | None = None
    overlap_k: int | None = None
    captured: float | None = None  # share of ‖ΔW_full‖² in LoRA's output subspace
    kind: str = ""  # what tells this module from the others in its layer: query, intermediate.dense, ...

    @property
    def layer(self) -> int | None:
        match = _LAYER.search(self.module)
        return int(match.group(1)) if match else None

    @property
    def short_name(self) -> str:
        return f"{self.layer}.{self.kind}" if self.layer is not None else self.kind

    @property
    def overlap_random(self) -> float | None:
        return self.overlap_k / self.shape[0] if self.overlap_k else None


def lora_svd(a: torch.Tensor, b: torch.Tensor, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of ``ΔW = B @ A * scaling`` without forming ΔW.

    With ``B = Q_B R_B`` and ``A^T = Q_A R_A`` (thin QR), ``ΔW = Q_B (R_B R_A^T scaling) Q_A^T``, so the
    SVD of the (r, r) core gives ΔW's: O((in + out) r²) instead of O(in · out · min(in, out)).

    Args:
        a: ``lora_A``, (r, in).
        b: ``lora_B``, (out, r).

    Returns:
        ``(U, S)``: U (out, r), S (r,) descending, float64.
    """
    q_b, r_b = torch.linalg.qr(b.detach().to(torch.float64))  # (out, r), (r, r)
    q_a, r_a = torch.linalg.qr(a.detach().to(torch.float64).T)  # (in, r), (r, r)
    u, s, _ = torch.linalg.svd(r_b @ r_a.T * scaling)
    return (q_b @ u).numpy(), s.numpy()


def dense_svd(delta: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(U, S)`` of a dense update (out, in) in float64: U (out, k), S (k,), k = min(out, in)."""
    u, s, _ = torch.linalg.svd(delta.detach().to(torch.float64), full_matrices=False)
    return u.numpy(), s.numpy()


def subspace_overlap(u1: np.ndarray, u2: np.ndarray, k: int) -> float:
    """``‖U1[:, :k]^T U2[:, :k]‖_F² / k`` for orthonormal columns: 1 for the same subspace, 0 for orthogonal."""
    m = u1[:, :k].T @ u2[:, :k]
    return float(np.sum(m**2) / k)


def adapter_scaling(adapter, module: str) -> float:
    """The scaling ``module`` was trained with: lora-ft's record, else ``lora_alpha / r`` (rsLoRA: ``/ √r``)."""
    if module in adapter.scaling:
        return float(adapter.scaling[module])
    r = adapter.rank_of(module)
    return lora_scaling(adapter.alpha_of(module), r, bool(adapter.config.get("use_rslora")))


def analyse(
    adapter,
    base_weights: dict[str, torch.Tensor],
    full_weights: dict[str, torch.Tensor] | None = None,
) -> list[ModuleUpdate]:
    """One ``ModuleUpdate`` per module of ``adapter.lora``, in module order.

    E.g. ``analyse(read_adapter(path), {"0": base[0].weight})[0].lora.effective_rank(0.9)``.

    Args:
        adapter: an ``adapter_io.Adapter`` (plain LoRA).
        base_weights: module -> W_0 (out, in), the base weight the adapter applies to.
        full_weights: module -> W_ft (out, in) of a full fine-tuning run from the same W_0.

    Raises:
        LoraFtError: a module without a base (or fine-tuned) weight, or with another shape.
    """
    if adapter.config.get("use_dora"):
        raise LoraFtError(
            f"adapter {adapter.path} is DoRA, whose update also rescales W's columns, so it is not B·A·scaling; "
            "inspect analyses plain LoRA adapters"
        )
    out = []
    for module in sorted(adapter.lora, key=_natural):
        a, b = adapter.lora[module]
        shape = (int(b.shape[0]), int(a.shape[1]))
        w0 = _weight(base_weights, module, shape, "the base model")
        base_norm = float(torch.linalg.matrix_norm(w0.detach().to(torch.float64)))
        scaling = adapter_scaling(adapter, module)
        u_lora, s_lora = lora_svd(a, b, scaling)
        update = ModuleUpdate(module, shape, adapter.rank_of(module), scaling, Spectrum(s_lora, base_norm))
        if full_weights is not None:
            w_ft = _weight(full_weights, module, shape, "the full fine-tuning run")
            delta = w_ft.to(torch.float64) - w0.to(torch.float64)
            u_full, s_full = dense_svd(delta)
            update.full = Spectrum(s_full, base_norm)
            k = min(update.lora.numerical_rank, update.full.numerical_rank)
            if k:
                update.overlap, update.overlap_k = subspace_overlap(u_lora, u_full, k), k
                inside = u_lora[:, : update.lora.numerical_rank].T @ delta.numpy()  # (k, in)
                update.captured = float(np.sum(inside**2) / update.full.norm**2)
        out.append(update)
    _name_kinds(out)
    return out


def _name_kinds(updates: list[ModuleUpdate]) -> None:
    """Set each ``kind``: the shortest dotted tail of its name below the layer that no other module's ends in.

    BERT's q/v give ``query``, ``value``; all-linear gives ``attention.output.dense``, ``intermediate.dense``
    and ``output.dense`` rather than three ``dense``.
    """
    below = {}
    for u in updates:
        match = _LAYER.search(u.module)
        below[u.module] = match.group(2) if match else u.module
    kinds = set(below.values())
    for u in updates:
        own = below[u.module]
        parts = own.split(".")
        tails = (".".join(parts[-n:]) for n in range(1, len(parts) + 1))
        u.kind = next(
            (t for t in tails if not any(o != own and (o == t or o.endswith("." + t)) for o in kinds)), own
        )


def _weight(
    weights: dict[str, torch.Tensor], module: str, shape: tuple[int, int], where: str
) -> torch.Tensor:
    w = weights.get(module)
    if w is None:
        raise LoraFtError(
            f"{where} has no weight for {module}, which the adapter wraps; is it another model?"
        )
    if tuple(w.shape) != shape:
        raise LoraFtError(
            f"{module} is {tuple(w.shape)} in {where} but the adapter's update is {shape}; is it another model?"
        )
    return w


def _natural(name: str) -> list:
    """Sort ``layer.10`` after ``layer.9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in values]


def _spectrum_json(s: Spectrum) -> dict:
    return {
        "effective_rank": {f"{int(t * 100)}%": s.effective_rank(t) for t in THRESHOLDS},
        "numerical_rank": s.numerical_rank,
        "norm": float(f"{s.norm:.6g}"),
        "rel_norm": float(f"{s.rel_norm:.6g}"),
        "singular_values": _rounded(s.singular_values),
    }


def to_json(updates: list[ModuleUpdate], **context) -> dict:
    """The ``inspect.json`` document: ``context`` (where the adapter and the full run came from), then per module."""
    modules = []
    for u in updates:
        row = {
            "module": u.module,
            "shape": list(u.shape),
            "r": u.r,
            "scaling": u.scaling,
            "lora": _spectrum_json(u.lora),
        }
        if u.full is not None:
            row["full"] = _spectrum_json(u.full)
            # How low-rank full fine-tuning's update is at LoRA's budget: its top-r directions' share.
            row["full"]["energy_at_r"] = float(f"{u.full.energy()[u.r - 1]:.6g}")
            row["overlap"] = None if u.overlap is None else float(f"{u.overlap:.6g}")
            row["overlap_k"] = u.overlap_k
            row["overlap_random"] = None if u.overlap_random is None else float(f"{u.overlap_random:.6g}")
            row["captured_by_lora"] = None if u.captured is None else float(f"{u.captured:.6g}")
        modules.append(row)
    return {"format": 1, **context, "thresholds": list(THRESHOLDS), "modules": modules}
