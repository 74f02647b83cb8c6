"""lora-ft: LoRA fine-tuning of Hugging Face sequence classifiers with our own LoRA layer."""

from lora_ft.errors import LoraFtError
from lora_ft.lora import LoRALinear

__version__ = "0.1.0"
__all__ = ["LoRALinear", "LoraFtError", "__version__"]
