"""One training run, step by step: check the output, map the config onto the Trainer's arguments,
prepare data and model, build the Trainer with its callbacks, train, record, publish.

The run directory is built under a hidden name and renamed into place only when the run has
finished, so a crash or a bad input never leaves a half-written ``runs/<name>``; once training has
checkpointed, the hidden directory outlives an interrupt or a crash and ``--resume`` continues it.
What is built before the first step lives in ``prepare``, the ``TrainingArguments`` mapping in
``arguments``, metrics.json's contents in ``record``, the in-progress directory in ``rundir``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PrinterCallback,
    TrainingArguments,
)

from lora_ft.config import DATA_FINGERPRINT, TASK_RECORD, RunConfig, dump_config
from lora_ft.data.assets import hub_id_of, with_absolute_paths
from lora_ft.data.metrics import compute_metrics_for
from lora_ft.errors import LoraFtError
from lora_ft.failures import memory_hint
from lora_ft.finite import require_finite, require_finite_metrics
from lora_ft.fsutil import write_atomic, write_json
from lora_ft.lora.saving import save_adapter
from lora_ft.outputs import check_output_dir, publish_dir
from lora_ft.training.arguments import training_arguments
from lora_ft.training.callbacks import (
    AtTrainBegin,
    JsonlLogCallback,
    MemoryCallback,
    StopOnNonFinite,
    StopOnSignal,
)
from lora_ft.training.distributed import check_same_on_all_ranks, from_main, seeded_fingerprint
from lora_ft.training.layout import (
    ADAPTER_DIR,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    TENSORBOARD_DIR,
)
from lora_ft.training.precision import prepare_model, resolve_precision
from lora_ft.training.prepare import Prepared, prepare
from lora_ft.training.record import library_versions, run_metrics
from lora_ft.training.rundir import RunDir
from lora_ft.training.signals import StopSignals
from lora_ft.training.tracking import track
from lora_ft.training.trainer import CheckpointTrainer


def default_run_dir(config_path: str | Path | None, method: str, root: str | Path = "runs") -> Path:
    stem = Path(config_path).stem if config_path else "default"
    return Path(root) / f"{stem}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"


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
    cfg = _resolved(cfg, method)
    run = RunDir(out)
    _check_target(run, cfg, force, resume)
    cfg = with_absolute_paths(cfg)  # what config.yaml saves
    # Under torchrun / accelerate launch, building the arguments joins the process group.
    args = training_arguments(cfg, cfg.train.method, run.checkpoints, run_name=run.out.name)
    run = _main_process_run(run, args)
    with StopSignals() as signals:
        try:
            if resume:
                finished = _finished(run, args.process_index == 0, force)
                if finished is not None:
                    return finished
            return _train_into(
                run,
                cfg,
                args,
                signals,
                force=force,
                resume=resume,
                prepared=prepared,
                callbacks=callbacks,
                notify=notify,
            )
        except BaseException as exc:
            error = run.abandon(exc, signals.aborted_by)
            if error is exc:
                raise
            raise error from None


def _resolved(cfg: RunConfig, method: str | None) -> RunConfig:
    """``cfg`` training ``method``, with precision ``auto`` resolved: what config.yaml and metrics record."""
    if method is not None and method != cfg.train.method:
        cfg = copy.deepcopy(cfg)
        cfg.train.method = method
    if cfg.train.precision == "auto":
        cfg = copy.deepcopy(cfg)
        cfg.train.precision = resolve_precision("auto")
    return cfg


def _main_process_run(run: RunDir, args: TrainingArguments) -> RunDir:
    """The run directory as the main process names it, ``args.output_dir`` pointed at its checkpoints.

    A default run name is stamped by each rank's clock: rank 0's is the one.
    """
    main_out = from_main(run.out)
    if main_out == run.out:
        return run
    run = RunDir(main_out)
    args.output_dir = str(run.checkpoints)
    return run


def _check_target(run: RunDir, cfg: RunConfig, force: bool, resume: bool) -> None:
    """Refuse an ``out`` this run may not write: see ``RunDir.check_resume`` and ``check_fresh``."""
    if resume:
        run.check_resume(cfg, force)
    check_output_dir(run.out, force)
    if not resume:
        run.check_fresh(force)


def _finished(run: RunDir, main: bool, force: bool) -> dict[str, Any] | None:
    """A resumed run killed while publishing (only its metrics.json is left to do): publish it and
    return its metrics; None for a run that still has steps to train."""
    if main:
        run.claim(fresh=False)
    done = run.partial / METRICS_FILE
    finished = from_main(json.loads(done.read_text(encoding="utf-8")) if done.is_file() else None)
    if finished is not None and main:
        run.release()
        publish_dir(run.partial, run.out, "run", force)
    return finished


def _train_into(
    run: RunDir,
    cfg: RunConfig,
    args: TrainingArguments,
    signals: StopSignals,
    *,
    force: bool,
    resume: bool,
    prepared: Prepared | None,
    callbacks: list | None,
    notify: Callable[[str], None] | None,
) -> dict[str, Any]:
    """The run itself, once ``out`` is checked and the process group joined; see ``train``."""
    main = args.process_index == 0
    p, fingerprint = _prepared(run, cfg, args, prepared, resume)
    if main and not resume:
        run.claim(fresh=True)
    start = from_main(run.start_checkpoint(args.world_size) if main else None) if resume else None
    # Written once the resumed state has been checked (a budget below its step is refused), so a
    # refused resume leaves the config that its resume command continues.
    records = {
        "versions": library_versions(),
        DATA_FINGERPRINT: p.data.fingerprint,
        TASK_RECORD: p.data.task.to_dict(),
    }
    config_text = dump_config(cfg, records)
    if main and notify is not None:
        notify(_batch_line(cfg, args.world_size))
    memory = MemoryCallback()
    patience = cfg.train.early_stopping_patience
    stopping = [EarlyStoppingCallback(patience)] if patience is not None else []
    trainer = _trainer(
        p, args, run, [memory, *stopping, *(callbacks or [])], signals, config_text if main else None
    )
    with track(trainer, cfg, run.partial / TENSORBOARD_DIR) as trackers:
        with memory_hint(cfg.train.batch_size, cfg.train.eval_batch_size, cfg.data.max_length):
            result = trainer.train(resume_from_checkpoint=str(start) if start else None)
            if signals.signum is not None:
                raise run.interrupted(signals.signum, trainer.state.max_steps)
            metrics = run_metrics(p, cfg, cfg.train.method, trainer, result, memory)
            metrics["seeded_weights_sha256"] = fingerprint  # same seed, same start, on any process count
        require_finite_metrics(metrics, "refusing to publish the run (its model's outputs are not finite)")
        trackers.metrics = metrics
    if trainer.is_world_process_zero():
        _save_outputs(p, run.partial, cfg.train.method, metrics)
        write_json(run.partial / METRICS_FILE, metrics)
        if cfg.train.save_strategy == "no":  # the last-step and interrupt checkpoints were insurance
            shutil.rmtree(run.checkpoints, ignore_errors=True)
        run.release()
        publish_dir(run.partial, run.out, "run", force)
    return metrics


def _prepared(
    run: RunDir, cfg: RunConfig, args: TrainingArguments, prepared: Prepared | None, resume: bool
) -> tuple[Prepared, str]:
    """Data and model ready to train on every rank, and the sha256 of the seeded weights."""
    # The main process tokenizes into the shared cache first; the others then read it from there.
    with args.main_process_first(local=False, desc="loading data and model"):
        p = prepared or prepare(cfg, cfg.train.method)
    if resume:
        changed = from_main(run.changed_data(p.data.fingerprint) if args.process_index == 0 else None)
        if changed is not None:
            raise LoraFtError(changed)
    prepare_model(p.loaded.model, cfg.train.precision, cfg.train.method, cfg.train.gradient_checkpointing)
    fingerprint = seeded_fingerprint(p.loaded.model, p.loaded.newly_initialized)
    check_same_on_all_ranks(fingerprint)
    return p, fingerprint


def _trainer(
    p: Prepared,
    args: TrainingArguments,
    run: RunDir,
    callbacks: list,
    signals: StopSignals,
    config_text: str | None,
) -> CheckpointTrainer:
    """The Trainer of the run, logging to log.jsonl; ``config_text`` is written when training begins."""
    # Our classifiers average the loss over the batch and ignore num_items_in_batch; a model whose
    # forward takes **kwargs is assumed to sum over them, and transformers 5 then skips dividing the
    # loss by the accumulation steps and multiplies it by the world size: gradients grow with both.
    p.loaded.model.accepts_loss_kwargs = False
    trainer = CheckpointTrainer(
        model=p.loaded.model,
        args=args,
        train_dataset=p.tokenized["train"],
        eval_dataset=p.tokenized["validation"],
        # A token task pads its per-position labels too (with -100, which the loss skips).
        data_collator=(
            DataCollatorForTokenClassification(p.loaded.tokenizer)
            if p.data.task.is_token_classification
            else DataCollatorWithPadding(p.loaded.tokenizer)
        ),
        processing_class=p.loaded.tokenizer,
        compute_metrics=compute_metrics_for(p.data.task),
        callbacks=[JsonlLogCallback(run.partial / LOG_FILE), StopOnNonFinite(), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and log.jsonl replace its dict prints
    trainer.add_callback(StopOnSignal(signals))
    if config_text is not None:
        trainer.add_callback(AtTrainBegin(lambda: write_atomic(run.partial / CONFIG_FILE, config_text)))
    return trainer


def _batch_line(cfg: RunConfig, world_size: int) -> str:
    t = cfg.train
    total = t.batch_size * t.gradient_accumulation_steps * world_size
    return (
        f"global batch {total} = {t.batch_size} per device x {t.gradient_accumulation_steps} accumulation "
        f"step(s) x {world_size} process(es)"
    )


def _save_outputs(p: Prepared, tmp: Path, method: str, metrics: dict[str, Any]) -> None:
    """The trained weights into the run directory ``tmp``: the adapter (lora, with the tokenizer and a
    model card of ``metrics``), else the whole model."""
    model = p.loaded.model
    if method == "lora":
        save_adapter(
            model,
            tmp / ADAPTER_DIR,
            head=p.build.head,
            # A built-in is recorded by its hub id, so PEFT users online get the same weights.
            base_model_name_or_path=hub_id_of(p.loaded.source) or p.loaded.source,
            label_names=p.data.label_names,
            task=p.data.task.to_dict(),
            init=p.cfg.lora.init,
            model_settings={
                "name": p.cfg.model.name,
                "num_layers": p.cfg.model.num_layers,
                "revision": p.cfg.model.revision,
            },
            tokenizer=p.loaded.tokenizer,
            metrics=metrics,
            local_base=p.loaded.path if Path(p.loaded.path).is_dir() else None,
        )
    else:
        require_finite(model.state_dict(), f"refusing to write the model to {tmp / MODEL_DIR}")
        model.save_pretrained(tmp / MODEL_DIR, safe_serialization=True)
        p.loaded.tokenizer.save_pretrained(tmp / MODEL_DIR)
