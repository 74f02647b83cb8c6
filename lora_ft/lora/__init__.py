"""The LoRA layers, pure torch: ``LoRALinear`` (``layer``), its fused CPU update (``fused``) and DoRA
(``dora``). ``lora_scaling`` is the one home of the ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``) factor."""

from lora_ft.lora.dora import DoRALinear
from lora_ft.lora.layer import INITS, LoRALinear, lora_scaling

__all__ = ["INITS", "DoRALinear", "LoRALinear", "lora_scaling"]
