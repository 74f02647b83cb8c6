"""lora-ft: LoRA fine-tuning of Hugging Face sequence classifiers with our own LoRA layer."""

from lora_ft.errors import LoraFtError
from lora_ft.inject import merge_and_unload, merge_lora, set_lora_disabled, unmerge_lora
from lora_ft.lora import LoRALinear

__version__ = "0.1.0"
# merge/unmerge and the disabled switch let one wrapped model serve both the base and the adapted outputs.
__all__ = [
    "LoRALinear",
    "LoraFtError",
    "__version__",
    "merge_and_unload",
    "merge_lora",
    "set_lora_disabled",
    "unmerge_lora",
]
