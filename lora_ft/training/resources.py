"""Process memory accounting: current and peak RSS (and CUDA peaks), with a resettable peak.

Linux keeps the process's peak RSS as VmHWM and lets a process reset it by writing "5" to
/proc/self/clear_refs, so "peak during training" can be read exactly instead of sampled.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Resident set size now, in MiB."""
    kb = _status_kb("VmRSS")
    if kb is None:  # not Linux: fall back to the lifetime peak, the best the platform offers
        return peak_rss_mb()
    return kb / 1024


def peak_rss_mb() -> float:
    """Peak RSS since start or since the last ``reset_peak_rss()``, in MiB."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Reset the peak-RSS counter to the current RSS; False where the platform cannot."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def cuda_peak_mb() -> float | None:
    """Peak CUDA memory allocated by tensors since the last reset, in MiB; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / (1024 * 1024)
