"""lora-ft: LoRA fine-tuning of Hugging Face models with our own LoRA layer.

The public API is imported lazily (PEP 562): ``import lora_ft`` loads neither torch nor transformers;
the first touch of a name below imports the module that defines it. The layers, bottom to top, are
the base modules (``errors``, ``fsutil``, ``outputs``, ``finite``, ``failures``, ``fmt``, ``figures``, ``lazy``)
< ``lora`` < ``config`` < ``data`` < ``training`` < ``serving`` < ``compare`` < ``cli``
(README.md, "Layout"; docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lora_ft.errors import LoraFtError
from lora_ft.lazy import lazy_exports

__version__ = "0.1.0"

# name -> the module that defines it. merge/unmerge and the disabled switch let one wrapped model serve
# both the base and the adapted outputs.
_LAZY = {
    "LoRALinear": "lora_ft.lora.layer",
    "DoRALinear": "lora_ft.lora.dora",
    "lora_scaling": "lora_ft.lora.scaling",
    "inject_lora": "lora_ft.lora.inject",
    "merge_and_unload": "lora_ft.lora.inject",
    "merge_lora": "lora_ft.lora.inject",
    "set_lora_disabled": "lora_ft.lora.inject",
    "unmerge_lora": "lora_ft.lora.inject",
}

__all__ = [  # LoraFtError, __version__ and _LAZY's keys
    "DoRALinear",
    "LoRALinear",
    "LoraFtError",
    "__version__",
    "inject_lora",
    "lora_scaling",
    "merge_and_unload",
    "merge_lora",
    "set_lora_disabled",
    "unmerge_lora",
]

if TYPE_CHECKING:
    from lora_ft.lora.dora import DoRALinear
    from lora_ft.lora.inject import inject_lora, merge_and_unload, merge_lora, set_lora_disabled, unmerge_lora
    from lora_ft.lora.layer import LoRALinear
    from lora_ft.lora.scaling import lora_scaling


__getattr__, __dir__ = lazy_exports("lora_ft", _LAZY, globals())
