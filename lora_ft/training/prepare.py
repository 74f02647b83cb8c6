"""Everything a run builds before its first step: data loaded and tokenized, the model loaded and built
for its method, each input checked before anything is written.

``prepare`` is the one entry point (``train`` calls it, and benchmarks that time a step without a run
directory); it raises ``LoraFtError`` on any bad input, so a refused run leaves nothing behind.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from transformers import set_seed

from lora_ft.config import RunConfig
from lora_ft.data.loading import LoadedData, load_data
from lora_ft.data.tokenization import tokenize_data
from lora_ft.errors import LoraFtError
from lora_ft.training.arguments import check_metric_for_best
from lora_ft.training.head_prior import init_bias_to_prior
from lora_ft.training.modeling import (
    BuildReport,
    LoadedModel,
    build_for_method,
    check_max_length,
    load_model,
    quiet_transformers,
)


@dataclass
class Prepared:
    """Everything a run needs before the first step, built and checked before anything is written."""

    cfg: RunConfig
    data: LoadedData
    loaded: LoadedModel
    build: BuildReport
    tokenized: Any  # datasets.DatasetDict


def prepare(cfg: RunConfig, method: str | None = None) -> Prepared:
    """Load data and model, build the method, tokenize. Raises LoraFtError on any bad input."""
    method = method or cfg.train.method
    quiet_transformers()
    _set_threads(cfg.train.threads)
    data = load_data(cfg.data)
    if "validation" not in data.splits:
        raise LoraFtError(f"data {data.source} has no validation split; add one (validation.* file)")
    check_metric_for_best(cfg.train, data.task)
    # Seed before the model is built: the classifier head's and LoRA A's initial values depend on it.
    set_seed(cfg.train.seed)
    loaded = load_model(cfg.model, data.task)
    check_max_length(loaded, cfg.data.max_length)
    if "train" in data.splits:
        init_bias_to_prior(loaded.model, data.task, data.splits["train"]["label"], loaded.newly_initialized)
    build = build_for_method(loaded, cfg, method)
    tokenized = tokenize_data(data, loaded.tokenizer, cfg.data.max_length)
    # Evaluation batches are padded to their longest sentence; sorted by length they pad ~2x less.
    # Accuracy, F1 and mean loss do not depend on the order.
    with warnings.catch_warnings():
        # datasets' sort hands pyarrow 25 a deprecated option: a FutureWarning on every train's stderr.
        warnings.filterwarnings("ignore", "Specifying null_placement", FutureWarning)
        for split in tokenized:
            if split != "train":  # validation, test and a preset's extra evaluation splits
                tokenized[split] = tokenized[split].sort("length")
    return Prepared(cfg=cfg, data=data, loaded=loaded, build=build, tokenized=tokenized)


def _set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``, refusing more threads than this machine has CPUs."""
    if not threads:
        return
    # Checked here, not in the config: a run's saved config must still load on a smaller machine.
    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise LoraFtError(
            f"train.threads={threads} is more than this machine's {cpus} CPUs; lower it, "
            "or leave it null for one thread per physical core"
        )
    torch.set_num_threads(threads)
