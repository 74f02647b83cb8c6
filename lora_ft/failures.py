"""Resource failures as one-line errors that name the setting to change: memory and disk.

A batch that does not fit surfaces as ``torch.OutOfMemoryError`` on a GPU but as a plain
``RuntimeError`` from the CPU allocator; a full disk (or a file-size limit) as ``OSError`` ENOSPC /
EFBIG from Python, a ``RuntimeError`` from ``torch.save``'s zip writer, or a ``SafetensorError``.
"""

from __future__ import annotations

import contextlib
import errno
import traceback
from collections.abc import Iterator

import torch

from lora_ft.errors import LoraFtError, first_line

_CPU_OOM = "DefaultCPUAllocator: can't allocate memory"
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# torch.save reports a failed write as a RuntimeError from its zip writer, safetensors as its own error.
_DISK_FULL_TEXT = ("No space left on device", "File too large", "Disk quota exceeded", "unexpected pos")


def _is_disk_full_one(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, (OSError, RuntimeError)) or type(exc).__name__ == "SafetensorError":
        return any(text in str(exc) for text in _DISK_FULL_TEXT)
    return False


def _disk_full_cause(exc: BaseException) -> BaseException | None:
    """``exc`` or the error it was raised from that says the disk is full (datasets wraps its writer's)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if _is_disk_full_one(exc):
            return exc
        seen.add(id(exc))
        # Python's own rule for what a traceback shows: ``raise ... from None`` ends the chain.
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    return _disk_full_cause(exc) is not None


def disk_full_error(exc: BaseException, target: object, fix: str) -> LoraFtError:
    """The one line for a full disk (or a file-size limit) met while writing ``target``, ending in ``fix``."""
    cause = _disk_full_cause(exc) or exc
    target = getattr(cause, "filename", None) or target
    first = first_line(cause, type(cause).__name__)
    return LoraFtError(f"disk full or file too large while writing {target} ({first}); {fix}")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError on GPUs, a plain RuntimeError from the CPU allocator, Python's MemoryError."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and _CPU_OOM in str(exc)
    )


@contextlib.contextmanager
def inference_memory_hint(batch_size: int) -> Iterator[None]:
    """``predict``/``eval``: a batch that does not fit names ``--batch-size``, not an allocator trace."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise LoraFtError(
            f"out of memory while classifying at --batch-size {batch_size}; lower --batch-size "
            f"(e.g. --batch-size {max(1, batch_size // 4)})"
        ) from None


@contextlib.contextmanager
def memory_hint(batch_size: int, eval_batch_size: int, max_length: int) -> Iterator[None]:
    """Report a batch that does not fit with the settings to lower (``train.*``, ``data.max_length``), not an allocator trace."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        if any(frame.name == "evaluation_loop" for frame in traceback.extract_tb(exc.__traceback__)):
            raise LoraFtError(
                f"out of memory while evaluating at train.eval_batch_size={eval_batch_size}, "
                f"data.max_length={max_length}; lower one of them"
            ) from None
        raise LoraFtError(
            f"out of memory at train.batch_size={batch_size}, data.max_length={max_length}; "
            "lower one of them (or raise train.gradient_accumulation_steps to keep the effective batch)"
        ) from None
