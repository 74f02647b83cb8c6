"""The run directory's layout (DESIGN.md, "Run directory"): the one home of its file names.

``train`` writes these names (``rundir``), ``serving`` and ``compare`` read them; nothing else spells
``"config.yaml"`` and its siblings.
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"  # the resolved config, plus library versions and the data fingerprint
METRICS_FILE = "metrics.json"  # final eval metrics and the run's cost
LOG_FILE = "log.jsonl"  # one line per logging step / eval
ADAPTER_DIR = "adapter"  # PEFT-format adapter (lora method)
MODEL_DIR = "model"  # full weights (full/head methods), save_pretrained format
CHECKPOINTS_DIR = "checkpoints"  # resumable Trainer checkpoints
LOCK_FILE = ".lock"  # in the in-progress directory only: held by the process training into it
