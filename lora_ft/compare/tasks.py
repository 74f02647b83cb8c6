"""``lora-ft compare --data a,b,c``: every method on every task under the same budget, and one table of
the tasks' primary metrics, tasks as columns and methods as rows (as the LoRA paper's Table 2 gives
GLUE; Hu et al. 2021).

Each task is an ordinary comparison (``runner.compare``) of the config with ``data.name`` set to the
task, so the task's own preset gives its columns, problem type, labels and primary metric; every other
setting (the budget, ``data.max_train_samples``, the learning rate per method) is the config's.

Layout of a multi-task compare directory::

    DIR/report.md, results.json     the table across tasks (this module)
    DIR/<task>/                     the task's comparison, as ``lora-ft compare`` writes it
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_ft.compare import runner
from lora_ft.compare.report import REPORT_FILE, RESULTS_FILE, fmt_stat, machine, markdown_table, quality_table
from lora_ft.compare.results import Comparison, aggregate, run_task
from lora_ft.config import RunConfig
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import write_atomic
from lora_ft.outputs import COMPARISON, check_comparison_dir, write_marker

SPLIT = "validation"  # what the table shows: GLUE's dev sets, as the LoRA paper reports them


def parse_tasks(text: str) -> list[str]:
    """The data names of ``--data`` (or of a ``data.name`` listing several), comma-separated, in order.

    A name that is itself an existing path is one task even if it holds a comma.
    """
    if Path(text).exists():
        return [text]
    tasks = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not tasks:
        raise LoraFtError(f"--data takes a comma-separated list of data names or paths; got {text!r}")
    return tasks


def task_dir_name(task: str) -> str:
    """The subdirectory of ``task``'s comparison: ``glue/cola`` -> ``glue-cola``; a path -> its last part."""
    name = Path(task).stem if Path(task).exists() else task
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "task"


def task_config(cfg: RunConfig, task: str) -> RunConfig:
    """``cfg`` with ``data.name`` set to ``task`` (its preset is applied when the data is read)."""
    run = copy.deepcopy(cfg)
    run.data.name = task
    return run


@dataclass
class MultiTaskComparison:
    out: Path
    cfg: RunConfig
    tasks: list[str]
    comparisons: dict[str, Comparison]
    command: str | None = None

    @property
    def failed(self) -> list[tuple[str, Any]]:
        """(task, RunResult) of every run that failed."""
        return [(t, r) for t, c in self.comparisons.items() for r in c.failed]

    @property
    def total_runs(self) -> int:
        return sum(len(c.results) for c in self.comparisons.values())


def compare_tasks(
    cfg: RunConfig,
    out: str | Path,
    tasks: list[str],
    *,
    progress=None,
    command: str | None = None,
    **options,
) -> MultiTaskComparison:
    """``runner.compare`` of every task into ``out/<task>/`` (``options`` are its keyword arguments:
    methods, seeds, ranks, force, runner), then the table across tasks in ``out``; ``command`` (the
    line that reproduces it) heads every report.

    ``progress`` as for ``runner.compare``; its ``task`` attribute (if it has one) is set to the task
    whose runs follow.

    Raises:
        LoraFtError: two tasks with one directory name, or ``out`` (or a task's directory) a non-empty
            directory that no comparison wrote; checked before anything is trained.
    """
    out = Path(out)
    dirs = {task: out / task_dir_name(task) for task in tasks}
    clash = [t for t in tasks if list(dirs.values()).count(dirs[t]) > 1]
    if clash:
        raise LoraFtError(f"tasks {', '.join(clash)} would share the directory {dirs[clash[0]]}; rename one")
    check_comparison_dir(out)
    for directory in dirs.values():
        check_comparison_dir(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, COMPARISON)
    comparisons = {}
    for task in tasks:
        if progress is not None and hasattr(progress, "task"):
            progress.task = task
        comparisons[task] = runner.compare(
            task_config(cfg, task), dirs[task], progress=progress, command=command, **options
        )
    result = MultiTaskComparison(out, cfg, tasks, comparisons, command)
    write_tasks_report(result)
    return result


def _cell(row: dict[str, Any] | None) -> dict[str, Any]:
    """A method's figure on one task: its primary metric on ``SPLIT``, mean ± std over the seeds."""
    if row is None:
        return {"status": "absent", "value": None}
    split = row.get(SPLIT) or {}
    return {"status": row["status"], "value": split.get(row.get("primary_metric", "accuracy"))}


def summary_rows(c: MultiTaskComparison) -> list[dict[str, Any]]:
    """One row per method (and rank): each task's cell, and the average over the tasks (None unless
    every task has a value)."""
    labels = list(dict.fromkeys(row["label"] for comp in c.comparisons.values() for row in comp.rows))
    rows = []
    for label in labels:
        cells = {
            task: _cell(next((r for r in comp.rows if r["label"] == label), None))
            for task, comp in c.comparisons.items()
        }
        means = [(cell["value"] or {}).get("mean") for cell in cells.values()]
        average = aggregate(means) if all(m is not None for m in means) else None
        rows.append({"label": label, "tasks": cells, "average": average and average["mean"]})
    return rows


def task_metrics(c: MultiTaskComparison) -> dict[str, dict[str, str]]:
    """Each task's problem type and primary metric, from its first finished run (None: none finished)."""
    info = {}
    for task, comp in c.comparisons.items():
        first = next((r.metrics for r in comp.results if r.ok), None)
        t = run_task(first) if first is not None else None
        info[task] = {
            "dir": comp.out.name,
            "problem_type": t.problem_type if t else None,
            "primary_metric": t.primary_metric if t else None,
        }
    return info


def tasks_table(c: MultiTaskComparison) -> tuple[list[str], list[list[str]]]:
    """Tasks as columns, methods as rows; the first row names each column's metric."""
    info = task_metrics(c)
    headers = ["method", *c.tasks, "Avg."]
    metric_row = [
        "metric",
        *(f"{SPLIT} {info[t]['primary_metric'] or '—'}" for t in c.tasks),
        "mean of the tasks",
    ]
    cells = [metric_row]
    for row in summary_rows(c):
        line = [row["label"]]
        for task in c.tasks:
            cell = row["tasks"][task]
            text = "FAILED" if cell["status"] == "failed" else fmt_stat(cell["value"])
            line.append(text + (" (partial)" if cell["status"] == "partial" else ""))
        line.append("—" if row["average"] is None else f"{row['average']:.4f}")
        cells.append(line)
    return headers, cells


def render_markdown(c: MultiTaskComparison) -> str:
    methods = ", ".join(dict.fromkeys(row["label"] for row in summary_rows(c)))
    parts = [f"# lora-ft compare across tasks: {methods}", ""]
    if c.command:
        parts += ["```bash", c.command, "```", ""]
    parts += [
        f"Each cell is the method's primary metric of the task on its {SPLIT} split (the metric GLUE ranks "
        "by: data/presets.py), mean ± sample standard deviation over the seeds; Avg. is the mean of the "
        "row's cells. Every task had the same budget and learning rate per method; each task's own report "
        "(linked below) has the rest of its metrics, the costs and the plots.",
        "",
        markdown_table(*tasks_table(c)),
        "",
    ]
    for task, comp in c.comparisons.items():
        parts += [f"## {task}", "", f"[{comp.out.name}/{REPORT_FILE}]({comp.out.name}/{REPORT_FILE})", ""]
        parts += [markdown_table(*quality_table(comp.rows)), ""]
    if c.failed:
        parts += ["## Failed runs", ""]
        parts += [f"- {task} `{r.spec.name}`: {r.error}" for task, r in c.failed] + [""]
    return "\n".join(parts).rstrip() + "\n"


def results_json(c: MultiTaskComparison) -> dict[str, Any]:
    info = task_metrics(c)
    return {
        "command": c.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "split": SPLIT,
        "tasks": [{"name": t, **info[t]} for t in c.tasks],
        "rows": summary_rows(c),
        "config": c.cfg.to_dict(),
        "machine": machine(),
    }


def write_tasks_report(c: MultiTaskComparison) -> None:
    """``DIR/report.md`` and ``DIR/results.json`` of the table across tasks, each written whole or not at all."""
    write_atomic(c.out / RESULTS_FILE, json.dumps(results_json(c), indent=2) + "\n")
    write_atomic(c.out / REPORT_FILE, render_markdown(c))
