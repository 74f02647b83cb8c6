"""The one home of the LoRA scaling factor; pure Python, so the config reads it without torch."""

from __future__ import annotations

import math


def lora_scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """The factor on ``B @ A``: ``alpha / r`` (LoRA §4.1), so one learning rate serves every rank, or
    ``alpha / sqrt(r)`` with rsLoRA (Kalajdzievski, 2023), which keeps the update's magnitude stable
    as ``r`` grows."""
    return alpha / (math.sqrt(r) if rslora else r)
