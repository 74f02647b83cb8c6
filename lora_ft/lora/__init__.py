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

from typing import TYPE_CHECKING

from lora_ft.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports("lora_ft.lora", _LAZY, globals())
