"""The run directory's layout (DESIGN.md, "Run directory"): the one home of its file names, and of the
answer to "what is this directory: a run, an adapter or a model?".

``train`` writes these names (``rundir``), ``serving`` and ``compare`` read them; nothing else spells
``"config.yaml"`` and its siblings. ``classify`` is the one place that tells a run directory, an adapter
directory (ours or PEFT's) and a plain Hugging Face model directory apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_ft.lora.io import CONFIG_NAME as ADAPTER_CONFIG

CONFIG_FILE = "config.yaml"  # the resolved config, plus library versions and the data fingerprint
METRICS_FILE = "metrics.json"  # final eval metrics and the run's cost
LOG_FILE = "log.jsonl"  # one line per logging step / eval
ADAPTER_DIR = "adapter"  # PEFT-format adapter (lora method)
MODEL_DIR = "model"  # full weights (full/head methods), save_pretrained format
CHECKPOINTS_DIR = "checkpoints"  # resumable Trainer checkpoints
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files (train.report_to: [tensorboard])
LOCK_FILE = ".lock"  # in the in-progress directory only: held by the process training into it
MODEL_CONFIG = "config.json"  # what makes a directory a Hugging Face model (transformers' CONFIG_NAME)

RUN, ADAPTER, MODEL = "run", "adapter", "model"


@dataclass(frozen=True)
class PathKind:
    """What ``classify`` found at ``path``.

    Attributes:
        kind: ``RUN`` (it holds ``config.yaml``), ``ADAPTER`` (``adapter_config.json``), ``MODEL``
            (``config.json``), or None: none of them.
        run: the run directory: ``path`` itself, or the run holding ``path`` as its ``adapter/`` or
            ``model/``; None when no run is known.
        weights: the directory to load: ``path`` itself, or a run's ``adapter/`` or ``model/``; None for
            a run that has neither (interrupted) and for a path that is none of the three.
        weights_kind: ``ADAPTER`` or ``MODEL``: what ``weights`` holds.
    """

    path: Path
    kind: str | None
    run: Path | None = None
    weights: Path | None = None
    weights_kind: str | None = None


def classify(path: Path) -> PathKind:
    """Say whether the directory ``path`` is a run, an adapter or a model directory, and what it holds.

    A run directory wins over its contents: ``config.yaml`` makes ``path`` a run, whose weights are its
    ``adapter/`` (an adapter inside) or else its ``model/`` (a model inside).
    """
    if (path / CONFIG_FILE).is_file():
        for kind, sub, marker in ((ADAPTER, ADAPTER_DIR, ADAPTER_CONFIG), (MODEL, MODEL_DIR, MODEL_CONFIG)):
            if (path / sub / marker).is_file():
                return PathKind(path, RUN, run=path, weights=path / sub, weights_kind=kind)
        return PathKind(path, RUN, run=path)
    holder = path.parent if path.name in (ADAPTER_DIR, MODEL_DIR) else None
    run = holder if holder is not None and (holder / CONFIG_FILE).is_file() else None
    for kind, marker in ((ADAPTER, ADAPTER_CONFIG), (MODEL, MODEL_CONFIG)):
        if (path / marker).is_file():
            return PathKind(path, kind, run=run, weights=path, weights_kind=kind)
    return PathKind(path, None)
