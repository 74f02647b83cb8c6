"""Experiment trackers (``train.report_to``): TensorBoard, MLflow and trackio through the Trainer's own
integration callbacks, plus what those leave out: lora-ft's config when training begins, and the run's
final metrics (metrics.json's numbers) at its end.

The Trainer ends each tracker's run in ``on_train_end``, before the test evaluation and metrics.json
exist, and a later log would open a stray run. ``track`` takes the integration callbacks out of the
Trainer into one ``Trackers`` callback that forwards their events but holds their end back until the
run's own end, so the test metrics and the summary land in the same tracker run.

Where each writes: TensorBoard into the run directory (``tensorboard/``, set through the callback's
``logging_dir``, the attribute its ``TENSORBOARD_LOGGING_DIR`` fills); MLflow where
``MLFLOW_TRACKING_URI`` points (MLflow's default otherwise); trackio into its local store
(``TRACKIO_DIR``, by default under ``~/.cache/huggingface/trackio``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl
from transformers.integrations import MLflowCallback, TensorBoardCallback, TrackioCallback

from lora_ft.config import RunConfig, dump_config
from lora_ft.errors import LoraFtError
from lora_ft.training.resume_rules import flatten
from lora_ft.training.signals import TrainingInterrupted

DEFAULT_PROJECT = "lora-ft"
# The module each tracker's extra (pip install 'lora-ft[NAME]') installs.
_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio"}
# The numbers of metrics.json that each tracker gets as the run's summary, under "final/".
_SUMMARY_KEYS = (
    "validation",
    "test",
    "train_loss",
    "train_seconds",
    "train_samples_per_second",
    "global_steps",
    "trainable_params",
    "trainable_percent",
    "peak_memory_mb",
    "train_memory_mb",
    "cuda_peak_memory_mb",
)
FINAL = "final/"


def require_trackers(report_to: list[str]) -> None:
    """Refuse a tracker whose library is missing, naming the extra that installs it."""
    missing = [name for name in report_to if importlib.util.find_spec(_MODULES[name]) is None]
    if missing:
        raise LoraFtError(
            f"train.report_to names {', '.join(missing)}, not installed here: "
            f"pip install 'lora-ft[{','.join(missing)}]'"
        )


def run_params(cfg: RunConfig) -> dict[str, Any]:
    """The config as flat ``{"lora.r": 8, "train.learning_rates.lora": 5e-4}``: what every tracker takes
    as hyperparameters (a list becomes its JSON text). Dotted, so no key is a TrainingArguments name."""
    return {
        key: value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
        for key, value in flatten(cfg.to_dict()).items()
    }


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's summary numbers as ``{"final/test/accuracy": 0.81, "final/train_seconds": 9.5}``."""
    picked = flatten({key: metrics[key] for key in _SUMMARY_KEYS if metrics.get(key) is not None})
    return {
        FINAL + key.replace(".", "/"): float(value)
        for key, value in picked.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


class _TensorBoard:
    """The config as text (and as hparams at the end, beside the final metrics, for the HParams tab)."""

    def __init__(self, callback: TensorBoardCallback, args) -> None:
        self.callback = callback  # its writer is made when training begins

    def begin(self, params: dict[str, Any], config_text: str) -> None:
        self.callback.tb_writer.add_text("lora_ft/config", f"```yaml\n{config_text}```")

    def end(self, params: dict[str, Any], final: dict[str, float], step: int) -> None:
        # run_name ".": the hparams and final metrics go into this run's directory, not a subdirectory.
        self.callback.tb_writer.add_hparams(params, final, run_name=".", global_step=step)


class _MLflow:
    """The run in the experiment ``train.project`` (``MLFLOW_EXPERIMENT_NAME`` wins: the callback sets
    it after this), the config as the run's params, the final metrics as its metrics at the last step."""

    def __init__(self, callback: MLflowCallback, args) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(args.project)

    def begin(self, params: dict[str, Any], config_text: str) -> None:
        # A param name takes only these characters (a rank_pattern key is a regex), as in the callback.
        items = [(re.sub(r"[^0-9A-Za-z_\-. :/]", "_", key), value) for key, value in params.items()]
        batch = self.mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH  # one call takes at most this many
        for i in range(0, len(items), batch):
            self.mlflow.log_params(dict(items[i : i + batch]))

    def end(self, params: dict[str, Any], final: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(final, step=step)


class _Trackio:
    """The config into the run's config, the final metrics as its last log."""

    def __init__(self, callback: TrackioCallback, args) -> None:
        import trackio  # the project is the callback's: TrainingArguments.project

        self.trackio = trackio

    def begin(self, params: dict[str, Any], config_text: str) -> None:
        self.trackio.config.update(params)  # a dict, saved with the first log

    def end(self, params: dict[str, Any], final: dict[str, float], step: int) -> None:
        # Steps as the callback logs them: trackio counts its own, the Trainer's is train/global_step.
        self.trackio.log({**final, "train/global_step": step})


_EXTRAS = {TensorBoardCallback: _TensorBoard, MLflowCallback: _MLflow, TrackioCallback: _Trackio}


class Trackers(TrainerCallback):
    """The Trainer's tracker callbacks, fed every event but the end of training, which ``end`` gives
    them after logging the run's final metrics; and lora-ft's config, logged when training begins."""

    def __init__(self, callbacks: list[TrainerCallback], cfg: RunConfig) -> None:
        self.callbacks = callbacks
        self.cfg = cfg
        self.extras: list[Any] = []
        self.metrics: dict[str, Any] | None = None  # metrics.json, once the run has them
        self._begun: tuple[Any, Any] | None = None  # (args, state) once training has begun

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.extras = [_EXTRAS[type(callback)](callback, args) for callback in self.callbacks]
        for callback in self.callbacks:
            callback.on_train_begin(args, state, control, **kwargs)
        self._begun = (args, state)
        if state.is_world_process_zero:
            params, text = run_params(self.cfg), dump_config(self.cfg)
            for extra in self.extras:
                extra.begin(params, text)

    def on_log(self, args, state, control, **kwargs):
        for callback in self.callbacks:
            callback.on_log(args, state, control, **kwargs)

    def on_save(self, args, state, control, **kwargs):
        for callback in self.callbacks:
            callback.on_save(args, state, control, **kwargs)

    def end(self, metrics: dict[str, Any] | None, status: str = "FINISHED") -> None:
        """Log ``metrics`` (metrics.json; None: the run did not finish) and end every tracker's run;
        ``status`` is MLflow's for the run (FINISHED, FAILED, KILLED)."""
        if self._begun is None:
            return
        args, state = self._begun
        self._begun = None
        if metrics is not None:
            params, final = run_params(self.cfg), final_metrics(metrics)
            for extra in self.extras:
                extra.end(params, final, state.global_step)
        for extra in self.extras:
            if isinstance(extra, _MLflow) and extra.mlflow.active_run() is not None:
                extra.mlflow.end_run(status=status)  # the callback's own end would call it finished
        for callback in self.callbacks:
            callback.on_train_end(args, state, TrainerControl())


@contextmanager
def track(trainer: Trainer, cfg: RunConfig, tensorboard_dir: Path) -> Iterator[Trackers]:
    """Move ``trainer``'s tracker callbacks into a ``Trackers`` for the block; TensorBoard writes into
    ``tensorboard_dir``. The block sets ``trackers.metrics`` (metrics.json) once the run has them; the
    trackers' runs end with the block: FINISHED, or FAILED / KILLED (interrupted) on an exception."""
    callbacks = [c for c in (trainer.pop_callback(cls) for cls in _EXTRAS) if c is not None]
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback):
            # What its TENSORBOARD_LOGGING_DIR sets: the writer is made there when training begins.
            callback.logging_dir = str(tensorboard_dir)
    trackers = Trackers(callbacks, cfg)
    if callbacks:
        trainer.add_callback(trackers)
    try:
        yield trackers
    except TrainingInterrupted:
        trackers.end(None, "KILLED")
        raise
    except BaseException:
        trackers.end(None, "FAILED")
        raise
    trackers.end(trackers.metrics)
