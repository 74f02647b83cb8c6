"""Train several methods under one budget, each in its own process, and gather the results per method.

Every run is a fresh interpreter (``lora_ft.compare.worker``): a process's peak RSS only ever grows
and the allocator keeps freed memory, so methods trained one after another in one process would
inherit each other's peaks. A run that crashes is a failed row; the others stay.

Layout of a compare directory::

    DIR/report.md, results.json, *.png    written by lora_ft.compare.report / lora_ft.compare.plots
    DIR/runs/<method>[-r<r>]-seed<k>/     the run directory ``lora-ft train`` writes
    DIR/runs/<name>.yaml                  the resolved config the run was given
    DIR/runs/<name>.log                   its stdout and stderr
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_ft.compare.worker import Emit, run_in_subprocess
from lora_ft.config import METHODS, RunConfig, config_from_dict, dump_config, read_yaml
from lora_ft.data.assets import with_absolute_paths
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import write_atomic
from lora_ft.outputs import COMPARISON, check_comparison_dir, write_marker

# AdamW keeps two fp32 moments (exp_avg, exp_avg_sq) per trainable parameter.
ADAM_BYTES_PER_PARAM = 8
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
COMPARE_METHODS = (*METHODS, *VARIANTS)

# (config file, run dir, log file, force, emit, trust_remote_code) -> None on success, else a one-line
# error. The config file is this comparison's own, but the grant to run the model's code travels beside
# it, from the command line, as it does for every other command.
Runner = Callable[[Path, Path, Path, bool, Emit, bool], "str | None"]


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


def parse_methods(text: str) -> list[str]:
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if unknown or not methods:
        raise LoraFtError(
            f"--methods takes a comma-separated list of {', '.join(COMPARE_METHODS)}; got {text!r}"
            + (f" ({', '.join(unknown)} unknown)" if unknown else "")
        )
    return methods


def parse_ranks(text: str) -> list[int]:
    try:
        ranks = list(dict.fromkeys(int(r) for r in text.split(",") if r.strip()))
    except ValueError:
        raise LoraFtError(f"--ranks takes comma-separated integers like 1,2,4,8; got {text!r}") from None
    if not ranks or min(ranks) < 1:
        raise LoraFtError(f"--ranks must be integers >= 1, like 1,2,4,8; got {text!r}")
    return ranks


def plan_runs(methods: list[str], seeds: list[int], ranks: list[int] | None = None) -> list[RunSpec]:
    """Seed-major order, so an interrupted comparison has every method for its first seeds."""
    if ranks and "lora" not in methods:
        raise LoraFtError("--ranks sweeps the LoRA rank; add lora to --methods")
    specs = []
    for seed in seeds:
        for method in methods:
            if method == "lora" and ranks:
                specs.extend(RunSpec(method, seed, r) for r in ranks)
            else:
                specs.append(RunSpec(method, seed))
    return specs


def run_config(cfg: RunConfig, spec: RunSpec) -> RunConfig:
    """``cfg`` for one run. A rank sweep keeps the config's alpha/r (the scaling, LoRA §4.1) so one
    learning rate serves every rank; with rsLoRA the scaling alpha/sqrt(r) is already rank-stable."""
    run = copy.deepcopy(cfg)
    run.train.method = train_method(spec.method)
    run.train.seed = spec.seed
    for key, value in VARIANTS.get(spec.method, {}).items():
        setattr(run.lora, key, value)
    if spec.rank is not None:
        if not cfg.lora.rslora:
            run.lora.alpha = cfg.lora.alpha * spec.rank / cfg.lora.r
        run.lora.r = spec.rank
    return run


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
    path = run_dir / "log.jsonl"
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


def _ship_dir(run_dir: Path) -> Path:
    return run_dir / "adapter" if (run_dir / "adapter").is_dir() else run_dir / "model"


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
    row.update(
        learning_rate=first["learning_rate"],
        lora=first.get("lora") and {k: first["lora"].get(k) for k in ("r", "alpha", "rslora", "use_dora")},
        trainable_params=first["trainable_params"],
        total_params=first["total_params"],
        trainable_percent=first["trainable_percent"],
        optimizer_state_mb=ADAM_BYTES_PER_PARAM * first["trainable_params"] / MB,
        ship_dir=_ship_dir(done[0].run_dir).name,
        ship_mb=aggregate([dir_size_mb(_ship_dir(r.run_dir)) for r in done]),
    )
    for split in ("validation", "test"):
        if all(r.metrics.get(split) for r in done):
            row[split] = {
                k: aggregate([r.metrics[split][k] for r in done]) for k in ("accuracy", "f1", "loss")
            }
        else:
            row[split] = None
    for key in ("train_seconds", "peak_memory_mb", "train_memory_mb", "cuda_peak_memory_mb"):
        row[key] = aggregate([r.metrics.get(key) for r in done])
    row["train_samples_per_second"] = aggregate(
        [optimisation_throughput(r.metrics, lines) for r, lines in zip(done, logs, strict=True)]
    )
    row["trainer_samples_per_second"] = aggregate([r.metrics["train_samples_per_second"] for r in done])
    return row


def _check_reusable(cfg: RunConfig, run_dir: Path) -> None:
    """A finished run is reused only if it was trained with exactly the config this comparison asks for."""
    saved = config_from_dict(
        read_yaml(run_dir / "config.yaml"), trust_remote_code=cfg.model.trust_remote_code
    )
    saved, wanted = with_absolute_paths(saved).to_dict(), with_absolute_paths(cfg).to_dict()
    changed = [
        f"{section}.{key}: {saved[section][key]!r} -> {value!r}"
        for section, values in wanted.items()
        for key, value in values.items()
        if saved[section][key] != value
    ]
    if changed:
        raise LoraFtError(
            f"{run_dir} was trained with a different config ({'; '.join(changed[:3])}); "
            "pass --force to retrain it, or choose another --out"
        )


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


def compare(
    cfg: RunConfig,
    out: str | Path,
    *,
    methods: list[str] | None = None,
    seeds: int = 1,
    ranks: list[int] | None = None,
    force: bool = False,
    runner: Runner = run_in_subprocess,
    progress=None,
    command: str | None = None,
) -> Comparison:
    """Train every method × seed (× rank), reuse finished runs unless ``force``, write the report.

    ``progress`` (optional) receives ``run_started(spec, index, total, reused)``, ``run_event(event)``
    and ``run_finished(result)``.

    Raises:
        LoraFtError: bad arguments, ``out`` a non-empty directory that no comparison wrote (``force``
            or not), or a finished run in ``out`` trained with another config (without ``force``);
            checked before anything is trained. A run that fails is a failed row, not an error.
    """
    from lora_ft.compare.report import write_report

    if seeds < 1:
        raise LoraFtError(f"--seeds must be >= 1, got {seeds}")
    out = Path(out)
    methods = methods or list(METHODS)
    specs = plan_runs(methods, [cfg.train.seed + i for i in range(seeds)], ranks)
    check_comparison_dir(out)
    runs = out / "runs"
    configs = {spec: run_config(cfg, spec) for spec in specs}
    reuse = {spec: not force and (runs / spec.name / "metrics.json").is_file() for spec in specs}
    for spec in specs:
        if reuse[spec]:
            _check_reusable(configs[spec], runs / spec.name)
    runs.mkdir(parents=True, exist_ok=True)
    write_marker(out, COMPARISON)
    results = []
    for index, spec in enumerate(specs):
        run_dir = runs / spec.name
        if progress is not None:
            progress.run_started(spec, index, len(specs), reuse[spec])
        if reuse[spec]:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            result = RunResult(spec, run_dir, metrics, reused=True)
        else:
            config_path = runs / f"{spec.name}.yaml"
            write_atomic(config_path, dump_config(configs[spec]))
            trust = configs[spec].model.trust_remote_code
            result = _train_run(spec, config_path, run_dir, force, runner, progress, trust)
        results.append(result)
        if progress is not None:
            progress.run_finished(result)
    comparison = Comparison(out, cfg, specs, results, summarize(results), command)
    write_report(comparison)
    return comparison


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _train_run(
    spec: RunSpec,
    config_path: Path,
    run_dir: Path,
    force: bool,
    runner: Runner,
    progress,
    trust_remote_code: bool,
) -> RunResult:
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    log_path = config_path.with_suffix(".log")
    error = runner(config_path, run_dir, log_path, force, _emitter(progress), trust_remote_code)
    seconds, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu_start
    metrics_path = run_dir / "metrics.json"
    if error is None and not metrics_path.is_file():
        error = f"finished without writing {metrics_path}"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if error is None else None
    return RunResult(
        spec,
        run_dir,
        metrics,
        error,
        process_seconds=seconds,
        cpu_seconds=cpu or None,  # 0: the runner trained in this process, whose CPU time is not the run's
        load_average=os.getloadavg(),
    )


def _emitter(progress) -> Emit:
    return progress.run_event if progress is not None else lambda event: None
