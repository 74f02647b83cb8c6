"""A loaded model's task (``data/task.py``), from the records saved with it: an adapter's header, a run's
``metrics.json``, a merged export's ``lora-ft.json`` and ``config.json``'s ``problem_type``; records
written before tasks read as single-label over the model's labels (``Task.legacy``'s rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from torch import nn

from lora_ft.config.schema import PROBLEM_TYPES
from lora_ft.data.task import REGRESSION, REGRESSION_LABELS, SINGLE_LABEL, Task
from lora_ft.errors import LoraFtError
from lora_ft.lora.io import META_TASK, Adapter
from lora_ft.training.layout import METRICS_FILE


class RunRecord(Protocol):
    """What the task readers take of ``serving.artifacts.RunRecord`` (a protocol, not an import:
    artifacts imports this module)."""

    path: Path
    metrics: dict[str, Any] | None


def model_task(records: list[tuple[Any, str]], labels: list[str], problem_type: str | None = None) -> Task:
    """The task of a model: the first saved task record of ``records`` (``(value, where)``, None = absent),
    else ``problem_type`` (a model config's; None or unknown = single-label) over ``labels``.

    Raises:
        LoraFtError: a malformed record, or one whose labels are not the head's ``labels``.
    """
    for value, where in records:
        if value is not None:
            task = Task.from_dict(value, where)
            # A regression head's one output may be named anything in id2label; it is the score.
            if task.num_labels != len(labels) or (
                not task.is_regression and list(task.label_names) != labels
            ):
                raise LoraFtError(
                    f"{where}: the task's labels {', '.join(task.label_names)} are not the model's "
                    f"{', '.join(labels)}; the record does not belong to this model"
                )
            return task
    if problem_type == REGRESSION:
        return Task(REGRESSION, REGRESSION_LABELS)
    return Task(problem_type if problem_type in PROBLEM_TYPES else SINGLE_LABEL, tuple(labels))


def adapter_task(adapter: Adapter, run: RunRecord | None, labels: list[str]) -> Task:
    """An adapter's task: its header's record, else its run's, else single-label over ``labels``."""
    return model_task(
        [(adapter.task, f"adapter {adapter.path}: the {META_TASK} record"), run_task(run)], labels
    )


def run_task(run: RunRecord | None) -> tuple[Any, str]:
    """The task record of a run's ``metrics.json`` (None when there is none), and where it is."""
    if run is None or not run.metrics:
        return None, ""
    return run.metrics.get("task"), f"{run.path / METRICS_FILE}: task"


def with_task(model: nn.Module, task: Task) -> nn.Module:
    """``model`` whose config carries the task in transformers' own fields (``problem_type``, ``id2label``,
    ``label2id``), so its loss and a merged export's ``config.json`` (and with it plain transformers'
    ``pipeline``: softmax, sigmoid or the raw score) treat its outputs as they were trained."""
    model.config.problem_type = task.problem_type
    model.config.id2label = dict(enumerate(task.label_names))
    model.config.label2id = {name: i for i, name in enumerate(task.label_names)}
    return model
