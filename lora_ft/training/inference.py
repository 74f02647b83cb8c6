"""Inference speed of a trained model: evaluation samples/s, and for LoRA the same with the updates
merged into the base weights (what ``lora-ft merge`` ships), measured the same way on the same batches.

Both are timed over the first ``INFERENCE_SAMPLES`` rows of the validation split through the Trainer's
own evaluation loader (its batch size, collator and device), forward passes only, after one warm-up
batch: the periodic evaluations' ``eval_samples_per_second`` also count metric computation and are
not taken for LoRA merged, so they would not compare. The merged copy is built with
``merge_and_unload`` on a deep copy, so the trained model's weights are never touched.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from lora_ft.lora.inject import lora_layers, merge_and_unload

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
    if lora_layers(model):
        merged = _samples_per_second(merge_and_unload(copy.deepcopy(model)), batches, trainer.args.device)
    out["merged_inference_samples_per_second"] = merged
    return out
