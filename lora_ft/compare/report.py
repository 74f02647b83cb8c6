"""What ``lora-ft compare`` writes: ``DIR/report.md`` (the quality, cost and relative-cost tables, the
runs and the plots), ``DIR/results.json`` and the PNGs; ``tables`` also feeds the terminal (``display``)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from lora_ft import fmt
from lora_ft.compare.plots import plot_accuracy_vs_params, plot_accuracy_vs_rank, plot_curves
from lora_ft.compare.results import VARIANTS, Comparison, RunResult, describe_variant, read_log, train_method
from lora_ft.fmt import f1_heading
from lora_ft.fsutil import write_atomic

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
PLOTS = {
    "curves": "curves.png",
    "params": "accuracy_vs_params.png",
    "rank": "accuracy_vs_rank.png",
}

NOTES = [
    "**train time** is the Trainer's `train_runtime` (it includes the periodic evaluations); "
    "**samples/s** counts the optimisation steps only: samples seen / (train time − evaluation time), "
    "because the evaluations cost every method the same forward passes.",
    "**peak RSS** is the worker process's peak resident memory from the first training step to the end of "
    "the final evaluation; **train memory** is that peak minus the RSS just before the first step (what "
    "training adds on top of the loaded model and data). Each run is its own process, so peaks are not shared.",
    "**optimizer state**: AdamW keeps two fp32 moments per trainable parameter: 8 bytes × trainable params.",
    "**shipped** is the size on disk of what must be shipped: `adapter/` (LoRA: the low-rank factors and "
    "the trained head) or `model/` (full and head-only: the whole model with its tokenizer files).",
    "**relative to full fine-tuning**: each cost divided by full fine-tuning's (for samples/s, above 1 "
    "means faster; for the others, below 1 means cheaper). KB, MB, GB = 2^10, 2^20, 2^30 bytes. With several seeds, values are mean ± sample standard deviation.",
]


def fmt_stat(stat: dict[str, Any] | None, spec: str = ".4f", suffix: str = "") -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    text = f"{stat['mean']:{spec}}"
    if stat.get("std") is not None:
        text += f" ± {stat['std']:{spec}}"
    return text + suffix


def _status(row: dict[str, Any]) -> str:
    total = len(row["runs"])
    if row["status"] == "failed":
        return "FAILED"
    return f"{len(row['seeds'])}/{total} seeds" if row["status"] == "partial" or total > 1 else "ok"


def metric_heading(key: str, f1: str = "F1") -> str:
    """A metric's column heading: ``acc``, ``f1``'s own (``F1 (binary)``), else its key spelt out."""
    return {"accuracy": "acc", "f1": f1}.get(key, key.replace("_", " "))


def quality_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per split, the figures ``results.quality_keys`` gave the rows (those of the first finished row)."""
    splits = [s for s in ("validation", "test") if any(r.get(s) for r in rows)]
    finished = [r for r in rows if any(r.get(s) for s in splits)]
    keys = next((list(r[s]) for s in splits for r in finished if r.get(s)), [])
    if "f1" in keys and all(r.get("f1_average") == "macro" for r in finished):
        keys = [k for k in keys if k != "macro_f1"]  # more than two classes: F1 is macro-F1 already
    headers = ["method", "status", "learning rate"]
    short = {"validation": "val", "test": "test"}
    f1 = f1_heading(r.get("f1_average") for r in rows)
    headers += [f"{short[s]} {metric_heading(m, f1)}" for s in splits for m in keys]
    cells = []
    for row in rows:
        line = [row["label"], _status(row), f"{row['learning_rate']:.1e}" if "learning_rate" in row else "—"]
        for split in splits:
            stats = row.get(split) or {}
            line += [fmt_stat(stats.get(k)) for k in keys]
        cells.append(line)
    return headers, cells


def cost_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cuda = any((r.get("cuda_peak_memory_mb") or {}).get("n") for r in rows)
    headers = ["method", "trainable params", "% of total", "train time", "samples/s"]
    headers += ["eval samples/s", "merged eval samples/s", "peak RSS"]
    headers += ["train memory", *(["CUDA peak"] if cuda else []), "optimizer state", "shipped"]
    cells = []
    for row in rows:
        if row["status"] == "failed":
            cells.append([row["label"], *["—"] * (len(headers) - 1)])
            continue
        line = [
            row["label"],
            fmt.count(row["trainable_params"]),
            f"{row['trainable_percent']:.3g}%",
            fmt_stat(row["train_seconds"], ".1f", " s"),
            fmt_stat(row["train_samples_per_second"], ".1f"),
            fmt_stat(row.get("inference_samples_per_second"), ".1f"),
            fmt_stat(row.get("merged_inference_samples_per_second"), ".1f"),
            fmt_stat(row["peak_memory_mb"], ".0f", " MB"),
            fmt_stat(row["train_memory_mb"], ".0f", " MB"),
            *([fmt_stat(row["cuda_peak_memory_mb"], ".0f", " MB")] if cuda else []),
            fmt.size(row["optimizer_state_mb"] * 2**20, iec=False),
            # The same files for every seed: the mean is the size.
            f"{row['ship_dir']}/ {fmt.size(row['ship_mb']['mean'] * 2**20, iec=False)}",
        ]
        cells.append(line)
    return headers, cells


RATIO_HEADERS = {
    "trainable_params": "trainable params",
    "train_seconds": "train time",
    "train_samples_per_second": "samples/s",
    "peak_memory_mb": "peak RSS",
    "train_memory_mb": "train memory",
    "optimizer_state_mb": "optimizer state",
    "ship_mb": "shipped",
}


def ratio_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]] | None:
    """Each cost as a multiple of full fine-tuning's; None without a finished full fine-tuning row."""
    if not any(row["method"] == "full" and row.get("vs_full") for row in rows):
        return None
    cells = []
    for row in rows:
        ratios = row.get("vs_full") or {}
        cells.append([row["label"], *(_fmt_ratio(ratios.get(key)) for key in RATIO_HEADERS)])
    return ["method", *RATIO_HEADERS.values()], cells


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.2f}×" if ratio >= 0.01 else f"{ratio:.2g}×"


def tables(rows: list[dict[str, Any]]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """(title, (headers, cells)) of each table the report shows, terminal and Markdown alike."""
    out = [("Quality", quality_table(rows)), ("Cost", cost_table(rows))]
    ratios = ratio_table(rows)
    if ratios is not None:
        out.append(("Cost relative to full fine-tuning", ratios))
    return out


def runs_table(results: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Each run's process: how long it took, how much CPU it got, how busy the machine was."""
    headers = ["run", "status", "wall time", "CPU time", "CPU / wall", "load average at end (1 / 5 / 15 min)"]
    cells = []
    for r in results:
        status = "reused" if r.reused else "ok" if r.ok else "FAILED"
        wall = f"{r.process_seconds:.0f} s" if r.process_seconds is not None else "—"
        cpu = f"{r.cpu_seconds:.0f} s" if r.cpu_seconds is not None else "—"
        share = f"{r.cpu_seconds / r.process_seconds:.2f}" if r.cpu_seconds and r.process_seconds else "—"
        load = " / ".join(f"{x:.1f}" for x in r.load_average) if r.load_average else "—"
        cells.append([r.spec.name, status, wall, cpu, share, load])
    return headers, cells


def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    align = ["---"] + ["--:"] * (len(headers) - 1)
    return "\n".join([line(headers), "| " + " | ".join(align) + " |", *(line(c) for c in cells)])


def _cpu_name() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": load,
    }


def setup_lines(c: Comparison) -> list[str]:
    cfg = c.cfg
    first = next((r.metrics for r in c.results if r.ok), None)
    samples = f"{first['train_samples']:,}" if first else str(cfg.data.max_train_samples or "all")
    evals = (
        f"every {cfg.train.eval_steps} steps"
        if cfg.train.eval_strategy == "steps"
        else f"each {cfg.train.eval_strategy}"
    )
    methods = list(dict.fromkeys(s.method for s in c.specs))
    rates = ", ".join(f"{m} {cfg.train.lr_for(train_method(m)):.1e}" for m in methods)
    seeds = sorted({s.seed for s in c.specs})
    lines = [
        f"model `{cfg.model.name}`"
        + (f" (first {cfg.model.num_layers} layers)" if cfg.model.num_layers else "")
        + f", data `{cfg.data.name}`: {samples} training sentences, max_length {cfg.data.max_length}",
        f"the same budget for every method: {cfg.train.epochs:g} epoch(s), batch {cfg.train.batch_size}, "
        f"{cfg.train.lr_scheduler} schedule, warmup {cfg.train.warmup_ratio:g}, {cfg.train.precision}; "
        f"seeds {', '.join(map(str, seeds))}; validation {evals}",
        f"learning rate per method (`train.learning_rates`): {rates}",
    ]
    variants = [m for m in methods if m in VARIANTS]
    if variants:
        lines.append("LoRA variants: " + "; ".join(describe_variant(m) for m in variants))
    if any(s.rank is not None for s in c.specs):
        lines.append(
            f"rank sweep: LoRA alpha/r kept at {cfg.lora.scaling:g} (the config's scaling)"
            if not cfg.lora.rslora
            else f"rank sweep: rsLoRA, alpha {cfg.lora.alpha:g} at every rank"
        )
    m = machine()
    load = m["load_average"]
    lines.append(
        f"machine: {m['cpu']}, {m['cpu_count']} CPUs"
        + (
            f"; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end"
            if load
            else ""
        )
    )
    return lines


def render_markdown(c: Comparison, plots: dict[str, str]) -> str:
    methods = ", ".join(dict.fromkeys(s.label for s in c.specs))
    parts = [f"# lora-ft compare: {methods}", ""]
    if c.command:
        parts += ["```bash", c.command, "```", ""]
    parts += [f"- {line}" for line in setup_lines(c)] + [""]
    for title, table in tables(c.rows):
        parts += [f"## {title}", "", markdown_table(*table), ""]
    parts += [f"- {note}" for note in NOTES] + [""]
    cpus = os.cpu_count() or 1
    parts += ["## Runs", "", markdown_table(*runs_table(c.results)), ""]
    parts += [
        f"Wall time includes the worker's start-up and final evaluations. CPU / wall is how many of the "
        f"{cpus} CPUs the run kept busy on average: when other processes share the machine it drops (see the "
        "load average), and the run's timings are slower than the method alone would be.",
        "",
    ]
    if c.failed:
        parts += ["## Failed runs", ""]
        parts += [f"- `{r.spec.name}`: {r.error} (log: `runs/{r.spec.name}.log`)" for r in c.failed] + [""]
    titles = {"curves": "Training curves", "params": "Accuracy vs trainable parameters", "rank": "Rank sweep"}
    if plots:
        parts += ["## Plots", ""]
        parts += [f"![{titles[key]}]({name})\n" for key, name in plots.items()]
    return "\n".join(parts).rstrip() + "\n"


def _run_record(r: RunResult) -> dict[str, Any]:
    return {
        "run": r.spec.name,
        "method": r.spec.method,
        "seed": r.spec.seed,
        "rank": r.spec.rank,
        "status": "ok" if r.ok else "failed",
        "error": r.error,
        "run_dir": str(r.run_dir),
        "reused": r.reused,
        "process_seconds": r.process_seconds,
        "cpu_seconds": r.cpu_seconds,
        "load_average": r.load_average,
        "metrics": r.metrics,
    }


def results_json(c: Comparison, plots: dict[str, str]) -> dict[str, Any]:
    return {
        "command": c.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": c.cfg.to_dict(),
        "machine": machine(),
        "rows": c.rows,
        "runs": [_run_record(r) for r in c.results],
        "plots": plots,
        "notes": NOTES,
    }


def write_plots(c: Comparison) -> dict[str, str]:
    """The PNGs this comparison has data for; a plot left from an earlier comparison in DIR is removed."""
    ok = [row for row in c.rows if row["status"] != "failed"]
    logs: dict[str, list] = {}
    for r in c.results:
        if r.ok:
            logs.setdefault(r.spec.label, []).append(read_log(r.run_dir))
    wanted = {}
    # The accuracy plots need a task that has an accuracy (single-label); the curves draw the loss of any.
    accuracy = any("accuracy" in (row.get("validation") or {}) for row in ok)
    if ok:
        wanted["curves"] = lambda p: plot_curves(c.rows, logs, p)
    if ok and accuracy:
        wanted["params"] = lambda p: plot_accuracy_vs_params(c.rows, p)
    if accuracy and any(row["rank"] is not None for row in ok):
        wanted["rank"] = lambda p: plot_accuracy_vs_rank(c.rows, p)
    for key, name in PLOTS.items():
        if key in wanted:
            wanted[key](c.out / name)
        else:
            (c.out / name).unlink(missing_ok=True)
    return {key: PLOTS[key] for key in wanted}


def write_report(c: Comparison) -> None:
    """``DIR/report.md``, ``DIR/results.json`` and the PNGs, each written whole or not at all."""
    plots = write_plots(c)
    write_atomic(c.out / RESULTS_FILE, json.dumps(results_json(c, plots), indent=2) + "\n")
    write_atomic(c.out / REPORT_FILE, render_markdown(c, plots))
