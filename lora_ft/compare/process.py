"""The parent's side of ``lora-ft compare``'s process boundary: start one worker interpreter per run
(``python -m lora_ft.compare.worker``), pass its progress lines to the display and Ctrl-C on to it, and
turn its exit into None or the one-line error the report shows.

It imports nothing of training, so the comparing process stays light; the worker imports it all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
