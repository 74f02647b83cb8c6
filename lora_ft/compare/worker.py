"""One run of ``lora-ft compare``, in its own fresh interpreter (started by ``process.run_in_subprocess``).

``python -m lora_ft.compare.worker CONFIG RUN_DIR [--force] [--trust-remote-code]`` trains one resolved
config. It prints progress lines (``PROGRESS_PREFIX`` + JSON) on stdout for the parent's progress bar,
and ends a failure with the CLI's one-line ``error: ...`` on stderr, which the parent puts in the report.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lora_ft.compare.process import PROGRESS_PREFIX, Emit
from lora_ft.compare.results import shown_for
from lora_ft.config import load_config
from lora_ft.data.presets import apply_preset, preset_for
from lora_ft.data.task import DEFAULT_PRIMARY
from lora_ft.errors import LoraFtError, first_line
from lora_ft.training.checkpoint import last_checkpoint
from lora_ft.training.layout import CONFIG_FILE
from lora_ft.training.rundir import RunDir
from lora_ft.training.train import train


class _Progress(TrainerCallback):
    """Each optimisation step, and each logged loss and validation ``metric`` (``eval_metric``, with the
    metric's name), as an event for ``emit``."""

    def __init__(self, emit: Emit, metric: str = "accuracy") -> None:
        self.emit = emit
        self.metric = metric

    def on_train_begin(self, args, state, control, **kwargs):
        self.emit({"step": 0, "max_steps": state.max_steps})

    def on_step_end(self, args, state, control, **kwargs):
        self.emit({"step": state.global_step, "max_steps": state.max_steps})

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        picked = {"loss": logs["loss"]} if "loss" in logs else {}
        if f"eval_{self.metric}" in logs:
            picked.update(eval_metric=logs[f"eval_{self.metric}"], metric=self.metric)
        if picked:
            self.emit({"step": state.global_step, "max_steps": state.max_steps, **picked})


def train_one(
    config_path: Path,
    run_dir: Path,
    *,
    force: bool = False,
    emit: Emit | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The worker's job: train one resolved config into ``run_dir``, reporting steps through ``emit``.

    ``trust_remote_code`` is the comparison's command line's grant; the config file cannot give it.

    An interrupted run of the same config (a checkpoint in its partial directory) is resumed rather
    than started over, unless ``force``; one interrupted before its first checkpoint starts over.
    """
    cfg = load_config(config_path, trust_remote_code=trust_remote_code)
    callbacks = [_Progress(emit, _shown_metric(cfg))] if emit is not None else []
    run = RunDir(run_dir)
    if not force and (run.partial / CONFIG_FILE).is_file() and last_checkpoint(run.checkpoints):
        return train(cfg, run_dir, resume=True, callbacks=callbacks)
    # The parent reuses finished runs and refuses foreign ones, so what is left here is this config's
    # own leftover: an interrupted run with no checkpoint yet, safe to start over.
    return train(cfg, run_dir, force=force or run.partial.exists(), callbacks=callbacks)


def _shown_metric(cfg) -> str:
    """What the comparison shows during training (``results.shown_metric``), from the config alone."""
    data = apply_preset(cfg.data)
    preset = preset_for(data.name)
    primary = (preset.primary_metric if preset else "") or DEFAULT_PRIMARY[data.problem_type]
    return shown_for(data.problem_type, primary)


def _print_progress(event: dict[str, Any]) -> None:
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(event) + "\n")
    sys.stdout.flush()


def _worker_main(argv: list[str]) -> int:
    """``python -m lora_ft.compare.worker CONFIG RUN_DIR [--force] [--trust-remote-code]``: the CLI's one-line errors."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config_path, run_dir, *flags = argv
    try:
        train_one(
            Path(config_path),
            Path(run_dir),
            force="--force" in flags,
            emit=_print_progress,
            trust_remote_code="--trust-remote-code" in flags,
        )
    except LoraFtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the traceback goes to the run's log, the last line to the report
        traceback.print_exc()
        first = first_line(exc)
        print(f"error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
