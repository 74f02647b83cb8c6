"""Trainer callbacks: a JSONL log, honest memory accounting, progress (a rich bar on a terminal, plain lines
elsewhere), stop-on-signal and stop-on-NaN."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

from lora_ft import fmt
from lora_ft.finite import diverged
from lora_ft.fsutil import open_own
from lora_ft.training.resources import cuda_peak_mb, peak_rss_mb, reset_peak_rss, rss_mb
from lora_ft.training.signals import StopSignals


class JsonlLogCallback(TrainerCallback):
    """Append one JSON object per logging step or evaluation to ``path`` (main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch}
        record.update({k: v for k, v in logs.items() if not (isinstance(v, float) and math.isnan(v))})
        fd = open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # not through a planted link
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class MemoryCallback(TrainerCallback):
    """Peak RSS during training, and what training added over the RSS just before the first step.

    ``train_memory_mb`` (peak during training minus RSS before it) compares methods honestly: model
    loading and tokenization are the same for every method and are left out.
    """

    def __init__(self) -> None:
        self.before_mb: float | None = None
        self.peak_mb: float | None = None
        self.cuda_peak_mb: float | None = None
        self._exact = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._exact = reset_peak_rss()
        self.before_mb = rss_mb()

    def on_train_end(self, args, state, control, **kwargs):
        self.peak_mb = peak_rss_mb()
        self.cuda_peak_mb = cuda_peak_mb()

    @property
    def train_memory_mb(self) -> float | None:
        if self.before_mb is None or self.peak_mb is None or not self._exact:
            return None
        return max(0.0, self.peak_mb - self.before_mb)


# What a progress line shows of an evaluation, per problem type (data/task.py's METRIC_KEYS): the loss,
# then accuracy and F1 for single-label, micro/macro-F1 for multi-label, Pearson/Spearman for regression.
_SHOWN = (("accuracy", "f1"), ("micro_f1", "macro_f1"), ("pearson", "spearman"), ("entity_f1",))


def shown_keys(logs: dict, split: str) -> list[str]:
    """The metric keys of ``split`` in ``logs`` that a progress line shows: the loss, then the first
    problem type's pair whose keys are present."""
    keys = ["loss"] if f"{split}_loss" in logs else []
    for group in _SHOWN:
        if f"{split}_{group[0]}" in logs:
            return keys + [k for k in group if f"{split}_{k}" in logs]
    return keys


class RichProgressCallback(TrainerCallback):
    """One progress bar over the optimisation steps, with the latest loss and eval accuracy."""

    def __init__(self, console=None, description: str = "training"):
        self.console = console
        self.description = description
        self.progress = None
        self.task = None
        self.status = ""

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        # A resumed run starts where its checkpoint was, not at 0.
        self.task = self.progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, status=""
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, status=self.status)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.status = f"loss {logs['loss']:.4f}"
        if "eval_loss" in logs:
            shown = [k for k in shown_keys(logs, "eval") if k != "loss"][:1]
            self.status += "".join(f"  val {k} {logs[f'eval_{k}']:.4f}" for k in shown)
        self.progress.update(self.task, status=self.status)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, status=self.status)
            self.progress.stop()
            self.progress = None


class LineProgressCallback(TrainerCallback):
    """One plain line per logging step and per evaluation, for output that is not a terminal (nohup, CI,
    SLURM, a pipe), where a live bar is drawn once, at the end:

        step 8/24  epoch 0.33  loss 0.6931  lr 4.80e-04  85.3 samples/s  eta 0:00:41
        step 8/24  epoch 0.33  eval  loss 0.6925  accuracy 0.5000  f1 0.3333

    samples/s: the samples of the optimisation steps since the previous line (global batch x steps) over
    their time, evaluations taken out; eta: the remaining steps at this process's mean time per step so
    far, evaluations included, as the remaining ones will be. Main process only.
    """

    def __init__(self, write: Callable[[str], None]):
        self.write = write
        self.begin: tuple[float, int] | None = None  # (time.monotonic(), global step) at train begin
        self.last: tuple[float, int] | None = None  # the same at the previous loss line
        self.eval_seconds = 0.0  # spent evaluating since the previous loss line

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = self.last = (time.monotonic(), state.global_step)
        self.eval_seconds = 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or self.begin is None:
            return
        where = f"step {state.global_step}/{state.max_steps}  epoch {state.epoch or 0:.2f}"
        split = next((k.removesuffix("_runtime") for k in logs if k.endswith("_runtime")), None)
        if "loss" in logs:
            now = time.monotonic()
            lr = f"  lr {logs['learning_rate']:.2e}" if "learning_rate" in logs else ""
            speed, eta = self._samples_per_second(args, state, now), self._eta(state, now)
            self.write(f"{where}  loss {logs['loss']:.4f}{lr}  {speed}  eta {eta}")
        elif split == "train":  # the Trainer's summary when training ends
            self.write(f"{where}  done in {fmt.duration(logs['train_runtime'])}")
        elif split is not None:  # an evaluation: eval_* during training, validation_*/test_* after it
            self.eval_seconds += logs[f"{split}_runtime"]
            values = "  ".join(f"{key} {logs[f'{split}_{key}']:.4f}" for key in shown_keys(logs, split))
            self.write(f"{where}  {split}  {values}")

    def _samples_per_second(self, args, state, now: float) -> str:
        last_time, last_step = self.last
        seconds = now - last_time - self.eval_seconds
        steps = state.global_step - last_step
        self.last, self.eval_seconds = (now, state.global_step), 0.0
        if seconds <= 0 or steps <= 0:
            return "— samples/s"
        batch = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        return f"{steps * batch / seconds:.1f} samples/s"

    def _eta(self, state, now: float) -> str:
        begin_time, begin_step = self.begin
        done = state.global_step - begin_step
        if done <= 0:
            return "—"
        return fmt.duration((now - begin_time) / done * (state.max_steps - state.global_step))


class StopOnNonFinite(TrainerCallback):
    """Stop on a NaN or infinite number in the Trainer's logs: the gradient norm, an evaluation loss.

    Free: the Trainer computes the gradient norm for clipping anyway and logs it every
    ``logging_steps``. A non-finite gradient between two logging steps makes the next loss NaN, which
    ``CheckpointTrainer.training_step`` stops on, and never reaches a checkpoint, which is checked.
    Under fp16 the loss scaler skips a step whose gradient overflowed, so an infinite norm there is
    the scaler at work, not divergence.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, value in (logs or {}).items():
            if not isinstance(value, float) or math.isfinite(value):
                continue
            if key == "grad_norm" and args.fp16:
                continue
            raise diverged(state.global_step, f"the logged {key} is {value}", args.learning_rate)


class StopOnSignal(TrainerCallback):
    """Turn a signal noted by ``StopSignals`` into a checkpoint and a stop at the end of the current step.

    Add it last, so it sees a signal raised by an earlier callback of the same step.
    """

    def __init__(self, signals: StopSignals):
        self.signals = signals
        self.stopping = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.signals.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.signals.training = False

    def on_step_end(self, args, state, control, **kwargs):
        signum = self.signals.signum or 0
        if args.world_size > 1:  # every rank must stop at the same step, or the next collective hangs
            agreed = torch.tensor([signum], device=args.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            signum = int(agreed.item())
            self.signals.signum = signum or None
        if signum:
            self.stopping = True
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        # Stopped mid-epoch: the epoch's evaluation and save belong to the resumed run, at its real end.
        if self.stopping and not float(state.epoch).is_integer():
            control.should_evaluate = control.should_save = control.should_log = False


class AtTrainBegin(TrainerCallback):
    """Call ``action`` when training begins, after the callbacks added before it (a resumed state's checks)."""

    def __init__(self, action: Callable[[], None]):
        self.action = action

    def on_train_begin(self, args, state, control, **kwargs):
        self.action()
