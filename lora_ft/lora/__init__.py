"""The LoRA method, pure torch: ``LoRALinear`` (``layer``: the paper's formula), its fused CPU update
(``fused``), DoRA (``dora``), which modules to adapt (``targets``: specs, per-architecture defaults,
the head), wrapping, freezing, merging and unloading them (``inject``), PEFT-format adapter
directories (``io``: the format and reading, ``peft_config``: what a config may say, ``saving``:
writing, ``apply``: into a model), several adapters on one base (``adapters``), the update's
spectrum (``analysis``) and savings planning (``calculator``). ``scaling.lora_scaling`` is the one
home of the ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``) factor. Nothing here imports a lora-ft
module above ``errors``/``fsutil``/``finite``, nor transformers.

Names are imported lazily (PEP 562), so ``lora_ft.lora.scaling`` loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "INITS": "lora_ft.lora.layer",
    "LoRALinear": "lora_ft.lora.layer",
    "DoRALinear": "lora_ft.lora.dora",
    "lora_scaling": "lora_ft.lora.scaling",
}
__all__ = ["INITS", "DoRALinear", "LoRALinear", "lora_scaling"]  # = _LAZY's keys

if TYPE_CHECKING:
    from lora_ft.lora.dora import DoRALinear
    from lora_ft.lora.layer import INITS, LoRALinear
    from lora_ft.lora.scaling import lora_scaling


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_ft.lora' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
