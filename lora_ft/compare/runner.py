"""Train several methods under one budget, each in its own process, and gather the results per method.

Every run is a fresh interpreter (``lora_ft.compare.worker``, started by ``process``): a process's
peak RSS only ever grows and the allocator keeps freed memory, so methods trained one after another
in one process would inherit each other's peaks. A run that crashes is a failed row; the others stay.

Layout of a compare directory::

    DIR/report.md, results.json, *.png    written by lora_ft.compare.report / lora_ft.compare.plots
    DIR/runs/<method>[-r<r>]-seed<k>/     the run directory ``lora-ft train`` writes
    DIR/runs/<name>.yaml                  the resolved config the run was given
    DIR/runs/<name>.log                   its stdout and stderr
"""

from __future__ import annotations

import copy
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

from lora_ft.compare.process import Emit, run_in_subprocess
from lora_ft.compare.report import write_report
from lora_ft.compare.results import VARIANTS, Comparison, RunResult, RunSpec, summarize, train_method
from lora_ft.config import METHODS, TRACKING_KEYS, RunConfig, config_from_dict, dump_config, read_yaml
from lora_ft.data.assets import with_absolute_paths
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import write_atomic
from lora_ft.outputs import COMPARISON, check_comparison_dir, write_marker
from lora_ft.training.layout import CONFIG_FILE, METRICS_FILE

COMPARE_METHODS = (*METHODS, *VARIANTS)

# (config file, run dir, log file, force, emit, trust_remote_code) -> None on success, else a one-line
# error. The config file is this comparison's own, but the grant to run the model's code travels beside
# it, from the command line, as it does for every other command.
Runner = Callable[[Path, Path, Path, bool, Emit, bool], "str | None"]


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


def run_config(cfg: RunConfig, spec: RunSpec, project: str | None = None) -> RunConfig:
    """``cfg`` for one run. A rank sweep keeps the config's alpha/r (the scaling, LoRA §4.1) so one
    learning rate serves every rank; with rsLoRA the scaling alpha/sqrt(r) is already rank-stable.

    The trackers see the run as ``spec.name`` (variant-seed) in the experiment ``train.project``, or
    else ``project`` (the comparison directory's name), so one comparison's runs sit together.
    """
    run = copy.deepcopy(cfg)
    run.train.method = train_method(spec.method)
    run.train.seed = spec.seed
    run.train.run_name = spec.name
    run.train.project = cfg.train.project or project
    for key, value in VARIANTS.get(spec.method, {}).items():
        setattr(run.lora, key, value)
    if spec.rank is not None:
        if not cfg.lora.rslora:
            run.lora.alpha = cfg.lora.alpha * spec.rank / cfg.lora.r
        run.lora.r = spec.rank
    return run


def _check_reusable(cfg: RunConfig, run_dir: Path) -> None:
    """A finished run is reused only if it was trained with exactly the config this comparison asks for
    (where it was reported, ``TRACKING_KEYS``, aside: a moved comparison keeps its runs)."""
    saved = config_from_dict(read_yaml(run_dir / CONFIG_FILE), trust_remote_code=cfg.model.trust_remote_code)
    saved, wanted = with_absolute_paths(saved).to_dict(), with_absolute_paths(cfg).to_dict()
    changed = [
        f"{section}.{key}: {saved[section][key]!r} -> {value!r}"
        for section, values in wanted.items()
        for key, value in values.items()
        if saved[section][key] != value and f"{section}.{key}" not in TRACKING_KEYS
    ]
    if changed:
        raise LoraFtError(
            f"{run_dir} was trained with a different config ({'; '.join(changed[:3])}); "
            "pass --force to retrain it, or choose another --out"
        )


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
    if seeds < 1:
        raise LoraFtError(f"--seeds must be >= 1, got {seeds}")
    out = Path(out)
    methods = methods or list(METHODS)
    specs = plan_runs(methods, [cfg.train.seed + i for i in range(seeds)], ranks)
    check_comparison_dir(out)
    runs = out / "runs"
    configs = {spec: run_config(cfg, spec, out.resolve().name) for spec in specs}
    reuse = {spec: not force and (runs / spec.name / METRICS_FILE).is_file() for spec in specs}
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
            metrics = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
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
    metrics_path = run_dir / METRICS_FILE
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
