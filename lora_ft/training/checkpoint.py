"""Checkpoint directories inside a run: their files, their integrity, publishing and rotating them.

A checkpoint is written under a temporary name, fsynced, and renamed to ``checkpoint-N``
(``publish_checkpoint``), so a ``checkpoint-N`` directory is complete by construction; old ones are
renamed away before deletion (``remove_checkpoint``) and ``tidy_checkpoints`` undoes what a kill in
either left. It holds the trainable tensors only (``trainable.safetensors``: the adapter and the head,
about 300 KB for MiniLM at r=8 instead of 91 MB), the Trainer's optimizer, scheduler, RNG and state,
and ``resume.json`` (written by :mod:`lora_ft.training.trainer`, which also writes the rest).

The Trainer would quietly restart the optimizer, the warmup or the RNG when their files are
missing: a resume starts from the newest checkpoint that holds every file intact (``damage``,
``resumable``). Nothing here imports the Trainer, so the run directory and the commands that read
one can ask about checkpoints without loading it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lora_ft.errors import LoraFtError, first_line
from lora_ft.finite import first_nonfinite
from lora_ft.fsutil import move_into_place

log = logging.getLogger("lora_ft")

TRAINABLE_NAME = "trainable.safetensors"
RESUME_NAME = "resume.json"  # written last: its presence marks a checkpoint this module wrote
TRAINER_STATE_NAME = "trainer_state.json"
# The Trainer's own files, each needed to continue exactly (FSDP/DeepSpeed keep their optimizer apart).
OPTIMIZER_NAME, SCHEDULER_NAME = "optimizer.pt", "scheduler.pt"
_STEP = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


def checkpoint_step(path: Path) -> int | None:
    match = _STEP.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves, so a rename publishes data, not holes."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def install(tmp: Path, final: Path) -> None:
    """Rename the complete directory ``tmp`` to ``final``; an existing ``final`` is replaced.

    Between the two renames ``final`` exists only as ``.<final>.old``; ``tidy_checkpoints`` puts it back.
    """
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        move_into_place(final, old)
    move_into_place(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def publish_checkpoint(tmp: Path, final: Path) -> None:
    """Flush the finished checkpoint ``tmp`` to disk, then ``install`` it as ``final``."""
    fsync_tree(tmp)
    install(tmp, final)


def complete_checkpoints(directory: Path) -> list[Path]:
    """The ``checkpoint-N`` directories under ``directory``, oldest first (by step, not mtime)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def last_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint this module wrote completely, or None."""
    for path in reversed(complete_checkpoints(directory)):
        if (path / RESUME_NAME).is_file():
            return path
        log.warning("ignoring %s: it has no %s (not written by lora-ft)", path, RESUME_NAME)
    return None


def _rng_names(world_size: int) -> list[str]:
    return [f"rng_state_{rank}.pth" for rank in range(world_size)] if world_size > 1 else ["rng_state.pth"]


def damage(path: Path, world_size: int = 1) -> str | None:
    """What keeps checkpoint ``path`` from resuming a ``world_size``-process run exactly, or None.

    Reads the small files and the trainable tensors whole (non-finite weights are damage too) and
    checks the structure of the large ones (the CRCs of torch.save's zip entries), so a truncated file
    is found here rather than half-way through loading, or never, when the Trainer skips a missing one.
    """
    step = checkpoint_step(path)
    for name, key in ((RESUME_NAME, "step"), (TRAINER_STATE_NAME, "global_step")):
        try:
            record = json.loads((path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return f"{name} is unreadable"
        if not isinstance(record, dict) or record.get(key) != step:
            return f"{name} is not of step {step}"
    weights = path / TRAINABLE_NAME
    sharded = not weights.exists() and any(
        p.name.startswith(("model", "pytorch_model", "global_step")) for p in path.iterdir()
    )
    needed = _rng_names(world_size) if sharded else [OPTIMIZER_NAME, SCHEDULER_NAME, *_rng_names(world_size)]
    if not sharded:
        try:
            with safe_open(str(weights), "pt") as f:
                bad = first_nonfinite((key, f.get_tensor(key)) for key in f.keys())
        except FileNotFoundError:
            return f"{TRAINABLE_NAME} is missing"
        except (SafetensorError, OSError) as exc:
            return f"{TRAINABLE_NAME} is unreadable: {first_line(exc)}"
        if bad is not None:  # saved by a lora-ft that checkpointed a diverged run: it would train on NaN
            return f"{TRAINABLE_NAME} is not finite: {bad}"
    for name in needed:
        try:
            with zipfile.ZipFile(path / name) as archive:
                bad = archive.testzip()
        except FileNotFoundError:
            return f"{name} is missing"
        except (zipfile.BadZipFile, OSError, EOFError):
            bad = name
        if bad is not None:
            return f"{name} is unreadable"
    return None


def resumable(directory: Path, world_size: int = 1) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint in ``directory`` (or None), and the damaged ones newer than it with
    what is wrong in each, newest first."""
    damaged: list[tuple[Path, str]] = []
    for path in reversed(complete_checkpoints(directory)):
        if not (path / RESUME_NAME).is_file():
            log.warning("ignoring %s: it has no %s (not written by lora-ft)", path, RESUME_NAME)
            continue
        found = damage(path, world_size)
        if found is None:
            return path, damaged
        damaged.append((path, found))
    return None, damaged


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint; a kill mid-delete leaves ``.checkpoint-N.deleting``, never half a checkpoint."""
    doomed = path.with_name(f".{path.name}.deleting")
    move_into_place(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def tidy_checkpoints(directory: Path) -> None:
    """Undo what a kill mid-save or mid-rotation left: restore a replaced checkpoint, drop temporaries."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if not path.name.startswith("."):
            continue
        if path.name.endswith(".old"):
            final = directory / path.name[1:-4]
            if not final.exists():
                move_into_place(path, final)
                continue
        shutil.rmtree(path, ignore_errors=True)


def rotate(directory: Path, keep: int, protect: str | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints (never ``protect``, the best one if tracked)."""
    for path in complete_checkpoints(directory)[:-keep]:
        if protect is not None and path.resolve() == Path(protect).resolve():
            continue
        remove_checkpoint(path)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Copy every trainable tensor of ``model`` from ``path``; key sets and shapes must match exactly.

    Raises:
        LoraFtError: unreadable file, a missing or unexpected tensor, or a shape mismatch.
    """
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise LoraFtError(
            f"checkpoint {path.parent} is unreadable ({exc}); resume from another one"
        ) from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise LoraFtError(
            f"checkpoint {path.parent} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise LoraFtError(
                    f"checkpoint {path.parent}: {name} has shape {tuple(saved[name].shape)}, "
                    f"the model's is {tuple(p.shape)}"
                )
            p.copy_(saved[name])
