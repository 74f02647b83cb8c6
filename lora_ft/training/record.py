"""What a run records about itself: the library versions its config.yaml saves, and the metrics.json
of a finished run (its final validation and test metrics, its cost in time and memory, and the
settings that produced them).
"""

from __future__ import annotations

import platform
from typing import Any

import datasets
import torch
import transformers
from transformers import EarlyStoppingCallback

from lora_ft import __version__
from lora_ft.config import DATA_FINGERPRINT, TASK_RECORD, RunConfig
from lora_ft.data.metrics import f1_average, label_counts, scalar_keys
from lora_ft.data.sources import SPLITS
from lora_ft.data.task import Task
from lora_ft.training.callbacks import MemoryCallback
from lora_ft.training.checkpoint import checkpoint_step
from lora_ft.training.inference import inference_speed
from lora_ft.training.prepare import Prepared
from lora_ft.training.resources import peak_rss_mb


def library_versions() -> dict[str, str]:
    """The versions of lora-ft, Python and the libraries that decide a run's numbers."""
    return {
        "lora_ft": __version__,
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def _eval_keys(task: Task) -> tuple[str, ...]:
    """What a split's entry in metrics.json holds: the task's metrics (data/metrics.py) and the loss."""
    return (*scalar_keys(task), "loss")


def _evaluate(trainer, dataset, prefix: str, task: Task) -> dict[str, float]:
    raw = trainer.evaluate(dataset, metric_key_prefix=prefix)
    return {k: float(raw[f"{prefix}_{k}"]) for k in _eval_keys(task) if f"{prefix}_{k}" in raw}


def _final_validation(trainer, step: int, task: Task) -> dict[str, float] | None:
    """The validation metrics the Trainer already computed at ``step``: the last one (the end of the
    last epoch), or the best checkpoint's, whose weights the model holds after training."""
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and "eval_loss" in entry:
            return {k: float(entry[f"eval_{k}"]) for k in _eval_keys(task) if f"eval_{k}" in entry}
    return None


def evaluation_rows(log_history: list[dict[str, Any]], metric: str = "accuracy") -> list[dict[str, Any]]:
    """One row per periodic evaluation: ``step``, ``train_loss`` (the last training loss logged at or
    before it; None before the first), ``validation_loss``, and ``metric`` (the task's primary metric,
    under its own name; None where an evaluation lacks it)."""
    rows, train_loss = [], None
    for entry in log_history:
        if "loss" in entry:
            train_loss = float(entry["loss"])
        if "eval_loss" in entry:
            value = entry.get(f"eval_{metric}")
            rows.append(
                {
                    "step": int(entry["step"]),
                    "train_loss": train_loss,
                    "validation_loss": float(entry["eval_loss"]),
                    metric: None if value is None else float(value),
                }
            )
    return rows


def run_metrics(
    p: Prepared, cfg: RunConfig, method: str, trainer, result, memory: MemoryCallback
) -> dict[str, Any]:
    """metrics.json of the run ``trainer`` has just trained (``result`` is what ``train()`` returned)."""
    best = _best(trainer)
    kept = trainer.state.global_step if best["best_step"] is None else best["best_step"]
    # Evaluating the same weights on the same split twice would cost a whole validation pass.
    task = p.data.task
    validation = _final_validation(trainer, kept, task) or _evaluate(
        trainer, p.tokenized["validation"], "validation", task
    )
    test = _evaluate(trainer, p.tokenized["test"], "test", task) if "test" in p.tokenized else None
    # A preset's extra evaluation splits (MNLI's validation_mismatched), each under its own name.
    extra = {s: _evaluate(trainer, ds, s, task) for s, ds in p.tokenized.items() if s not in SPLITS}
    tm, t = result.metrics, cfg.train
    metrics: dict[str, Any] = {
        "method": method,
        "model": cfg.model.name,
        "data": p.data.source,
        DATA_FINGERPRINT: p.data.fingerprint,
        TASK_RECORD: task.to_dict(),
        "validation": validation,
        "test": test,
        **extra,
        "trainable_params": p.build.trainable_params,
        "total_params": p.build.total_params,
        "trainable_percent": 100.0 * p.build.trainable_fraction,
        "train_seconds": float(tm.get("train_runtime", 0.0)),
        "train_samples_per_second": float(tm.get("train_samples_per_second", 0.0)),
        "train_loss": float(tm.get("train_loss", float("nan"))),
        **inference_speed(trainer, p.tokenized["validation"]),
        "evaluations": evaluation_rows(trainer.state.log_history, task.primary_metric),
        "train_samples": len(p.tokenized["train"]),
        "epochs": float(t.epochs),
        "global_steps": int(trainer.state.global_step),
        **best,
        "resumed_from_steps": (trainer.resume_record or {}).get("resumed_from", []),
        "learning_rate": t.lr_for(method),
        "batch_size": t.batch_size * t.gradient_accumulation_steps * max(1, trainer.args.world_size),
        "per_device_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "world_size": trainer.args.world_size,
        "precision": t.precision,
        "seed": t.seed,
        "peak_memory_mb": peak_rss_mb() if memory.peak_mb is None else max(memory.peak_mb, peak_rss_mb()),
        "train_memory_mb": memory.train_memory_mb,
        "rss_before_train_mb": memory.before_mb,
        "label_names": p.data.label_names,
        "head": p.build.head,
    }
    if task.is_single_label:  # F1's averaging, and the validation counts: compare's plot draws their majority
        metrics["f1_average"] = f1_average(task.num_labels)
        metrics["validation_label_counts"] = label_counts(
            p.tokenized["validation"]["labels"], task.num_labels
        )
    if method == "lora":
        metrics["lora"] = _lora_settings(cfg, p.build.targets)
    if memory.cuda_peak_mb is not None:
        metrics["cuda_peak_memory_mb"] = memory.cuda_peak_mb
    return metrics


def _best(trainer) -> dict[str, Any]:
    """The checkpoint train.load_best_model kept (its step and metric_for_best), and whether early
    stopping ended the run before its budget."""
    state, kept = trainer.state, trainer.loaded_best
    # Taken out: it would warn at the test evaluation after training, which has no eval_ metric to watch.
    stopper = trainer.pop_callback(EarlyStoppingCallback)
    return {
        "best_step": checkpoint_step(kept) if kept is not None else None,
        "best_metric": float(state.best_metric) if kept is not None else None,
        "stopped_early": stopper is not None
        and state.global_step < state.max_steps
        and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience,
    }


def _lora_settings(cfg: RunConfig, targets: list[str]) -> dict[str, Any]:
    lora = cfg.lora
    return {
        "r": lora.r,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "rslora": lora.rslora,
        "use_dora": lora.use_dora,
        "init": lora.init,
        "init_std": lora.init_std,
        "rank_pattern": lora.rank_pattern,
        "alpha_pattern": lora.alpha_pattern,
        "targets": targets,
    }
