"""Mixed precision and activation checkpointing for a model built for one method.

With ``train.precision=bf16|fp16`` the Trainer autocasts the forward pass; ``auto`` is bf16 where the
hardware multiplies bf16 natively and fp32 elsewhere. For LoRA the frozen base
weights are stored in that low dtype too (half their memory), while everything that trains (LoRA A/B,
the head) stays float32, so its gradients and AdamW state are float32. Mixed precision needs exactly
that: the fp16 GradScaler refuses fp16 gradients ("Attempting to unscale FP16 gradients"), and bf16
master weights lose updates smaller than 1/256 of the weight.

Only LoRA casts the base: its frozen weights never leave the process (the adapter is saved on its own),
whereas ``full`` and ``head`` save the whole model, which must not come out rounded to bf16.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lora_ft.errors import LoraFtError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CPUINFO = Path("/proc/cpuinfo")


def _cpu_flags() -> set[str]:
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {
        f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()
    }


def native_bf16() -> bool:
    """Whether this machine multiplies bf16 in hardware: a bf16-capable CUDA GPU, or an x86 CPU with
    AVX512-BF16 or AMX (elsewhere bf16 is emulated on the CPU, and slower than fp32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where ``native_bf16()``, else ``fp32``; any other value unchanged.

    On an AVX512-BF16 CPU a LoRA step takes 0.58x the time in bf16, at the same accuracy (BENCHMARKS.md).
    """
    if precision != "auto":
        return precision
    return "bf16" if native_bf16() else "fp32"


def check_supported(precision: str) -> None:
    """Raise LoraFtError when this machine cannot train in ``precision``."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise LoraFtError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise LoraFtError(
            "train.precision=bf16 needs an Ampere or newer GPU (this one lacks bf16); use fp16 or fp32"
        )


def set_dtypes(model: nn.Module, frozen_dtype: torch.dtype) -> None:
    """Trainable floating-point parameters to float32, frozen ones to ``frozen_dtype``, in place.

    Trainable ones are upcast whatever dtype the checkpoint was saved in (transformers 5 loads a bf16
    checkpoint as bf16), so their gradients and optimizer state are float32 too.
    """
    for param in model.parameters():
        if param.is_floating_point():
            dtype = torch.float32 if param.requires_grad else frozen_dtype
            if param.dtype != dtype:
                param.data = param.data.to(dtype)


def prepare_model(model: nn.Module, precision: str, method: str, checkpointing: bool) -> None:
    """Set ``model`` up for ``precision`` and activation checkpointing, in place: frozen weights in the
    low dtype for LoRA (float32 otherwise), trainable ones in float32.

    Raises:
        LoraFtError: ``precision`` is not available on this machine.
    """
    precision = resolve_precision(precision)
    check_supported(precision)
    set_dtypes(model, DTYPES[precision] if method == "lora" else torch.float32)
    if checkpointing and method == "lora" and hasattr(model, "enable_input_require_grads"):
        # Reentrant checkpointing backpropagates into a block only if one of its inputs needs a gradient;
        # with frozen embeddings none does, and the LoRA weights inside would get no gradient at all.
        # transformers 5 adds this hook for input_ids models itself, 4.x only for PEFT models.
        model.enable_input_require_grads()
