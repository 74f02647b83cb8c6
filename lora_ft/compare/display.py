"""What ``lora-ft compare`` shows on the terminal: a live progress bar per run while it trains, then the
report's tables (``report.tables``) as rich tables and one line per failed run."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lora_ft.compare.report import REPORT_FILE, RESULTS_FILE, tables
from lora_ft.compare.results import Comparison, RunResult, RunSpec


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
        self.task = None
        self.status = ""

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
        self.task = self.progress.add_task(
            f"[{index + 1}/{total}] {spec.name}", total=None, status=self.status
        )

    def run_event(self, event: dict[str, Any]) -> None:
        if "loss" in event:
            self.status = f"loss {event['loss']:.4f}"
        if "eval_accuracy" in event:
            self.status = f"{self.status.split('  ')[0]}  val acc {event['eval_accuracy']:.4f}"
        if event.get("step") == 0:
            self.status = "training"
        self.progress.update(self.task, total=event["max_steps"], completed=event["step"], status=self.status)

    def run_finished(self, result: RunResult) -> None:
        if result.ok:
            acc = result.metrics["validation"]["accuracy"]
            status = f"{'reused' if result.reused else 'done'}: val acc {acc:.4f}"
            total = result.metrics["global_steps"]
            self.progress.update(self.task, total=total, completed=total, status=status)
        else:
            self.progress.update(self.task, total=1, completed=0, status=f"[red]failed: {result.error}")
