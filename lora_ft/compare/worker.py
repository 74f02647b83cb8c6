"""The process boundary of ``lora-ft compare``: one training run per fresh interpreter.

``python -m lora_ft.compare.worker CONFIG RUN_DIR [--force] [--trust-remote-code]`` trains one resolved
config. It prints progress lines (``PROGRESS_PREFIX`` + JSON) on stdout for the parent's progress bar,
and ends a failure with the CLI's one-line ``error: ...`` on stderr, which the parent puts in the report.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_ft.errors import LoraFtError, first_line
from lora_ft.fsutil import open_own
from lora_ft.training.signals import TrainingInterrupted, signal_name

PROGRESS_PREFIX = "@lora-ft-progress "

Emit = Callable[[dict[str, Any]], None]


def run_in_subprocess(
    config_path: Path, run_dir: Path, log_path: Path, force: bool, emit: Emit, trust_remote_code: bool = False
) -> str | None:
    """Train one run in a fresh interpreter; its stderr and stray stdout go to ``log_path``.

    The worker runs in its own session, so a terminal's Ctrl-C reaches only this process, which passes
    each SIGINT/SIGTERM on exactly once: the first makes the worker checkpoint at the next step and
    stop, a second aborts it (as for ``train``). The comparison then stops with the signal's exit code,
    and running it again resumes the interrupted run from its checkpoint.
    """
    command = [sys.executable, "-m", "lora_ft.compare.worker", str(config_path), str(run_dir)]
    if force:
        command.append("--force")
    if trust_remote_code:
        command.append("--trust-remote-code")
    received: list[int] = []
    log_fd = open_own(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(log_fd, "w", encoding="utf-8") as logf:
        logf.write("$ " + " ".join(command) + "\n")
        logf.flush()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=logf, text=True, bufsize=1, start_new_session=True
        )

        def forward(signum, frame):
            received.append(signum)
            if proc.poll() is None:
                proc.send_signal(signum)

        with _forwarding(forward):
            try:
                for line in proc.stdout:
                    if line.startswith(PROGRESS_PREFIX):
                        emit(json.loads(line[len(PROGRESS_PREFIX) :]))
                    else:
                        logf.write(line)
                code = proc.wait()
            except BaseException:
                proc.kill()  # not a signal (those are forwarded): a bug or the caller's error
                proc.wait()
                raise
    if received:
        raise TrainingInterrupted(
            f"compare interrupted by {signal_name(received[0])} during {run_dir.name}; finished runs and "
            f"its last checkpoint are kept: run the same compare command again to resume",
            received[0],
        )
    if code == 0:
        return None
    errors = [
        line for line in log_path.read_text(encoding="utf-8").splitlines() if line.startswith("error: ")
    ]
    if errors:
        return errors[-1][len("error: ") :]
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}" + (" (out of memory?)" if code == -9 else "")
    return f"exited with code {code}; see {log_path}"


class _forwarding:
    """Route SIGINT/SIGTERM to ``handler`` while inside (main thread only; elsewhere a no-op)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, handler):
        self.handler = handler
        self.old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self.handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, old in self.old.items():
            signal.signal(s, old)


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
    from transformers import TrainerCallback

    from lora_ft.config import load_config
    from lora_ft.training.checkpoint import last_checkpoint
    from lora_ft.training.rundir import RunDir
    from lora_ft.training.train import train

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            emit({"step": 0, "max_steps": state.max_steps})

        def on_step_end(self, args, state, control, **kwargs):
            emit({"step": state.global_step, "max_steps": state.max_steps})

        def on_log(self, args, state, control, logs=None, **kwargs):
            picked = {k: logs[k] for k in ("loss", "eval_accuracy") if k in (logs or {})}
            if picked:
                emit({"step": state.global_step, "max_steps": state.max_steps, **picked})

    cfg = load_config(config_path, trust_remote_code=trust_remote_code)
    callbacks = [_Progress()] if emit is not None else []
    run = RunDir(run_dir)
    if not force and (run.partial / "config.yaml").is_file() and last_checkpoint(run.checkpoints):
        return train(cfg, run_dir, resume=True, callbacks=callbacks)
    # The parent reuses finished runs and refuses foreign ones, so what is left here is this config's
    # own leftover: an interrupted run with no checkpoint yet, safe to start over.
    return train(cfg, run_dir, force=force or run.partial.exists(), callbacks=callbacks)


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
