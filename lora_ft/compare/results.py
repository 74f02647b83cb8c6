"""The results of a comparison: what each run is (``RunSpec``), what it gave (``RunResult``), and the
per-method rows that ``summarize`` aggregates over seeds, with each cost relative to full fine-tuning.

The runner fills these in and hands them to the report, which draws them without needing the runner.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_ft.config import TASK_RECORD, RunConfig
from lora_ft.data.metrics import f1_average, majority_accuracy
from lora_ft.data.task import METRIC_KEYS, SINGLE_LABEL, Task
from lora_ft.lora.memory import ADAM_BYTES_PER_PARAM
from lora_ft.training.layout import ADAPTER_DIR, LOG_FILE, MODEL_DIR

MB = 2**20
# Costs compared to full fine-tuning, as ``value / full's value``.
COSTS = (
    "trainable_params",
    "train_seconds",
    "train_samples_per_second",
    "peak_memory_mb",
    "train_memory_mb",
    "optimizer_state_mb",
    "ship_mb",
)

# Names only `compare --methods` knows: a LoRA run (train.method=lora, lora's learning rate) with these
# lora.* keys set, so a variant is compared with plain LoRA under one budget.
VARIANTS: dict[str, dict[str, Any]] = {
    "dora": {"use_dora": True},
    "rslora": {"rslora": True},
    "gaussian": {"init": "gaussian"},
    "lora-all": {"targets": "all-linear"},
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of a comparison: a method, a seed and, in a rank sweep, a LoRA rank."""

    method: str
    seed: int
    rank: int | None = None

    @property
    def name(self) -> str:
        rank = f"-r{self.rank}" if self.rank is not None else ""
        return f"{self.method}{rank}-seed{self.seed}"

    @property
    def label(self) -> str:
        """The report row this run belongs to (its seeds are aggregated)."""
        return f"{self.method} r={self.rank}" if self.rank is not None else self.method


@dataclass
class RunResult:
    spec: RunSpec
    run_dir: Path
    metrics: dict[str, Any] | None  # metrics.json; None when the run failed
    error: str | None = None
    reused: bool = False
    process_seconds: float | None = None  # wall time of the worker, start-up included; None when reused
    # CPU time the worker process used (user + system); None when reused or trained without a process.
    cpu_seconds: float | None = None
    # The machine's load average (1, 5, 15 min) when the run ended: a shared machine slows every timing.
    load_average: tuple[float, float, float] | None = None

    @property
    def ok(self) -> bool:
        return self.metrics is not None


def train_method(method: str) -> str:
    """The ``train.method`` a compare method runs as: ``lora`` for a LoRA variant, else itself."""
    return "lora" if method in VARIANTS else method


def describe_variant(method: str) -> str:
    """``dora = lora with lora.use_dora=true``: what a variant's row is, for the report."""
    sets = ", ".join(f"lora.{k}={json.dumps(v)}" for k, v in VARIANTS[method].items())
    return f"{method} = lora with {sets}"


@dataclass
class Comparison:
    out: Path
    cfg: RunConfig
    specs: list[RunSpec]
    results: list[RunResult]
    rows: list[dict[str, Any]]
    command: str | None = None

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if not r.ok]


def aggregate(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MB


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def optimisation_throughput(metrics: dict[str, Any], log_lines: list[dict[str, Any]]) -> float:
    """Training samples/s over the optimisation steps alone.

    The Trainer's ``train_runtime`` includes the periodic evaluations, which cost every method the
    same forward passes and would hide the difference; their ``eval_runtime`` is taken out.
    """
    seconds = metrics["train_seconds"]
    samples = metrics["train_samples_per_second"] * seconds
    eval_seconds = sum(line.get("eval_runtime", 0.0) for line in log_lines)
    return (
        samples / (seconds - eval_seconds) if seconds > eval_seconds else metrics["train_samples_per_second"]
    )


def run_task(metrics: dict[str, Any]) -> Task:
    """The task a run's metrics.json records; single-label over its labels for a record from before tasks."""
    record = metrics.get(TASK_RECORD)
    if record is None:
        return Task.legacy(metrics.get("label_names") or ())
    return Task.from_dict(record, "metrics.json")


def shown_metric(metrics: dict[str, Any]) -> str:
    """The quality figure a comparison shows first and plots, from a run's ``metrics.json``: accuracy for
    single-label (and runs recorded before tasks), else the task's primary metric (entity F1 for tokens)."""
    task = run_task(metrics)
    return shown_for(task.problem_type, task.primary_metric)


def shown_for(problem_type: str, primary_metric: str) -> str:
    """The rule of ``shown_metric``: accuracy for single-label, whatever its primary metric (the
    comparison's plots and table lead with it), else the primary metric."""
    return "accuracy" if problem_type == SINGLE_LABEL else primary_metric


def quality_keys(task: Task) -> tuple[str, ...]:
    """The figures of each split a row aggregates: accuracy, F1 and loss for single-label (and the
    task's primary metric if it is another, e.g. CoLA's Matthews correlation); for the other problem
    types, the primary metric first, the problem type's other metrics (data/task.py), then the loss."""
    if task.is_single_label:
        keys = ("accuracy", "f1", "loss")
        return keys if task.primary_metric in keys else (*keys, task.primary_metric)
    shown = task.primary_metric
    return (shown, *(k for k in METRIC_KEYS[task.problem_type] if k != shown), "loss")


def _ship_dir(run_dir: Path) -> Path:
    return run_dir / ADAPTER_DIR if (run_dir / ADAPTER_DIR).is_dir() else run_dir / MODEL_DIR


def summarize(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per method (and rank): seeds aggregated to mean ± std, costs, ratios to full fine-tuning."""
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.spec.label, []).append(result)
    rows = [_row(label, group) for label, group in groups.items()]
    full = next((r for r in rows if r["method"] == "full" and r["status"] != "failed"), None)
    for row in rows:
        row["vs_full"] = (
            {key: _ratio(row, full, key) for key in COSTS} if full and row["status"] != "failed" else None
        )
    return rows


def _ratio(row: dict[str, Any], full: dict[str, Any], key: str) -> float | None:
    mine, theirs = _mean(row[key]), _mean(full[key])
    return mine / theirs if mine is not None and theirs else None


def _mean(value: Any) -> float | None:
    return value["mean"] if isinstance(value, dict) else value


def _row(label: str, group: list[RunResult]) -> dict[str, Any]:
    spec = group[0].spec
    done = [r for r in group if r.ok]
    row: dict[str, Any] = {
        "label": label,
        "method": spec.method,
        "rank": spec.rank,
        "status": "ok" if len(done) == len(group) else "partial" if done else "failed",
        "seeds": [r.spec.seed for r in done],
        "failed": [{"run": r.spec.name, "error": r.error} for r in group if not r.ok],
        "runs": [r.spec.name for r in group],
    }
    if not done:
        return row
    first = done[0].metrics
    logs = [read_log(r.run_dir) for r in done]
    task = run_task(first)
    row.update(
        primary_metric=task.primary_metric,
        metric=shown_metric(first),
        quality_keys=quality_keys(task),
        learning_rate=first["learning_rate"],
        lora=first.get("lora") and {k: first["lora"].get(k) for k in ("r", "alpha", "rslora", "use_dora")},
        trainable_params=first["trainable_params"],
        total_params=first["total_params"],
        trainable_percent=first["trainable_percent"],
        optimizer_state_mb=ADAM_BYTES_PER_PARAM * first["trainable_params"] / MB,
        ship_dir=_ship_dir(done[0].run_dir).name,
        ship_mb=aggregate([dir_size_mb(_ship_dir(r.run_dir)) for r in done]),
        f1_average=f1_average(len(first["label_names"]))
        if first.get("label_names") and task.is_single_label
        else None,
        # Every run of a comparison evaluates on the same split; None for a run from before lora-ft recorded it.
        majority_accuracy=majority_accuracy(first["validation_label_counts"])
        if first.get("validation_label_counts")
        else None,
    )
    for split in ("validation", "test"):
        if all(r.metrics.get(split) for r in done):
            row[split] = {k: aggregate([r.metrics[split].get(k) for r in done]) for k in row["quality_keys"]}
        else:
            row[split] = None
    for key in (
        "train_seconds",
        "peak_memory_mb",
        "train_memory_mb",
        "cuda_peak_memory_mb",
        "inference_samples_per_second",
        "merged_inference_samples_per_second",
    ):
        row[key] = aggregate([r.metrics.get(key) for r in done])
    row["train_samples_per_second"] = aggregate(
        [optimisation_throughput(r.metrics, lines) for r, lines in zip(done, logs, strict=True)]
    )
    row["trainer_samples_per_second"] = aggregate([r.metrics["train_samples_per_second"] for r in done])
    return row
