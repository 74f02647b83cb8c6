"""What ``lora-ft compare`` shows: a live progress bar per run while it trains (on a terminal; plain lines
elsewhere), then the report's tables (``report.tables``) as rich tables and one line per failed run."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lora_ft.compare.report import REPORT_FILE, RESULTS_FILE, metric_heading, tables
from lora_ft.compare.results import Comparison, RunResult, RunSpec, run_task
from lora_ft.compare.tasks import MultiTaskComparison, tasks_table


def print_comparison(c: Comparison, console) -> None:
    for title, (headers, cells) in tables(c.rows):
        table = Table(title=title)
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in cells:
            table.add_row(*row, style="red" if "FAILED" in row else None)
        console.print(table)
    for r in c.failed:
        console.print(f"[red]{r.spec.name} failed[/red]: {r.error}", markup=True, highlight=False)
    console.print(f"wrote {c.out / REPORT_FILE}, {c.out / RESULTS_FILE} and the plots", highlight=False)


def print_tasks_comparison(c: MultiTaskComparison, console) -> None:
    """The table across tasks (``tasks.tasks_table``), then one line per failed run."""
    headers, cells = tasks_table(c)
    table = Table(title="Primary metric per task")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row, style="red" if "FAILED" in row else None)
    console.print(table)
    for task, r in c.failed:
        console.print(f"[red]{task} {r.spec.name} failed[/red]: {r.error}", markup=True, highlight=False)
    console.print(
        f"wrote {c.out / REPORT_FILE}, {c.out / RESULTS_FILE} and each task's report in "
        f"{', '.join(str(comp.out) for comp in c.comparisons.values())}",
        highlight=False,
    )


def compare_progress(console) -> CompareProgress | CompareLines:
    """Live bars on a terminal; elsewhere (nohup, CI, a pipe), where bars are drawn once at the end, lines."""
    return CompareProgress(console) if console.is_terminal else CompareLines(console)


class CompareProgress:
    """A bar per run over its optimisation steps, with its latest loss; reused and failed runs say so."""

    def __init__(self, console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.bar = None
        self.status = ""
        self.task = ""  # the task whose runs follow, in a comparison across tasks (compare/tasks.py)

    def __enter__(self) -> CompareProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.progress.live.is_started:
            self.progress.stop()

    def run_started(self, spec: RunSpec, index: int, total: int, reused: bool) -> None:
        # Started at the first run, not on entry: an argument error leaves no empty display behind.
        if not self.progress.live.is_started:
            self.progress.start()
        self.status = "reused (metrics.json present)" if reused else "starting"
        self.bar = self.progress.add_task(
            f"[{index + 1}/{total}] {_prefix(self.task)}{spec.name}", total=None, status=self.status
        )

    def run_event(self, event: dict[str, Any]) -> None:
        if "loss" in event:
            self.status = f"loss {event['loss']:.4f}"
        if "eval_metric" in event:
            self.status = (
                f"{self.status.split('  ')[0]}  val {_short(event['metric'])} {event['eval_metric']:.4f}"
            )
        if event.get("step") == 0:
            self.status = "training"
        self.progress.update(self.bar, total=event["max_steps"], completed=event["step"], status=self.status)

    def run_finished(self, result: RunResult) -> None:
        if result.ok:
            total = result.metrics["global_steps"]
            self.progress.update(self.bar, total=total, completed=total, status=_outcome(result))
        else:
            self.progress.update(self.bar, total=1, completed=0, status=f"[red]{_outcome(result)}")


class CompareLines:
    """One plain line per run's start, logged loss, evaluation and outcome: ``[1/3] lora-seed42: step 4/24
    loss 0.6931``. The steps between logs print nothing, so a long run's output stays readable."""

    def __init__(self, console) -> None:
        self.console = console
        self.name = ""
        self.task = ""  # as CompareProgress.task

    def __enter__(self) -> CompareLines:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _line(self, text: str) -> None:
        self.console.print(f"{self.name}: {text}", markup=False, highlight=False)

    def run_started(self, spec: RunSpec, index: int, total: int, reused: bool) -> None:
        self.name = f"[{index + 1}/{total}] {_prefix(self.task)}{spec.name}"
        self._line("reused (metrics.json present)" if reused else "starting")

    def run_event(self, event: dict[str, Any]) -> None:
        where = f"step {event['step']}/{event['max_steps']}"
        if "loss" in event:
            self._line(f"{where}  loss {event['loss']:.4f}")
        if "eval_metric" in event:
            self._line(f"{where}  val {_short(event['metric'])} {event['eval_metric']:.4f}")

    def run_finished(self, result: RunResult) -> None:
        self._line(_outcome(result))


def _short(metric: str) -> str:
    return "acc" if metric == "accuracy" else metric.replace("_", " ")


def _prefix(task: str) -> str:
    return f"{task} " if task else ""


def _outcome(result: RunResult) -> str:
    if not result.ok:
        return f"failed: {result.error}"
    key = run_task(result.metrics).primary_metric
    value = result.metrics["validation"][key]
    return f"{'reused' if result.reused else 'done'}: val {metric_heading(key)} {value:.4f}"
