"""Where a run lives while it trains, and how it is resumed or abandoned.

A run for ``--out runs/x`` trains in ``runs/.x.partial/`` (config.yaml, log.jsonl, checkpoints/, and a
``.lock`` held by the training process) and is renamed to ``runs/x`` only when finished, so
``runs/x`` is always a complete run. The in-progress directory outlives an interrupt, a crash or a
``kill -9`` as soon as it holds a checkpoint; ``lora-ft train --resume runs/x`` continues it. Before
the first checkpoint there is nothing worth keeping, and a failure removes it. What a resume may
change (settings, data) is decided in ``resume_rules``; the file names come from ``layout``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
from pathlib import Path
from typing import Any

from lora_ft.config import (
    DATA_FINGERPRINT,
    RunConfig,
    apply_overrides,
    command_line_trust,
    config_from_dict,
    load_config,
    read_yaml,
)
from lora_ft.errors import LoraFtError
from lora_ft.failures import disk_full_error, is_disk_full
from lora_ft.finite import TrainingDiverged
from lora_ft.fsutil import open_own, refuse_links, write_atomic
from lora_ft.outputs import path_exists
from lora_ft.training.checkpoint import (
    TRAINER_STATE_NAME,
    checkpoint_step,
    last_checkpoint,
    remove_checkpoint,
    resumable,
    tidy_checkpoints,
)
from lora_ft.training.distributed import launched_world_size
from lora_ft.training.layout import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    MODEL_DIR,
)
from lora_ft.training.resume_rules import data_change, refused_changes
from lora_ft.training.signals import TrainingInterrupted, signal_name

log = logging.getLogger("lora_ft")

# What a finished run writes next to its checkpoints, before metrics.json marks it finished.
OUTPUTS = (ADAPTER_DIR, MODEL_DIR)


def resume_target(path: Path) -> Path:
    """The run directory a ``--resume`` argument names: ``runs/x``, or its ``runs/.x.partial``."""
    name = path.name
    if name.startswith(".") and name.endswith(".partial") and len(name) > len("..partial"):
        return path.with_name(name[1 : -len(".partial")])
    return path


class RunDir:
    """The in-progress directory of the run that will become ``out``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.partial = self.out.parent / f".{self.out.name}.partial"
        self.checkpoints = self.partial / CHECKPOINTS_DIR
        self.claimed = False  # this process holds the lock and may keep or remove the directory
        self._created = False
        self._lock_fd: int | None = None

    @property
    def _lock_path(self) -> Path:
        return self.partial / LOCK_FILE

    def resume_command(self) -> str:
        force = " --force" if self.out.exists() else ""
        return f"lora-ft train --resume {shlex.quote(str(self.out))}{force}"

    def start_over_command(self) -> str:
        """Train the interrupted run's settings afresh, discarding its checkpoints."""
        config = shlex.quote(str(self.partial / CONFIG_FILE))
        return f"lora-ft train {config} --out {shlex.quote(str(self.out))} --force"

    def _holder(self) -> str | None:
        """``"(pid N) "`` of a live process holding the lock (``""`` if it wrote no pid), or None."""
        try:
            fd = open_own(self._lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip()
            return f"(pid {pid}) " if pid.isdigit() else ""
        finally:
            os.close(fd)
        return None

    def _refuse_if_running(self) -> None:
        holder = self._holder()
        if holder is not None:
            raise LoraFtError(
                f"another lora-ft process {holder}is training into {self.out}; wait for it, stop it, "
                "or choose another --out"
            )

    def _describe(self) -> str:
        ckpt = last_checkpoint(self.checkpoints)
        return f"last checkpoint at step {checkpoint_step(ckpt)}" if ckpt else "no checkpoint yet"

    def check_fresh(self, force: bool) -> None:
        """Before a new run: refuse to discard an interrupted one unless ``force``."""
        if self.partial.is_symlink():
            refuse_links(self.partial, "the in-progress directory")
        if not path_exists(self.partial):
            return
        self._refuse_if_running()
        if not force:
            raise LoraFtError(
                f"{self.out} has an interrupted run in {self.partial} ({self._describe()}); resume it "
                f"with `{self.resume_command()}`, or pass --force to discard it and start over"
            )

    def saved_config(self) -> dict[str, Any]:
        """The interrupted run's config.yaml as a dict; raises when there is nothing to resume."""
        if not self.partial.is_dir():
            if (self.out / METRICS_FILE).is_file():
                raise LoraFtError(
                    f"{self.out} is a finished run; nothing to resume (train again with --force to replace it)"
                )
            raise LoraFtError(
                f"no interrupted run to resume at {self.out} (no {self.partial}); "
                f"start one with `lora-ft train --out {shlex.quote(str(self.out))}`"
            )
        if not (self.partial / CONFIG_FILE).is_file():
            raise LoraFtError(
                f"{self.partial} has no config.yaml, so it cannot be resumed; train into {self.out} "
                "again with --force to discard it"
            )
        refuse_links(self.partial, "the interrupted run")  # received runs: resuming writes into it
        return read_yaml(self.partial / CONFIG_FILE)

    def check_resume(self, cfg: RunConfig, force: bool) -> None:
        """Refuse a resume that would continue the checkpoint as a different experiment."""
        saved = config_from_dict(self.saved_config())
        self._refuse_if_running()
        if self.out.exists() and not force:
            raise LoraFtError(
                f"{self.out} exists and the interrupted run replaces it when it finishes; "
                "add --force to the resume command to allow that"
            )
        changed = refused_changes(saved, cfg)
        if changed:
            listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in list(changed.items())[:3])
            raise LoraFtError(
                f"cannot resume {self.out} with a different {listed}: the checkpoint belongs to the old "
                f"settings; resume with them (`{self.resume_command()}`), change only the budget "
                "(train.epochs, train.max_steps), or start a new run with another --out"
            )
        self._check_checkpoints()

    def _check_checkpoints(self) -> None:
        """Refuse a resume that has checkpoints but no intact one: the Trainer would quietly restart
        what is missing (the optimizer, the warmup, the RNG) and call the result resumed."""
        if (self.partial / METRICS_FILE).is_file():
            return  # finished, killed while publishing: nothing is loaded from the checkpoints
        good, damaged = resumable(self.checkpoints, launched_world_size())
        if good is None and damaged:
            path, what = damaged[0]
            raise LoraFtError(
                f"cannot resume {self.out} exactly: {path} is damaged ({what}), and no intact checkpoint "
                f"is left; start it over with `{self.start_over_command()}`"
            )

    def changed_data(self, fingerprint: dict[str, str]) -> str | None:
        """Why a resume on data with ``fingerprint`` (``LoadedData.fingerprint``) must be refused, or None.

        The run continues only on the bytes it started on: any file changed, added or gone is refused.
        """
        change = data_change(self.saved_config().get(DATA_FINGERPRINT), fingerprint)
        if change is None:
            return None
        return (
            f"cannot resume {self.out}: {change}; restore the data the run started on, or "
            "start a new run with another --out"
        )

    def claim(self, fresh: bool) -> None:
        """Take the directory: for a fresh run remove a discarded one (checked before) and create it."""
        if fresh:
            if self.partial.exists():
                self._refuse_if_running()
                shutil.rmtree(self.partial)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.partial.mkdir()
            except FileExistsError:
                raise LoraFtError(
                    f"another lora-ft process started training into {self.out} just now"
                ) from None
            self._created = True
        fd = open_own(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LoraFtError(
                f"another lora-ft process is training into {self.out}; wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._lock_fd = fd
        self.claimed = True

    def start_checkpoint(self, world_size: int = 1) -> Path | None:
        """The checkpoint to resume from, after tidying what a kill left; log.jsonl is cut back to it.

        A newer checkpoint that is damaged is discarded with a warning (``check_resume`` refused the
        resume if none is intact), and outputs of a run killed before its metrics.json are dropped:
        the resumed run writes them again.
        """
        tidy_checkpoints(self.checkpoints)
        ckpt, damaged = resumable(self.checkpoints, world_size)
        for path, what in damaged if ckpt is not None else []:
            log.warning("%s is damaged (%s); resuming from %s and discarding it", path, what, ckpt)
            remove_checkpoint(path)  # kept, rotation would count it and delete the resumed run's saves
        for name in OUTPUTS:
            path = self.partial / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        self._trim_log(ckpt)
        return ckpt

    def _trim_log(self, ckpt: Path | None) -> None:
        """Cut log.jsonl back to the lines the checkpoint's trainer state had logged when it was saved.

        The resumed run writes the later ones again: the steps after it, an evaluation that ran after
        the save (the last epoch-end evaluation), an interrupted call's summary and the test evaluation.
        """
        path = self.partial / LOG_FILE
        if not path.is_file():
            return
        logged = 0
        if ckpt is not None:
            state = json.loads((ckpt / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
            logged = len(state.get("log_history", []))
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if len(kept) == logged:
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if "train_runtime" not in record:
                kept.append(line + "\n")
        write_atomic(path, "".join(kept))

    def release(self) -> None:
        """Drop the lock (its file first, so it does not end up in the published run)."""
        if self._lock_fd is None:
            return
        self._lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    def interrupted(self, signum: int, max_steps: int) -> TrainingInterrupted:
        ckpt = last_checkpoint(self.checkpoints)
        saved = (
            f" at step {checkpoint_step(ckpt)} of {max_steps}; saved {ckpt}"
            if ckpt
            else " before a checkpoint"
        )
        return TrainingInterrupted(
            f"interrupted by {signal_name(signum)}{saved}; resume with: {self.resume_command()}", signum
        )

    def abandon(self, exc: BaseException, aborted_by: int | None) -> BaseException:
        """After a failure: keep the directory if it holds a checkpoint, and say so; the error to raise."""
        self.release()
        if isinstance(exc, TrainingInterrupted):
            return exc
        ckpt = last_checkpoint(self.checkpoints) if self.claimed else None
        if self._created and ckpt is None:
            shutil.rmtree(self.partial, ignore_errors=True)
        kept = (
            f"; kept the last checkpoint (step {checkpoint_step(ckpt)}): resume with: {self.resume_command()}"
            if ckpt
            else ""
        )
        if isinstance(exc, KeyboardInterrupt):
            signum = aborted_by or signal.SIGINT  # not from our handler: Python's own SIGINT
            where = kept[2:] if kept else "nothing to resume"
            return TrainingInterrupted(f"aborted by {signal_name(signum)}; {where}", signum)
        if is_disk_full(exc):
            return disk_full_error(exc, self.partial, f"free some space or choose another --out{kept}")
        if isinstance(exc, TrainingDiverged) and ckpt:  # resumed exactly, it repeats the same steps
            return LoraFtError(
                f"{exc}; kept the last finite checkpoint (step {checkpoint_step(ckpt)}) in {self.partial}, "
                f"but a resume would diverge again: start over with `{self.start_over_command()}` and "
                "--set train.learning_rate=LOWER",
                exc.exit_code,
            )
        if isinstance(exc, LoraFtError) and kept:
            return LoraFtError(f"{exc}{kept}", exc.exit_code)
        if kept:  # an unexpected error keeps its own message and traceback; say what survived it
            log.warning("%s", kept[2:])
        return exc


def resume_config(
    out: str | Path,
    config_path: str | Path | None,
    overrides: list[str],
    *,
    trust_remote_code: bool = False,
) -> RunConfig:
    """The config of a resumed run: its saved config.yaml (or ``config_path``), then ``overrides``.

    ``model.trust_remote_code`` is the command line's (``trust_remote_code`` or an override), never
    the saved config's: a run received from someone else cannot switch on its model's code.
    """
    run = RunDir(resume_target(Path(out)))
    saved = run.saved_config()
    if config_path is not None:
        return load_config(config_path, overrides, trust_remote_code=trust_remote_code)
    granted = command_line_trust(overrides, trust_remote_code) is True
    return config_from_dict(apply_overrides(saved, list(overrides)), trust_remote_code=granted)
