"""A run config mapped onto the HF ``TrainingArguments``: the settings lora-ft owns, the ones that
would break an exact resume, and the device and process-group options a machine without a GPU needs.

Building the arguments is where the Trainer joins a ``torchrun`` / ``accelerate launch`` process
group, so ``training_arguments`` also checks that every launched process joined.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from lora_ft.config import RunConfig, TrainConfig
from lora_ft.data.metrics import scalar_keys
from lora_ft.data.task import LOWER_IS_BETTER, Task
from lora_ft.errors import LoraFtError, first_line
from lora_ft.training.distributed import launched_world_size
from lora_ft.training.precision import check_supported
from lora_ft.training.tracking import DEFAULT_PROJECT, require_trackers

# The TrainingArguments that lora-ft sets from its own settings (named here for the error): set again
# under train.trainer they would quietly win over the setting, or point the checkpoints elsewhere.
OWNED_ARGUMENTS = {
    "output_dir": "--out",
    "per_device_train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.eval_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "num_train_epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "learning_rate": "train.learning_rate",
    "weight_decay": "train.weight_decay",
    "warmup_steps": "train.warmup_ratio",
    "lr_scheduler_type": "train.lr_scheduler",
    "max_grad_norm": "train.max_grad_norm",
    "seed": "train.seed",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "activation_checkpointing": "train.gradient_checkpointing",
    "eval_strategy": "train.eval_strategy",
    "eval_steps": "train.eval_steps",
    "logging_steps": "train.logging_steps",
    "save_strategy": "train.save_strategy",
    "save_steps": "train.save_steps",
    "save_total_limit": "train.save_total_limit",
    "train_sampling_strategy": "train.group_by_length",
    "load_best_model_at_end": "train.load_best_model",
    "metric_for_best_model": "train.metric_for_best",
    "greater_is_better": "train.metric_for_best",
    # Off, a resume would count early stopping's evaluations without improvement from zero again.
    "restore_callback_states_from_checkpoint": "--resume (which restores them)",
    "report_to": "train.report_to",
    "run_name": "train.run_name",
    "project": "train.project",
}
# Arguments under which no checkpoint resumes exactly, and why.
UNRESUMABLE_ARGUMENTS = {
    "save_only_model": "its checkpoints leave out the optimizer, scheduler and RNG state",
    "ignore_data_skip": "a resume would train the batches of its epoch seen before again",
}


def training_arguments(
    cfg: RunConfig, method: str, output_dir: Path, run_name: str | None = None
) -> TrainingArguments:
    """The ``TrainingArguments`` of ``cfg`` training ``method`` with checkpoints in ``output_dir``;
    ``run_name`` names the run in the trackers unless ``train.run_name`` does.

    Raises:
        LoraFtError: ``train.trainer`` sets an argument lora-ft owns, one that breaks exact resume, or
            one ``TrainingArguments`` does not take; a tracker of ``train.report_to`` is not installed;
            the precision or FSDP needs a GPU this machine lacks; or the launched processes did not all
            join the Trainer's process group.
    """
    t = cfg.train
    check_supported(t.precision)
    _check_trainer_keys(t.trainer)
    require_trackers(t.report_to)
    launched = launched_world_size()
    kwargs = {**_owned_kwargs(t, method, output_dir, run_name), **_device_kwargs(t, launched)}
    unknown = set(t.trainer) - set(inspect.signature(TrainingArguments.__init__).parameters)
    if unknown:
        raise LoraFtError(
            f"train.trainer has keys TrainingArguments does not take: {', '.join(sorted(unknown))}"
        )
    kwargs.update(t.trainer)
    try:
        args = TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise LoraFtError(f"invalid training arguments: {first_line(exc)}") from None
    if args.world_size != launched:
        raise LoraFtError(
            f"the launcher started {launched} processes but the Trainer joined {args.world_size}; on a machine "
            "without a GPU leave train.trainer.use_cpu and train.trainer.ddp_backend unset"
        )
    return args


def _check_trainer_keys(trainer: dict[str, Any]) -> None:
    """Refuse ``train.trainer`` keys that lora-ft owns or that would break an exact resume."""
    for key in sorted(trainer):
        if key in OWNED_ARGUMENTS:
            raise LoraFtError(f"train.trainer.{key} is lora-ft's to set: use {OWNED_ARGUMENTS[key]} instead")
        if key in UNRESUMABLE_ARGUMENTS and trainer[key]:
            raise LoraFtError(
                f"train.trainer.{key} cannot be used: {UNRESUMABLE_ARGUMENTS[key]}, so an interrupted run "
                "could not resume exactly; drop it"
            )


def _owned_kwargs(t: TrainConfig, method: str, output_dir: Path, run_name: str | None) -> dict[str, Any]:
    """The arguments lora-ft sets from its own settings (``OWNED_ARGUMENTS``) and fixed choices."""
    tracks_best = t.load_best_model or t.early_stopping_patience is not None
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr_for(method),
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        eval_strategy=t.eval_strategy,
        eval_steps=t.eval_steps,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        load_best_model_at_end=t.load_best_model,
        # Set only when used: with a metric the Trainer tracks the best checkpoint and keeps it from rotation.
        metric_for_best_model=t.metric_for_best if tracks_best else None,
        greater_is_better=t.metric_for_best not in LOWER_IS_BETTER,
        restore_callback_states_from_checkpoint=True,
        length_column_name="length",
        label_names=["labels"],
        report_to=list(t.report_to),
        run_name=t.run_name or run_name,
        project=t.project or DEFAULT_PROJECT,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # CheckpointTrainer.training_step stops on a non-finite loss; the filter would only hide it.
        logging_nan_inf_filter=False,
    )


def check_metric_for_best(t: TrainConfig, task: Task) -> None:
    """Refuse a ``train.metric_for_best`` that ``task``'s evaluations do not report (accuracy of a
    regression, pearson of a classifier): the Trainer would fail on it only at the first evaluation."""
    keys = ("loss", *scalar_keys(task))
    if t.metric_for_best not in keys:
        raise LoraFtError(
            f"train.metric_for_best={t.metric_for_best} is not reported for {task.problem_type} data; "
            f"choose one of {', '.join(keys)}"
        )


def _device_kwargs(t: TrainConfig, launched: int) -> dict[str, Any]:
    """What a machine without a GPU must tell accelerate for bf16 and for ``launched`` > 1 processes."""
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        return {}
    if t.trainer.get("fsdp"):
        raise LoraFtError(
            "train.trainer.fsdp needs CUDA GPUs (on the CPU the Trainer quietly falls back to DDP); "
            "drop it to train with DDP"
        )
    kwargs: dict[str, Any] = {}
    if t.precision == "bf16" or launched > 1:
        # accelerate autocasts to bf16, and joins torchrun's process group, on a machine without a GPU
        # only when told it is on the CPU: else bf16 is refused and every rank trains alone on all data.
        kwargs["use_cpu"] = True
    if launched > 1:
        kwargs["ddp_backend"] = "gloo"
    return kwargs
