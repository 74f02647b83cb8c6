"""Wire a run config to the HF ``Trainer``: data, model, method, callbacks, and the run directory.

The run directory is built under a hidden name and renamed into place only when the run has
finished, so a crash or a bad input never leaves a half-written ``runs/<name>``; once training has
checkpointed, the hidden directory outlives an interrupt or a crash and ``--resume`` continues it.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lora_ft import __version__
from lora_ft.config import DATA_FINGERPRINT, RunConfig, dump_config
from lora_ft.data.assets import with_absolute_paths
from lora_ft.data.loading import LoadedData, load_data, tokenize_data
from lora_ft.data.metrics import compute_metrics
from lora_ft.errors import LoraFtError
from lora_ft.failures import memory_hint
from lora_ft.finite import require_finite, require_finite_metrics
from lora_ft.fsutil import check_output_dir, publish_dir, write_atomic
from lora_ft.lora.io import save_adapter
from lora_ft.training.distributed import (
    check_same_on_all_ranks,
    from_main,
    launched_world_size,
    seeded_fingerprint,
)
from lora_ft.training.modeling import (
    BuildReport,
    LoadedModel,
    build_for_method,
    check_max_length,
    load_model,
    quiet_transformers,
)
from lora_ft.training.precision import check_supported, prepare_model, resolve_precision
from lora_ft.training.resources import peak_rss_mb
from lora_ft.training.rundir import RunDir
from lora_ft.training.signals import StopSignals

log = logging.getLogger("lora_ft")


def library_versions() -> dict[str, str]:
    import datasets
    import transformers

    return {
        "lora_ft": __version__,
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def default_run_dir(config_path: str | Path | None, method: str, root: str | Path = "runs") -> Path:
    stem = Path(config_path).stem if config_path else "default"
    return Path(root) / f"{stem}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Prepared:
    """Everything a run needs before the first step, built and checked before anything is written."""

    cfg: RunConfig
    data: LoadedData
    loaded: LoadedModel
    build: BuildReport
    tokenized: Any  # datasets.DatasetDict


def prepare(cfg: RunConfig, method: str | None = None) -> Prepared:
    """Load data and model, build the method, tokenize. Raises LoraFtError on any bad input."""
    from transformers import set_seed

    method = method or cfg.train.method
    quiet_transformers()
    if cfg.train.threads:
        # Checked here, not in the config: a run's saved config must still load on a smaller machine.
        cpus = os.cpu_count() or 1
        if cfg.train.threads > cpus:
            raise LoraFtError(
                f"train.threads={cfg.train.threads} is more than this machine's {cpus} CPUs; lower it, "
                "or leave it null for one thread per physical core"
            )
        torch.set_num_threads(cfg.train.threads)
    data = load_data(cfg.data)
    if "validation" not in data.splits:
        raise LoraFtError(f"data {data.source} has no validation split; add one (validation.* file)")
    # Seed before the model is built: the classifier head's and LoRA A's initial values depend on it.
    set_seed(cfg.train.seed)
    loaded = load_model(cfg.model, data.label_names)
    check_max_length(loaded, cfg.data.max_length)
    build = build_for_method(loaded, cfg, method)
    tokenized = tokenize_data(data, loaded.tokenizer, cfg.data.max_length)
    # Evaluation batches are padded to their longest sentence; sorted by length they pad ~2x less.
    # Accuracy, F1 and mean loss do not depend on the order.
    with warnings.catch_warnings():
        # datasets' sort hands pyarrow 25 a deprecated option: a FutureWarning on every train's stderr.
        warnings.filterwarnings("ignore", "Specifying null_placement", FutureWarning)
        for split in ("validation", "test"):
            if split in tokenized:
                tokenized[split] = tokenized[split].sort("length")
    return Prepared(cfg=cfg, data=data, loaded=loaded, build=build, tokenized=tokenized)


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
}
# Arguments under which no checkpoint resumes exactly, and why.
UNRESUMABLE_ARGUMENTS = {
    "save_only_model": "its checkpoints leave out the optimizer, scheduler and RNG state",
    "ignore_data_skip": "a resume would train the batches of its epoch seen before again",
}


def training_arguments(cfg: RunConfig, method: str, output_dir: Path):
    from transformers import TrainingArguments

    t = cfg.train
    check_supported(t.precision)
    for key in sorted(t.trainer):
        if key in OWNED_ARGUMENTS:
            raise LoraFtError(f"train.trainer.{key} is lora-ft's to set: use {OWNED_ARGUMENTS[key]} instead")
        if key in UNRESUMABLE_ARGUMENTS and t.trainer[key]:
            raise LoraFtError(
                f"train.trainer.{key} cannot be used: {UNRESUMABLE_ARGUMENTS[key]}, so an interrupted run "
                "could not resume exactly; drop it"
            )
    kwargs: dict[str, Any] = dict(
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
        length_column_name="length",
        label_names=["labels"],
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # CheckpointTrainer.training_step stops on a non-finite loss; the filter would only hide it.
        logging_nan_inf_filter=False,
    )
    launched = launched_world_size()
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        if t.trainer.get("fsdp"):
            raise LoraFtError(
                "train.trainer.fsdp needs CUDA GPUs (on the CPU the Trainer quietly falls back to DDP); "
                "drop it to train with DDP"
            )
        if t.precision == "bf16" or launched > 1:
            # accelerate autocasts to bf16, and joins torchrun's process group, on a machine without a GPU
            # only when told it is on the CPU: else bf16 is refused and every rank trains alone on all data.
            kwargs["use_cpu"] = True
        if launched > 1:
            kwargs["ddp_backend"] = "gloo"
    unknown = set(t.trainer) - set(inspect.signature(TrainingArguments.__init__).parameters)
    if unknown:
        raise LoraFtError(
            f"train.trainer has keys TrainingArguments does not take: {', '.join(sorted(unknown))}"
        )
    kwargs.update(t.trainer)
    try:
        args = TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise LoraFtError(f"invalid training arguments: {str(exc).strip().splitlines()[0]}") from None
    if args.world_size != launched:
        raise LoraFtError(
            f"the launcher started {launched} processes but the Trainer joined {args.world_size}; on a machine "
            "without a GPU leave train.trainer.use_cpu and train.trainer.ddp_backend unset"
        )
    return args


def _evaluate(trainer, dataset, prefix: str) -> dict[str, float]:
    raw = trainer.evaluate(dataset, metric_key_prefix=prefix)
    return {k: float(raw[f"{prefix}_{k}"]) for k in ("accuracy", "f1", "loss") if f"{prefix}_{k}" in raw}


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    force: bool = False,
    method: str | None = None,
    callbacks: list | None = None,
    prepared: Prepared | None = None,
    resume: bool = False,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one method and write the run directory ``out``; return the metrics written to metrics.json.

    The run trains in ``.<out>.partial`` next to ``out`` (see :mod:`lora_ft.training.rundir`); ``resume``
    continues an interrupted one from its last checkpoint, bit-exactly on the same machine.

    Under ``torchrun`` / ``accelerate launch`` every rank calls this; only the main process writes the
    run directory, and every rank returns the same metrics. ``notify`` gets one line before training
    starts (the global batch), on the main process only.

    Raises:
        LoraFtError: bad config, data or model, ``out`` existing without ``force``, or a resume whose
            settings differ from the checkpoint's in more than the budget. Nothing is written before
            every input has been checked.
        TrainingInterrupted: SIGINT or SIGTERM (exit code 130 / 143): a checkpoint was saved at the
            step boundary and the message gives the resume command.
    """
    from transformers import DataCollatorWithPadding, PrinterCallback

    from lora_ft.training.callbacks import (
        AtTrainBegin,
        JsonlLogCallback,
        MemoryCallback,
        StopOnNonFinite,
        StopOnSignal,
    )
    from lora_ft.training.trainer import CheckpointTrainer

    if method is not None and method != cfg.train.method:
        cfg = copy.deepcopy(cfg)
        cfg.train.method = method
    if cfg.train.precision == "auto":  # the run's config.yaml and metrics record what it ran in
        cfg = copy.deepcopy(cfg)
        cfg.train.precision = resolve_precision("auto")
    method = cfg.train.method
    run = RunDir(out)
    if resume:
        run.check_resume(cfg, force)
    check_output_dir(run.out, force)
    if not resume:
        run.check_fresh(force)
    cfg = with_absolute_paths(cfg)  # what config.yaml saves
    # Under torchrun / accelerate launch, building the arguments joins the process group.
    args = training_arguments(cfg, method, run.checkpoints)
    main_out = from_main(run.out)
    if main_out != run.out:  # a default run name is stamped by each rank's clock: rank 0's is the one
        run = RunDir(main_out)
        args.output_dir = str(run.checkpoints)
    main = args.process_index == 0
    with StopSignals() as signals:
        try:
            if resume:
                if main:
                    run.claim(fresh=False)
                done = run.partial / "metrics.json"  # killed while publishing: only that is left
                finished = from_main(json.loads(done.read_text(encoding="utf-8")) if done.is_file() else None)
                if finished is not None:
                    if main:
                        run.release()
                        publish_dir(run.partial, run.out, "run", force)
                    return finished
            # The main process tokenizes into the shared cache first; the others then read it from there.
            with args.main_process_first(local=False, desc="loading data and model"):
                p = prepared or prepare(cfg, method)
            if resume:
                changed = from_main(run.changed_data(p.data.fingerprint) if main else None)
                if changed is not None:
                    raise LoraFtError(changed)
            prepare_model(p.loaded.model, cfg.train.precision, method, cfg.train.gradient_checkpointing)
            fingerprint = seeded_fingerprint(p.loaded.model, p.loaded.newly_initialized)
            check_same_on_all_ranks(fingerprint)
            if main and not resume:
                run.claim(fresh=True)
            start = from_main(run.start_checkpoint(args.world_size) if main else None) if resume else None
            # Written once the resumed state has been checked (a budget below its step is refused), so a
            # refused resume leaves the config that its resume command continues.
            records = {"versions": library_versions(), DATA_FINGERPRINT: p.data.fingerprint}
            config_text = dump_config(cfg, records)
            if main and notify is not None:
                notify(_batch_line(cfg, args.world_size))
            # Our classifiers average the loss over the batch and ignore num_items_in_batch; a model whose
            # forward takes **kwargs is assumed to sum over them, and transformers 5 then skips dividing the
            # loss by the accumulation steps and multiplies it by the world size: gradients grow with both.
            p.loaded.model.accepts_loss_kwargs = False
            memory = MemoryCallback()
            trainer = CheckpointTrainer(
                model=p.loaded.model,
                args=args,
                train_dataset=p.tokenized["train"],
                eval_dataset=p.tokenized["validation"],
                data_collator=DataCollatorWithPadding(p.loaded.tokenizer),
                processing_class=p.loaded.tokenizer,
                compute_metrics=compute_metrics,
                callbacks=[
                    JsonlLogCallback(run.partial / "log.jsonl"),
                    StopOnNonFinite(),
                    memory,
                    *(callbacks or []),
                ],
            )
            trainer.remove_callback(PrinterCallback)  # our progress bar and log.jsonl replace its dict prints
            trainer.add_callback(StopOnSignal(signals))
            if main:
                trainer.add_callback(
                    AtTrainBegin(lambda: write_atomic(run.partial / "config.yaml", config_text))
                )
            with memory_hint(cfg.train.batch_size, cfg.train.eval_batch_size, cfg.data.max_length):
                result = trainer.train(resume_from_checkpoint=str(start) if start else None)
                if signals.signum is not None:
                    raise run.interrupted(signals.signum, trainer.state.max_steps)
                metrics = _metrics(p, cfg, method, trainer, result, memory)
                metrics["seeded_weights_sha256"] = fingerprint  # same seed, same start, on any process count
            require_finite_metrics(
                metrics, "refusing to publish the run (its model's outputs are not finite)"
            )
            if trainer.is_world_process_zero():
                _save_outputs(p, run.partial, method)
                write_atomic(run.partial / "metrics.json", json.dumps(metrics, indent=2) + "\n")
                if cfg.train.save_strategy == "no":  # the last-step and interrupt checkpoints were insurance
                    shutil.rmtree(run.checkpoints, ignore_errors=True)
                run.release()
                publish_dir(run.partial, run.out, "run", force)
            return metrics
        except BaseException as exc:
            error = run.abandon(exc, signals.aborted_by)
            if error is exc:
                raise
            raise error from None


def _batch_line(cfg: RunConfig, world_size: int) -> str:
    t = cfg.train
    total = t.batch_size * t.gradient_accumulation_steps * world_size
    return (
        f"global batch {total} = {t.batch_size} per device x {t.gradient_accumulation_steps} accumulation "
        f"step(s) x {world_size} process(es)"
    )


def _final_validation(trainer) -> dict[str, float] | None:
    """The validation metrics the Trainer already computed at the last step (end of the last epoch)."""
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and "eval_loss" in entry:
            return {k: float(entry[f"eval_{k}"]) for k in ("accuracy", "f1", "loss") if f"eval_{k}" in entry}
    return None


def _metrics(p: Prepared, cfg: RunConfig, method: str, trainer, result, memory) -> dict[str, Any]:
    # Evaluating the same weights on the same split twice would cost a whole validation pass.
    validation = _final_validation(trainer) or _evaluate(trainer, p.tokenized["validation"], "validation")
    test = _evaluate(trainer, p.tokenized["test"], "test") if "test" in p.tokenized else None
    tm = result.metrics
    metrics: dict[str, Any] = {
        "method": method,
        "model": cfg.model.name,
        "data": p.data.source,
        DATA_FINGERPRINT: p.data.fingerprint,
        "validation": validation,
        "test": test,
        "trainable_params": p.build.trainable_params,
        "total_params": p.build.total_params,
        "trainable_percent": 100.0 * p.build.trainable_fraction,
        "train_seconds": float(tm.get("train_runtime", 0.0)),
        "train_samples_per_second": float(tm.get("train_samples_per_second", 0.0)),
        "train_loss": float(tm.get("train_loss", float("nan"))),
        "train_samples": len(p.tokenized["train"]),
        "epochs": float(cfg.train.epochs),
        "global_steps": int(trainer.state.global_step),
        "resumed_from_steps": (trainer.resume_record or {}).get("resumed_from", []),
        "learning_rate": cfg.train.lr_for(method),
        "batch_size": cfg.train.batch_size
        * cfg.train.gradient_accumulation_steps
        * max(1, trainer.args.world_size),
        "per_device_batch_size": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
        "world_size": trainer.args.world_size,
        "precision": cfg.train.precision,
        "seed": cfg.train.seed,
        "peak_memory_mb": peak_rss_mb() if memory.peak_mb is None else max(memory.peak_mb, peak_rss_mb()),
        "train_memory_mb": memory.train_memory_mb,
        "rss_before_train_mb": memory.before_mb,
        "label_names": p.data.label_names,
        "head": p.build.head,
    }
    if method == "lora":
        metrics["lora"] = {
            "r": cfg.lora.r,
            "alpha": cfg.lora.alpha,
            "dropout": cfg.lora.dropout,
            "rslora": cfg.lora.rslora,
            "use_dora": cfg.lora.use_dora,
            "init": cfg.lora.init,
            "rank_pattern": cfg.lora.rank_pattern,
            "alpha_pattern": cfg.lora.alpha_pattern,
            "targets": p.build.targets,
        }
    if memory.cuda_peak_mb is not None:
        metrics["cuda_peak_memory_mb"] = memory.cuda_peak_mb
    return metrics


def _save_outputs(p: Prepared, tmp: Path, method: str) -> None:
    model = p.loaded.model
    if method == "lora":
        save_adapter(
            model,
            tmp / "adapter",
            head=p.build.head,
            base_model_name_or_path=p.loaded.source,
            label_names=p.data.label_names,
            init=p.cfg.lora.init,
            model_settings={
                "name": p.cfg.model.name,
                "num_layers": p.cfg.model.num_layers,
                "revision": p.cfg.model.revision,
            },
        )
    else:
        require_finite(model.state_dict(), f"refusing to write the model to {tmp / 'model'}")
        model.save_pretrained(tmp / "model", safe_serialization=True)
        p.loaded.tokenizer.save_pretrained(tmp / "model")
