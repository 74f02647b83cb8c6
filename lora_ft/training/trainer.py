"""The HF ``Trainer`` with atomic, trainable-only checkpoints that resume exactly: ``CheckpointTrainer``.

The Trainer (5.x) writes ``checkpoint-N`` in place, so a kill during the write leaves a half-written
directory that a resume would pick up; it saves the whole base model every time, even when only a
LoRA adapter trains; and a resume in the middle of any epoch but the first draws that epoch's data
order afresh, so it skips batches the run never saw. Here the Trainer writes its own files (optimizer,
scheduler, scaler, RNG, state) into a staging directory that is published by a rename
(:mod:`lora_ft.training.checkpoint`), the model's part is the trainable tensors only, and
``resume.json`` adds what the Trainer does not keep: the RNG state the current epoch's order was
drawn from, the running loss sums (so logged losses and ``train_loss`` continue exactly) and the
training seconds so far. Resuming goes through ``Trainer.train(resume_from_checkpoint=...)``.

Private Trainer members this module touches (tests/test_dependencies.py checks each is still there):
  _save_checkpoint: the one hook between the Trainer's decision to save and its writes; we stage them
    under a temporary name and publish by rename (on_save runs after the in-place write, too late).
  _load_from_checkpoint: the resume path loads weights only from full-model or PEFT files; ours are
    trainable.safetensors, loaded with exact key and shape checks.
  _load_best_model: load_best_model_at_end reads the same kind of files, for the best checkpoint.
  _determine_best_metric: the training loop's own choice of the best checkpoint, for the evaluation a
    resume runs first (the interrupted run's last; see _ResumePolicy), which the loop never sees.
  _get_train_sampler: the sampler built before accelerate prepares the DataLoader, wrapped to remember
    each epoch's RNG (a DataLoader replaced later would already be accelerate's seedable sampler).
  _tr_loss, _total_loss_scalar, _globalstep_last_logged, _initial_global_step: the training loop's loss
    sums, zeroed at every train() call; read into resume.json and restored, the logged losses and
    train_loss of a resumed run are bit-identical to an uninterrupted one (no public surface has them).
Everything else is public: save_model, get_batch_samples, log, training_step, evaluate, callbacks.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import RandomSampler, Sampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lora_ft.errors import LoraFtError
from lora_ft.finite import diverged, first_nonfinite
from lora_ft.training.checkpoint import (
    RESUME_NAME,
    TRAINABLE_NAME,
    TRAINER_STATE_NAME,
    load_trainable,
    publish_checkpoint,
    rotate,
    trainable_state,
)


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


def _add_seconds(metrics: dict, prior: float) -> None:
    """Make the Trainer's final ``train_*`` speed metrics of one segment cover ``prior`` seconds more."""
    runtime = metrics["train_runtime"]
    metrics["train_runtime"] = round(runtime + prior, 4)
    for key in [k for k in metrics if k.startswith("train_") and k.endswith("_per_second")]:
        metrics[key] = round(metrics[key] * runtime / (runtime + prior), 3)


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
        self._staged: dict[str, torch.Tensor] | None = None  # the checkpoint's tensors, while it is written
        self.loaded_best: Path | None = None  # the checkpoint load_best_model_at_end put into the model
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

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # The Trainer checks the budget only after a step: resumed from the checkpoint of the last step
        # (killed in the final evaluation or while writing the outputs), it would train one step more.
        # Stopped before the first step of a resumed segment (see _ResumePolicy): no batch either.
        if self.state.global_step >= self.state.max_steps or self.control.should_training_stop:
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

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

    def log(self, logs, start_time=None):
        # train_runtime and throughput cover the whole run, every resumed segment included.
        prior = (self.resume_record or {}).get("train_seconds", 0.0)
        if prior and "train_runtime" in logs:
            _add_seconds(logs, prior)
        super().log(logs, start_time)

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

    def save_model(self, output_dir=None, _internal_call=False):
        if self._staged is None:  # not a checkpoint, or a sharded one: the Trainer's own weight files
            super().save_model(output_dir, _internal_call)
        elif self.args.should_save:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            save_file(self._staged, str(Path(output_dir) / TRAINABLE_NAME))

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self.args.output_dir)
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        # The Trainer names its folder checkpoint-N inside output_dir: pointed at the stage, it writes
        # there. Every rank computes the same name (a random temporary one would differ per rank).
        stage = run_dir / f".{final.name}.partial"
        tensors = trainable_state(self.model) if self.args.should_save and not self._sharded else None
        bad = first_nonfinite(tensors) if tensors is not None else None
        if bad is not None:  # a gradient that was not finite: the previous checkpoint stays the last one
            raise diverged(
                self.state.global_step, f"the updated weights are not finite ({bad})", self.args.learning_rate
            )
        if self.args.should_save:
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
        self.accelerator.wait_for_everyone()  # other ranks write their RNG state into the stage
        self._staged = tensors if not self._sharded else None
        self.args.output_dir = str(stage)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir, self._staged = str(run_dir), None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._finish_checkpoint(stage / final.name, final)
        self.accelerator.wait_for_everyone()

    def _finish_checkpoint(self, staged: Path, final: Path) -> None:
        """Add what the Trainer does not keep to ``staged``, publish it as ``final`` and rotate (main only)."""
        if self.state.best_global_step:  # the Trainer looked for the best checkpoint in the stage
            best = final.parent / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
            if best == final or best.is_dir():
                self.state.best_model_checkpoint = str(best)
            self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
        (staged / RESUME_NAME).write_text(json.dumps(self._record()), encoding="utf-8")
        publish_checkpoint(staged, final)
        shutil.rmtree(staged.parent, ignore_errors=True)
        if self.args.save_total_limit:
            rotate(final.parent, self.args.save_total_limit, self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = Path(resume_from_checkpoint)
        if (path / TRAINABLE_NAME).is_file():
            load_trainable(model if model is not None else self.model, path / TRAINABLE_NAME)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        record = json.loads((path / RESUME_NAME).read_text(encoding="utf-8"))
        record["resumed_from"] = [*record.get("resumed_from", []), record["step"]]
        self.resume_record = record

    def _evaluate_at_resume(self) -> None:
        """The evaluation the interrupted run did not finish at the step resumed at, counted towards
        the best checkpoint as the loop's evaluations are; that step's checkpoint is the one resumed from."""
        metrics = self.evaluate()
        if (
            self._determine_best_metric(metrics, trial=None)
            and self.state.best_global_step == self.state.global_step
        ):
            step = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.state.best_model_checkpoint = str(step)

    def _load_best_model(self) -> None:
        self.loaded_best = Path(self.state.best_model_checkpoint)
        best = self.loaded_best / TRAINABLE_NAME
        if best.is_file():
            load_trainable(self.model, best)
        else:
            super()._load_best_model()
        # Next the Trainer deletes every other checkpoint in place under save_total_limit 1, the last
        # one included, even when a signal stopped the run: its resume would start from the best one.
        # Rotation is ours (checkpoint.rotate: renamed away, never the best), so it is left nothing to see.
        self.state.best_model_checkpoint = None


class _ResumePolicy(TrainerCallback):
    """Continues the loss sums of a resumed run, and checkpoints the last step before anything else.

    The Trainer evaluates before it saves, and saves nothing with save_strategy "no": a crash in the
    final evaluation (an evaluation batch that does not fit) or while writing the outputs would lose
    the whole run. With the last step checkpointed first, it loses no training.

    A checkpoint of the step that ends an epoch (or the run) is saved before that epoch-end
    evaluation; a run resumed from one whose trainer state does not hold the evaluation runs it
    first, as the interrupted run would have. A budget below the step resumed at is refused; a run
    resumed at its budget, or that early stopping ends in that first evaluation, trains no step and
    repeats no epoch end.
    """

    def __init__(self, trainer: CheckpointTrainer):
        self.trainer = trainer
        self.ended = False

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
            t._evaluate_at_resume()  # early stopping may end the run here, as it ended the interrupted one
        self.ended = state.global_step >= state.max_steps or control.should_training_stop
        if self.ended:  # the epoch left gets no batch (get_batch_samples) and ends at once
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True

    def on_epoch_end(self, args, state, control, **kwargs):
        # Ended where it resumed: this epoch's end (its evaluation, save and log) was the interrupted run's.
        if self.ended:
            control.should_evaluate = control.should_save = control.should_log = False


def _evaluates_after_save(args, state) -> bool:
    """Whether the Trainer evaluates at ``state.global_step`` after its checkpoint: at an epoch's end
    (or the run's, which ends its last epoch) under eval_strategy "epoch"."""
    at_epoch_end = float(state.epoch).is_integer() or state.global_step >= state.max_steps
    return args.eval_strategy == "epoch" and at_epoch_end and args.eval_delay <= state.epoch
