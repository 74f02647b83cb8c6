"""What the ranks of a multi-process run (``torchrun``, ``accelerate launch``) agree on, and who writes.

The launcher starts the same command in every process; the Trainer sets up ``torch.distributed`` when
``TrainingArguments`` is built. Until then each rank runs on its own, so whatever a rank derives for
itself (a time stamp, a process id) may differ from rank to rank; these helpers settle such values.
Outside a process group every helper is a no-op, so single-process code paths stay the same.
"""

from __future__ import annotations

import gc
import hashlib
import os
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from lora_ft.errors import LoraFtError

T = TypeVar("T")


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``); 1 for a plain ``lora-ft`` run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True on global rank 0, and in a single-process run."""
    if _in_group():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def from_main(value: T) -> T:
    """``value`` as the main process has it (a picklable object), on every rank."""
    if not _in_group():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seeded_fingerprint(model: nn.Module, random_modules: list[str]) -> str:
    """sha256 over the names and bytes of the parameters drawn from the seed: every LoRA A and B, and
    the modules the checkpoint lacked (a new classifier head). Pretrained weights come from the files
    and are left out, so this stays cheap for full fine-tuning too.
    """
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        is_lora = name.endswith((".lora_A", ".lora_B"))
        if is_lora or any(name == m or name.startswith(m + ".") for m in random_modules):
            h.update(name.encode("utf-8"))
            h.update(param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_same_on_all_ranks(fingerprint: str) -> None:
    """Raise on every rank if the ranks built different initial weights.

    DDP would silently overwrite the other ranks' weights with rank 0's at wrap time, but FSDP without
    ``sync_module_states`` shards each rank's own copy and would train a mixture; a seed that varies by
    rank is a bug to report, not to paper over.
    """
    if not _in_group():
        return
    seen: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, fingerprint)
    if len(set(seen)) > 1:
        differing = [rank for rank, f in enumerate(seen) if f != seen[0]]
        raise LoraFtError(
            f"ranks {differing} built different initial LoRA/head weights from rank 0; every rank must use "
            "the same train.seed and the same model files (do not derive the seed from the rank)"
        )


def shutdown() -> None:
    """Leave the process group the Trainer joined, if any, and stop its threads while Python is whole.

    ``destroy_process_group`` only drops the registry's reference: the DDP wrapper's reducer holds the
    group too, and the finished Trainer sits in reference cycles (its callbacks point back at it), so
    the group and its gloo threads lived on into interpreter teardown. There they were destroyed in
    whatever order finalisation reached them, and now and then that aborted a finished rank ("terminate
    called without an active exception", exit -6), failing the whole torchrun launch. Collecting the
    cycles first leaves the registry's reference the last one, so the group's threads are joined here.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
