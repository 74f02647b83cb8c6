"""Checkpoints inside a run: atomic, small, and exact to resume from.

The HF ``Trainer`` (5.x) writes ``checkpoint-N`` in place, so a kill during the write leaves a
half-written directory that a resume would pick up; it saves the whole base model every time, even
when only a LoRA adapter trains; and a resume in the middle of any epoch but the first draws that
epoch's data order afresh, so it skips batches the run never saw. Here:

- a checkpoint is written as ``.checkpoint-N.partial``, fsynced, and renamed to ``checkpoint-N``: a
  ``checkpoint-N`` directory is complete by construction; old ones are renamed away before deletion;
- it holds the trainable tensors only (``trainable.safetensors``: the adapter and the head, about
  300 KB for MiniLM at r=8 instead of 91 MB), plus the Trainer's optimizer, scheduler, RNG and state;
- ``resume.json`` adds what the Trainer does not keep: the RNG state the current epoch's order was
  drawn from, the running loss sums (so logged losses and ``train_loss`` continue exactly) and the
  training seconds so far.

Resuming builds the model afresh and overwrites every trainable tensor from the checkpoint (key sets
and shapes must match exactly), so an adapter is never silently re-initialised. The Trainer would
also quietly restart the optimizer, the warmup or the RNG when their files are missing: a resume
starts from the newest checkpoint that holds every file intact (``damage``), and a run resumed at or
past its budget trains no further step (the Trainer checks the budget only after a step).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import RandomSampler, Sampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lora_ft.errors import LoraFtError, first_line
from lora_ft.finite import diverged, first_nonfinite

log = logging.getLogger("lora_ft")

TRAINABLE_NAME = "trainable.safetensors"
RESUME_NAME = "resume.json"  # written last: its presence marks a checkpoint this module wrote
TRAINER_STATE_NAME = "trainer_state.json"
# The Trainer's own files, each needed to continue exactly (FSDP/DeepSpeed keep their optimizer apart).
OPTIMIZER_NAME, SCHEDULER_NAME = "optimizer.pt", "scheduler.pt"
_STEP = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


def checkpoint_step(path: Path) -> int | None:
    match = _STEP.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves, so a rename publishes data, not holes."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def install(tmp: Path, final: Path) -> None:
    """Rename the complete directory ``tmp`` to ``final``; an existing ``final`` is replaced.

    Between the two renames ``final`` exists only as ``.<final>.old``; ``tidy_checkpoints`` puts it back.
    """
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(directory: Path) -> list[Path]:
    """The ``checkpoint-N`` directories under ``directory``, oldest first (by step, not mtime)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def last_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint this module wrote completely, or None."""
    for path in reversed(complete_checkpoints(directory)):
        if (path / RESUME_NAME).is_file():
            return path
        log.warning("ignoring %s: it has no %s (not written by lora-ft)", path, RESUME_NAME)
    return None


def _rng_names(world_size: int) -> list[str]:
    return [f"rng_state_{rank}.pth" for rank in range(world_size)] if world_size > 1 else ["rng_state.pth"]


def damage(path: Path, world_size: int = 1) -> str | None:
    """What keeps checkpoint ``path`` from resuming a ``world_size``-process run exactly, or None.

    Reads the small files and the trainable tensors whole (non-finite weights are damage too) and
    checks the structure of the large ones (the CRCs of torch.save's zip entries), so a truncated file
    is found here rather than half-way through loading, or never, when the Trainer skips a missing one.
    """
    step = checkpoint_step(path)
    for name, key in ((RESUME_NAME, "step"), (TRAINER_STATE_NAME, "global_step")):
        try:
            record = json.loads((path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return f"{name} is unreadable"
        if not isinstance(record, dict) or record.get(key) != step:
            return f"{name} is not of step {step}"
    weights = path / TRAINABLE_NAME
    sharded = not weights.exists() and any(
        p.name.startswith(("model", "pytorch_model", "global_step")) for p in path.iterdir()
    )
    needed = _rng_names(world_size) if sharded else [OPTIMIZER_NAME, SCHEDULER_NAME, *_rng_names(world_size)]
    if not sharded:
        try:
            with safe_open(str(weights), "pt") as f:
                bad = first_nonfinite((key, f.get_tensor(key)) for key in f.keys())
        except FileNotFoundError:
            return f"{TRAINABLE_NAME} is missing"
        except (SafetensorError, OSError) as exc:
            return f"{TRAINABLE_NAME} is unreadable: {first_line(exc)}"
        if bad is not None:  # saved by a lora-ft that checkpointed a diverged run: it would train on NaN
            return f"{TRAINABLE_NAME} is not finite: {bad}"
    for name in needed:
        try:
            with zipfile.ZipFile(path / name) as archive:
                bad = archive.testzip()
        except FileNotFoundError:
            return f"{name} is missing"
        except (zipfile.BadZipFile, OSError, EOFError):
            bad = name
        if bad is not None:
            return f"{name} is unreadable"
    return None


def resumable(directory: Path, world_size: int = 1) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint in ``directory`` (or None), and the damaged ones newer than it with
    what is wrong in each, newest first."""
    damaged: list[tuple[Path, str]] = []
    for path in reversed(complete_checkpoints(directory)):
        if not (path / RESUME_NAME).is_file():
            log.warning("ignoring %s: it has no %s (not written by lora-ft)", path, RESUME_NAME)
            continue
        found = damage(path, world_size)
        if found is None:
            return path, damaged
        damaged.append((path, found))
    return None, damaged


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint; a kill mid-delete leaves ``.checkpoint-N.deleting``, never half a checkpoint."""
    doomed = path.with_name(f".{path.name}.deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def tidy_checkpoints(directory: Path) -> None:
    """Undo what a kill mid-save or mid-rotation left: restore a replaced checkpoint, drop temporaries."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if not path.name.startswith("."):
            continue
        if path.name.endswith(".old"):
            final = directory / path.name[1:-4]
            if not final.exists():
                os.replace(path, final)
                continue
        shutil.rmtree(path, ignore_errors=True)


def rotate(directory: Path, keep: int, protect: str | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints (never ``protect``, the best one if tracked)."""
    for path in complete_checkpoints(directory)[:-keep]:
        if protect is not None and path.resolve() == Path(protect).resolve():
            continue
        remove_checkpoint(path)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Copy every trainable tensor of ``model`` from ``path``; key sets and shapes must match exactly.

    Raises:
        LoraFtError: unreadable file, a missing or unexpected tensor, or a shape mismatch.
    """
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise LoraFtError(
            f"checkpoint {path.parent} is unreadable ({exc}); resume from another one"
        ) from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise LoraFtError(
            f"checkpoint {path.parent} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise LoraFtError(
                    f"checkpoint {path.parent}: {name} has shape {tuple(saved[name].shape)}, "
                    f"the model's is {tuple(p.shape)}"
                )
            p.copy_(saved[name])


def _encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


class EpochReplaySampler(Sampler):
    """Draws each epoch's order like ``inner`` and remembers the torch RNG state it was drawn from.

    The Trainer resumes mid-epoch by skipping the batches already trained on, but draws that epoch's
    order from the freshly seeded RNG: the interrupted run's order in epoch 0 only. Replaying the
    remembered state makes the skipped batches the ones the run really saw, in every epoch.
    """

    def __init__(self, inner: Sampler):
        self.inner = inner
        self.epoch = 0
        self.drawn: tuple[int, torch.Tensor] | None = None
        self.replay: tuple[int, torch.Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's DataLoaderShard before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        if self.replay is not None and self.replay[0] == self.epoch:
            torch.set_rng_state(self.replay[1])
        self.replay = None
        self.drawn = (self.epoch, torch.get_rng_state())
        yield from self.inner


class CheckpointTrainer(Trainer):
    """A ``Trainer`` whose checkpoints are atomic, hold the trainable tensors only, and resume exactly.

    FSDP and DeepSpeed shard the weights: their checkpoints keep the Trainer's own weight files
    (still written under a temporary name and renamed).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_record: dict | None = None
        self._sampler: EpochReplaySampler | None = None
        self._segment_start = time.time()
        self.add_callback(_ResumePolicy(self))

    @property
    def _sharded(self) -> bool:
        return bool(self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # One host sync per batch, in place of the Trainer's logging_nan_inf_filter (turned off in
        # train.training_arguments), which would log a NaN loss as the running mean and train on.
        # The optimizer has not stepped yet: the weights are still those of the last finite loss.
        if not bool(torch.isfinite(loss).all()):
            raise diverged(self.state.global_step + 1, f"the loss is {loss.item()}", self.args.learning_rate)
        return loss

    def _get_train_sampler(self, train_dataset=None):
        inner = super()._get_train_sampler(train_dataset)
        if not isinstance(inner, (RandomSampler, LengthGroupedSampler)):
            return inner
        self._sampler = EpochReplaySampler(inner)
        if self.resume_record is not None and self.resume_record.get("sampler_rng"):
            record = self.resume_record
            self._sampler.replay = (record["sampler_epoch"], _decode_rng(record["sampler_rng"]))
        return self._sampler

    def evaluate(self, *args, **kwargs):
        # Evaluation draws a DataLoader seed from the global RNG. Isolated, the training RNG does not
        # depend on when evaluations ran, so a checkpoint saved just before an evaluation (an interrupt
        # at the end of an epoch) resumes into the same data order and dropout masks as one saved after.
        rng = torch.get_rng_state()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            torch.set_rng_state(rng)

    def _record(self) -> dict:
        prior = self.resume_record or {}
        drawn = self._sampler.drawn if self._sampler is not None else None
        return {
            "step": self.state.global_step,
            "sampler_epoch": drawn[0] if drawn else None,
            "sampler_rng": _encode_rng(drawn[1]) if drawn else None,
            "tr_loss": float(self._tr_loss.item()),
            "total_loss": self._total_loss_scalar,
            "last_logged": self._globalstep_last_logged,
            "train_seconds": prior.get("train_seconds", 0.0) + time.time() - self._segment_start,
            "resumed_from": prior.get("resumed_from", []),
        }

    def _save_checkpoint(self, model, trial) -> None:
        self.store_flos()
        run_dir = Path(self._get_output_dir(trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        tmp = run_dir / f".{final.name}.partial"
        tensors = trainable_state(self.model) if self.args.should_save and not self._sharded else None
        bad = first_nonfinite(tensors) if tensors is not None else None
        if bad is not None:  # a gradient that was not finite: the previous checkpoint stays the last one
            raise diverged(
                self.state.global_step, f"the updated weights are not finite ({bad})", self.args.learning_rate
            )
        if self.args.should_save:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()  # other ranks write their RNG state into tmp
        if self._sharded:
            self.save_model(str(tmp), _internal_call=True)
        elif tensors is not None:
            save_file(tensors, str(tmp / TRAINABLE_NAME))
        if self.state.best_global_step:
            best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
            if best == final or best.is_dir():
                self.state.best_model_checkpoint = str(best)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(tmp))
            self._save_scaler(str(tmp))
            self._save_rng_state(str(tmp))
        if self.args.should_save:
            for cb in self.callback_handler.callbacks + [self.control]:
                if isinstance(cb, ExportableState):  # e.g. early stopping's patience counter
                    name, cb_state = cb.__class__.__name__, cb.state()
                    if isinstance(self.state.stateful_callbacks.get(name), list):
                        self.state.stateful_callbacks[name].append(cb_state)
                    else:
                        self.state.stateful_callbacks[name] = cb_state
            self.state.save_to_json(str(tmp / TRAINER_STATE_NAME))
            (tmp / RESUME_NAME).write_text(json.dumps(self._record()), encoding="utf-8")
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            fsync_tree(tmp)
            install(tmp, final)
            if self.args.save_total_limit:
                rotate(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = Path(resume_from_checkpoint)
        if (path / TRAINABLE_NAME).is_file():
            load_trainable(model if model is not None else self.model, path / TRAINABLE_NAME)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        record = json.loads((path / RESUME_NAME).read_text(encoding="utf-8"))
        record["resumed_from"] = [*record.get("resumed_from", []), record["step"]]
        self.resume_record = record

    def _load_best_model(self) -> None:
        best = Path(self.state.best_model_checkpoint) / TRAINABLE_NAME
        if best.is_file():
            load_trainable(self.model, best)
        else:
            super()._load_best_model()

    def _run_epoch(self, *args, **kwargs):
        # The Trainer checks the budget only after a step: resumed from the checkpoint of the last step
        # (killed in the final evaluation or while writing the outputs), it would train one step more.
        if self.state.global_step < self.state.max_steps:
            super()._run_epoch(*args, **kwargs)

    def _finalize_training(self, trial, num_train_samples, start_time):
        # train_runtime and throughput cover the whole run, every resumed segment included.
        prior = (self.resume_record or {}).get("train_seconds", 0.0)
        return super()._finalize_training(trial, num_train_samples, start_time - prior)


class _ResumePolicy(TrainerCallback):
    """Continues the loss sums of a resumed run, and checkpoints the last step before anything else.

    The Trainer evaluates before it saves, and saves nothing with save_strategy "no": a crash in the
    final evaluation (an evaluation batch that does not fit) or while writing the outputs would lose
    the whole run. With the last step checkpointed first, it loses no training.

    A checkpoint of the step that ends an epoch (or the run) is saved before that epoch-end
    evaluation; a run resumed from one whose trainer state does not hold the evaluation runs it
    first, as the interrupted run would have. A budget below the step resumed at is refused.
    """

    def __init__(self, trainer: CheckpointTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        t = self.trainer
        t._segment_start = time.time()
        record = t.resume_record
        if record is None:
            return
        # The Trainer zeroes these at every train() call; restored, the next logged loss, the final
        # train_loss and the NaN filter see the same sums as a run never interrupted.
        t._tr_loss = torch.tensor(record["tr_loss"], device=args.device)
        t._total_loss_scalar = record["total_loss"]
        t._globalstep_last_logged = record["last_logged"]
        t._initial_global_step = 0
        if state.global_step > state.max_steps:
            raise LoraFtError(
                f"cannot resume at step {state.global_step} with a budget of {state.max_steps} steps: the "
                f"run has trained past it; resume with a budget of at least {state.global_step} steps "
                "(train.max_steps or train.epochs)"
            )
        if _evaluates_after_save(args, state) and not any(
            entry.get("step") == state.global_step and "eval_loss" in entry for entry in state.log_history
        ):
            t.evaluate()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True


def _evaluates_after_save(args, state) -> bool:
    """Whether the Trainer evaluates at ``state.global_step`` after its checkpoint: at an epoch's end
    (or the run's, which ends its last epoch) under eval_strategy "epoch"."""
    at_epoch_end = float(state.epoch).is_integer() or state.global_step >= state.max_steps
    return args.eval_strategy == "epoch" and at_epoch_end and args.eval_delay <= state.epoch
