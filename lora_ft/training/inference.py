"""Inference speed of a trained model: evaluation samples/s, and for LoRA the same with the updates
merged into the base weights (what ``lora-ft merge`` ships), measured the same way on the same batches.

Both are timed over the first ``INFERENCE_SAMPLES`` rows of the validation split through the Trainer's
own evaluation loader (its batch size, collator and device), forward passes only, after one warm-up
batch: the periodic evaluations' ``eval_samples_per_second`` also count metric computation and are
not taken for LoRA merged, so they would not compare.

Merged, a layer's weight ``W + ΔW`` has ``W``'s shape and the layer computes ``base(x)`` alone, so the
merged model's speed is measured as the model's with every update switched off (``disabled``): the
same matmuls, without merging (which would round the base weights) or a merged copy (which would
double the memory of a large model at the end of its run).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from lora_ft.lora.inject import lora_layers, set_lora_disabled

INFERENCE_SAMPLES = 512


def _samples_per_second(
    model: nn.Module, batches: list[dict[str, Any]], device: torch.device
) -> float | None:
    model.eval()
    with torch.inference_mode():
        model(**batches[0])  # warm-up: first-call allocations and kernel selection are not inference
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    n = sum(len(batch["input_ids"]) for batch in batches)
    return n / seconds if seconds > 0 else None


def inference_speed(trainer, dataset) -> dict[str, float | None]:
    """``inference_samples_per_second`` and, for a model with LoRA layers, ``merged_...`` (else None)."""
    batches, n = [], 0
    for batch in trainer.get_eval_dataloader(dataset):
        inputs = {k: v.to(trainer.args.device) for k, v in batch.items() if k != "labels"}
        batches.append(inputs)
        n += len(inputs["input_ids"])
        if n >= INFERENCE_SAMPLES:
            break
    model = trainer.model
    out = {"inference_samples_per_second": _samples_per_second(model, batches, trainer.args.device)}
    merged = None
    if lora_layers(model):  # after training no update is switched off, so switching back is the state
        set_lora_disabled(model, True)
        try:
            merged = _samples_per_second(model, batches, trainer.args.device)
        finally:
            set_lora_disabled(model, False)
    out["merged_inference_samples_per_second"] = merged
    return out
