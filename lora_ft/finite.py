"""Nothing non-finite is trained on or published: one check for tensors, one for metrics, one message for divergence.

``nan > tol`` is False and the argmax of a NaN row is class 0, so a NaN model passes every check
written as "fail when above the limit" and reports a plausible accuracy. Safety checks therefore ask
"is it finite and within the limit" (``is_within``), and every writer of a model, an adapter or a
metrics file calls ``require_finite`` / ``require_finite_metrics`` first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from lora_ft.errors import LoraFtError


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_within(value: float, limit: float) -> bool:
    """``value <= limit`` for a finite ``value``; False for NaN and inf, which ``value > limit`` lets through."""
    return math.isfinite(value) and value <= limit


def _describe(name: str, tensor: torch.Tensor) -> str:
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    parts = [f"{nan} NaN"] if nan else []
    parts += [f"{inf} infinite"] if inf else []
    return f"{name} holds {' and '.join(parts)} of {tensor.numel()} values"


def first_nonfinite(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """``"<name> holds 3 NaN of 256 values"`` for the first tensor with a NaN or inf, else None."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, tensor in items:
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return _describe(name, tensor)
    return None


def require_finite(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], context: str
) -> None:
    """Raise ``LoraFtError("<context>: <first bad tensor> ...")`` unless every tensor is finite."""
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise LoraFtError(f"{context}: {bad}")


def _nonfinite_metric(value: Any, path: str) -> tuple[str, float] | None:
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, Mapping):
        children = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        children = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for child_path, child in children:
        found = _nonfinite_metric(child, child_path)
        if found is not None:
            return found
    return None


def require_finite_metrics(metrics: Mapping[str, Any], context: str) -> None:
    """Raise ``LoraFtError`` naming the first NaN or infinite number anywhere in ``metrics``."""
    found = _nonfinite_metric(metrics, "")
    if found is not None:
        raise LoraFtError(f"{context}: {found[0]} is {found[1]}")


class TrainingDiverged(LoraFtError):
    """A run whose loss, gradient or weights stopped being finite: an exact resume diverges again."""


def diverged(step: int, what: str, learning_rate: float) -> TrainingDiverged:
    """The one message for a run whose loss, gradient or weights stopped being finite at ``step``."""
    return TrainingDiverged(
        f"training diverged at step {step}: {what}; nothing non-finite was saved. Lower "
        f"train.learning_rate ({learning_rate:g} now) or train.max_grad_norm"
    )
