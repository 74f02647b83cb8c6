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

# name -> the module that defines it: the public API (README.md, "Python API"; a test holds the two
# equal). merge/unmerge and the disabled switch let one wrapped model serve both the base and the
# adapted outputs.
_LAZY = {
    # the layer
    "LoRALinear": "lora_ft.lora.layer",
    "DoRALinear": "lora_ft.lora.dora",
    "lora_scaling": "lora_ft.lora.scaling",
    # into any nn.Module and out again
    "inject_lora": "lora_ft.lora.inject",
    "lora_layers": "lora_ft.lora.inject",
    "merge_lora": "lora_ft.lora.inject",
    "unmerge_lora": "lora_ft.lora.inject",
    "set_lora_disabled": "lora_ft.lora.inject",
    "merge_and_unload": "lora_ft.lora.inject",
    "lora_state_dict": "lora_ft.lora.inject",
    "load_lora_state_dict": "lora_ft.lora.inject",
    # PEFT-format adapter directories
    "save_adapter": "lora_ft.lora.saving",
    "read_adapter": "lora_ft.lora.io",
    "Adapter": "lora_ft.lora.io",
    "apply_adapter": "lora_ft.lora.apply",
    # several adapters on one base
    "AdapterSet": "lora_ft.lora.adapters",
    # the update's spectrum
    "analyse": "lora_ft.lora.analysis",
    "lora_svd": "lora_ft.lora.analysis",
    "dense_svd": "lora_ft.lora.analysis",
    "Spectrum": "lora_ft.lora.analysis",
    # what LoRA trains and ships at several ranks, from a config.json alone
    "savings": "lora_ft.lora.calculator",
    "memory_plan": "lora_ft.lora.memory",
    "load_model_skeleton": "lora_ft.training.modeling",
}

__all__ = [  # LoraFtError, __version__ and _LAZY's keys
    "Adapter",
    "AdapterSet",
    "DoRALinear",
    "LoRALinear",
    "LoraFtError",
    "Spectrum",
    "__version__",
    "analyse",
    "apply_adapter",
    "dense_svd",
    "inject_lora",
    "load_lora_state_dict",
    "load_model_skeleton",
    "lora_layers",
    "lora_scaling",
    "lora_state_dict",
    "lora_svd",
    "merge_and_unload",
    "memory_plan",
    "merge_lora",
    "read_adapter",
    "save_adapter",
    "savings",
    "set_lora_disabled",
    "unmerge_lora",
]

if TYPE_CHECKING:
    from lora_ft.lora.adapters import AdapterSet
    from lora_ft.lora.analysis import Spectrum, analyse, dense_svd, lora_svd
    from lora_ft.lora.apply import apply_adapter
    from lora_ft.lora.calculator import savings
    from lora_ft.lora.dora import DoRALinear
    from lora_ft.lora.inject import (
        inject_lora,
        load_lora_state_dict,
        lora_layers,
        lora_state_dict,
        merge_and_unload,
        merge_lora,
        set_lora_disabled,
        unmerge_lora,
    )
    from lora_ft.lora.io import Adapter, read_adapter
    from lora_ft.lora.layer import LoRALinear
    from lora_ft.lora.memory import memory_plan
    from lora_ft.lora.saving import save_adapter
    from lora_ft.lora.scaling import lora_scaling
    from lora_ft.training.modeling import load_model_skeleton


__getattr__, __dir__ = lazy_exports("lora_ft", _LAZY, globals())
