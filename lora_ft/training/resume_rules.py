"""What a resume may change and what it may not: which settings differ between a run's saved config
and the resume's (``RESUMABLE_CHANGES`` are the ones allowed), and which data files' bytes do.

``RunDir.check_resume`` and ``RunDir.changed_data`` turn these answers into the errors a refused
resume gives; nothing here reads or writes the run directory.
"""

from __future__ import annotations

import os
from typing import Any

from lora_ft.config import TRACKING_KEYS, RunConfig
from lora_ft.data.assets import with_absolute_paths

# What a resume may change: the budget, and how often to log, evaluate and save. Anything else
# (model, adapter, data, optimiser, seed, batch) would continue the checkpoint as another experiment.
# model.trust_remote_code is a permission, granted by each command line anew, never by the saved config.
# Where the run is reported (TRACKING_KEYS) does not change what it trains.
RESUMABLE_CHANGES = TRACKING_KEYS | frozenset(
    {
        "model.trust_remote_code",
        "train.epochs",
        "train.max_steps",
        "train.logging_steps",
        "train.eval_strategy",
        "train.eval_steps",
        "train.eval_batch_size",
        "train.save_strategy",
        "train.save_steps",
        "train.save_total_limit",
        "train.threads",
        "data.max_eval_samples",
    }
)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 1e-3}`` for ``{"train": {"lr": 1e-3}}``: nested mappings to dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every setting that differs, local paths compared absolute."""
    a, b = flatten(with_absolute_paths(old).to_dict()), flatten(with_absolute_paths(new).to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def refused_changes(saved: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The ``config_changes`` from ``saved`` to ``new`` that a resume may not make."""
    return {k: v for k, v in config_changes(saved, new).items() if k not in RESUMABLE_CHANGES}


def data_change(saved: Any, fingerprint: dict[str, str]) -> str | None:
    """What differs between the data fingerprint a run started on (``saved``) and ``fingerprint``,
    as ``"data file X changed since ..."``; None if nothing did, or the run recorded no fingerprint."""
    if not isinstance(saved, dict):
        return None  # a run from a lora-ft that did not record its data
    for name in sorted(set(saved) | set(fingerprint)):
        old, new = saved.get(name), fingerprint.get(name)
        if old == new:
            continue
        if old is None:
            what = "was not part of the data when the run started"
        elif new is None:
            what = "is no longer part of the data"
        else:
            what = f"changed since the run started (sha256 {str(old)[:12]}... then, {new[:12]}... now)"
        kind = "data file" if os.path.isabs(name) else "data"
        return f"{kind} {name} {what}"
    return None
