"""Resolve what a user names (RUN_OR_MODEL) into a ready classifier, its tokenizer, labels and provenance.

Accepted, in this order:

- a run directory (``config.yaml`` plus ``adapter/`` or ``model/``), as ``lora-ft train`` writes it;
- an adapter directory (``adapter_config.json``), ours or PEFT's: the base is rebuilt from our
  metadata (name, layer cut, revision) or from ``base_model_name_or_path``, or from ``--base``;
- a plain Hugging Face model directory (``config.json``), e.g. a merged export or a full-method run's
  ``model/``; a merged export's ``lora-ft.json`` says which data and truncation it was trained with.

A hub id of a built-in model (``sentence-transformers/all-MiniLM-L6-v2``, what our adapters record)
is loaded from the pinned built-in copy, so adapters stay usable offline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig

from lora_ft.config import DataConfig, ModelConfig, RunConfig, config_from_dict, read_yaml
from lora_ft.data import assets
from lora_ft.data.labels import check_label_names
from lora_ft.data.task import TOKEN_CLASSIFICATION, Task
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import read_json_record
from lora_ft.lora.apply import apply_adapter
from lora_ft.lora.io import CONFIG_NAME, META_LABELS, Adapter, read_adapter
from lora_ft.serving.tasks import adapter_task, model_task, run_task, with_task
from lora_ft.training.layout import ADAPTER, CONFIG_FILE, METRICS_FILE, MODEL, MODEL_CONFIG, classify
from lora_ft.training.modeling import input_limit, load_error, load_model, resolve_model_path

log = logging.getLogger("lora_ft")

PROVENANCE_NAME = "lora-ft.json"  # written next to a merged export's config.json
PROVENANCE_FORMAT = 1
_FALLBACK_MAX_LENGTH = 512


@dataclass
class Artifact:
    """A classifier ready for inference (eval mode, no gradients, CPU, float32 unless saved lower).

    Attributes:
        kind: ``ADAPTER`` (LoRA layers inside, unmerged) or ``MODEL`` (a plain checkpoint), layout's names.
        path: what the user named.
        max_length: the truncation the model was trained with (or the model's own limit).
        base: the base model name the adapter was applied to (adapters only).
        data: the data the model was trained on, when known (run dirs, merged exports).
        metrics: the run's ``metrics.json``, when known.
        task: what the model predicts (``_task``): how its outputs become predictions and metrics.
    """

    model: nn.Module
    tokenizer: Any
    label_names: list[str]
    task: Task
    kind: str
    path: Path
    max_length: int
    adapter: Adapter | None = None
    base: str | None = None
    model_settings: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    data: DataConfig | None = None
    metrics: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == ADAPTER:
            return f"adapter {self.adapter.path} on {self.base}"
        return f"model {self.path}"


@dataclass
class RunRecord:
    """A run directory's resolved config and its ``metrics.json`` (None when absent or unreadable)."""

    path: Path
    config: RunConfig
    metrics: dict[str, Any] | None


def read_run(run_dir: Path | None) -> RunRecord | None:
    """The config and metrics of the run directory ``run_dir``; None for None (no run known).

    Raises:
        LoraFtError: an unreadable or invalid ``config.yaml`` (an unreadable ``metrics.json`` is skipped).
    """
    if run_dir is None:
        return None
    data = read_yaml(run_dir / CONFIG_FILE)
    try:
        config = config_from_dict(data)
    except LoraFtError as exc:
        raise LoraFtError(f"run directory {run_dir}: {CONFIG_FILE}: {exc}") from None
    metrics_path = run_dir / METRICS_FILE
    metrics = None
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("run directory %s: %s is not valid JSON; ignoring it", run_dir, METRICS_FILE)
    return RunRecord(run_dir, config, metrics)


def load_artifact(path: str | Path, *, base: str | None = None, trust_remote_code: bool = False) -> Artifact:
    """Load a run directory, an adapter directory or a model directory (see the module docstring).

    Args:
        path: the directory.
        base: for adapters, the base model to apply it to instead of the one it records (a built-in
            name, a directory or a hub id); the recorded layer cut still applies.
        trust_remote_code: run the model directory's own Python (its config.json's ``auto_map``). Only
            the caller grants it: a run's saved ``model.trust_remote_code`` is never followed.

    Raises:
        LoraFtError: a path that is none of the three, an adapter that does not fit its base, a base
            that cannot be found, or a model directory with no trained classification head.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise LoraFtError(
            f"{path} not found; give a run directory, an adapter directory (adapter_config.json) or a "
            "model directory (config.json)"
        )
    if not p.is_dir():
        raise LoraFtError(
            f"{path} is a file; give a run directory, an adapter directory or a model directory"
        )
    found = classify(p)
    if found.kind is None:
        listing = ", ".join(sorted(c.name for c in p.iterdir())[:8]) or "nothing"
        raise LoraFtError(
            f"{p} is not a run, adapter or model directory (no {CONFIG_FILE}, {CONFIG_NAME} or "
            f"{MODEL_CONFIG}; it holds: {listing})"
        )
    run = read_run(found.run)
    if found.weights is None:
        raise LoraFtError(
            f"run directory {p} has neither adapter/ nor model/; was the run interrupted? Train it again"
        )
    load = _from_adapter if found.weights_kind == ADAPTER else _from_model
    return load(found.weights, p, run, base, trust_remote_code)


def _builtin_or(name: str, revision: str | None) -> str:
    """A hub id whose weights are a built-in's -> the built-in name (no network needed)."""
    builtin = assets.builtin_for_hub_id(name) if revision is None else None
    return builtin or name


def _base_config(
    adapter: Adapter, run: RunRecord | None, base: str | None, trust_remote_code: bool
) -> ModelConfig:
    settings = adapter.model_settings or {}
    if run is not None:
        cfg = dataclasses.replace(run.config.model)
    else:
        name = settings.get("name") or adapter.base_model
        if not name and base is None:
            raise LoraFtError(
                f"adapter {adapter.path} does not record its base model (no base_model_name_or_path); "
                "pass it with --base"
            )
        cfg = ModelConfig(
            name=name or base,
            num_layers=adapter.num_layers,
            revision=settings.get("revision") or adapter.config.get("revision"),
        )
    if base is not None:
        cfg = dataclasses.replace(cfg, name=base, revision=None)
    name = _builtin_or(cfg.name, cfg.revision)
    return dataclasses.replace(cfg, name=name, trust_remote_code=trust_remote_code)


def _adapter_labels(adapter: Adapter, run: RunRecord | None, model_cfg: ModelConfig) -> list[str]:
    """Label names: our metadata, else the run's, else as many as the head has rows (names from the base)."""
    if adapter.label_names is not None:
        return check_label_names(adapter.label_names, f"adapter {adapter.path}: the {META_LABELS} record")
    if run is not None and run.metrics and run.metrics.get("label_names"):
        return check_label_names(run.metrics["label_names"], f"{run.path / METRICS_FILE}: label_names")
    try:
        base_config = AutoConfig.from_pretrained(
            resolve_model_path(model_cfg.name),
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise LoraFtError(f"cannot read the config of model {model_cfg.name}: {load_error(exc)}") from None
    count = adapter.num_labels or base_config.num_labels
    names = [base_config.id2label.get(i, f"LABEL_{i}") for i in range(count)]
    return names if len(set(names)) == count else [f"LABEL_{i}" for i in range(count)]


def _load_task(task: Task) -> Task:
    """What to build the model with before the task is applied (``with_task``): a token task as it is
    (its head is another class), any other as single-label over its head's outputs, as before tasks."""
    return task if task.is_token_classification else Task.legacy(task.label_names)


def _covered(module: str, head: dict[str, Any]) -> bool:
    return any(module == h or module.startswith(h + ".") or h.startswith(module + ".") for h in head)


def _ready(model: nn.Module) -> nn.Module:
    model.eval()  # LoRALinear modules are created in training mode: their dropout must be off
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _from_adapter(
    adir: Path, named: Path, run: RunRecord | None, base: str | None, trust_remote_code: bool
) -> Artifact:
    adapter = read_adapter(adir)
    model_cfg = _base_config(adapter, run, base, trust_remote_code)
    try:
        labels = _adapter_labels(adapter, run, model_cfg)
        task = adapter_task(adapter, run, labels)
        loaded = load_model(model_cfg, _load_task(task))
    except LoraFtError as exc:
        raise LoraFtError(
            f"{exc} (the base model of adapter {adir}; pass --base to use another copy)"
        ) from None
    model = loaded.model.float()  # merging and its verification happen in float32
    apply_adapter(model, adapter)
    random = [m for m in loaded.newly_initialized if not _covered(m, adapter.head)]
    if random:
        raise LoraFtError(
            f"base model {model_cfg.name} lacks {', '.join(random)}, which would be randomly initialised, and "
            f"adapter {adir} does not hold it; the adapter must be saved with it (PEFT: modules_to_save)"
        )
    settings = {"name": model_cfg.name, "num_layers": model_cfg.num_layers, "revision": model_cfg.revision}
    return Artifact(
        model=_ready(with_task(model, task)),
        tokenizer=loaded.tokenizer,
        label_names=labels,
        task=task,
        kind=ADAPTER,
        path=named,
        max_length=run.config.data.max_length if run else _model_max_length(loaded.tokenizer, model),
        adapter=adapter,
        base=model_cfg.name,
        model_settings=settings,
        run_dir=run.path if run else None,
        data=run.config.data if run else None,
        metrics=run.metrics if run else None,
    )


def _read_provenance(mdir: Path) -> dict[str, Any]:
    path = mdir / PROVENANCE_NAME
    if not path.is_file():
        return {}
    try:
        data = read_json_record(path, "merged-export record")
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s is not valid JSON; ignoring it", path)
        return {}
    return data if isinstance(data, dict) else {}


def _from_model(
    mdir: Path, named: Path, run: RunRecord | None, base: str | None, trust_remote_code: bool
) -> Artifact:
    if base is not None:
        raise LoraFtError(f"--base applies to adapters; {mdir} is a complete model")
    try:
        config = AutoConfig.from_pretrained(mdir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise LoraFtError(f"cannot read {mdir / MODEL_CONFIG}: {load_error(exc)}") from None
    labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
    check_label_names(labels, f"{mdir / MODEL_CONFIG}: id2label")
    provenance = _read_provenance(mdir)
    task = model_task(
        [
            run_task(run),
            (provenance.get("task"), f"{mdir / PROVENANCE_NAME}: task"),
        ],
        labels,
        _problem_type(config),
    )
    loaded = load_model(ModelConfig(name=str(mdir), trust_remote_code=trust_remote_code), _load_task(task))
    if loaded.newly_initialized:
        raise LoraFtError(
            f"{mdir} has no trained classification head ({', '.join(loaded.newly_initialized)} would be "
            "randomly initialised); give a fine-tuned model, a run directory or an adapter"
        )
    labels = list(task.label_names)  # a regression head's one output is "score", whatever id2label says
    data = run.config.data if run else None
    if data is None and isinstance(provenance.get("data"), dict):
        data = config_from_dict({"data": provenance["data"]}).data
    max_length = data.max_length if data else _model_max_length(loaded.tokenizer, loaded.model)
    return Artifact(
        model=_ready(with_task(loaded.model, task)),
        tokenizer=loaded.tokenizer,
        label_names=labels,
        task=task,
        kind=MODEL,
        path=named,
        max_length=max_length,
        run_dir=run.path if run else None,
        data=data,
        metrics=run.metrics if run else provenance.get("metrics"),
        provenance=provenance,
    )


def _problem_type(config) -> str | None:
    """A model config's problem type; a token classifier saved by other tools (no ``problem_type``) by its
    architecture's name (``BertForTokenClassification``)."""
    if config.problem_type is None and any(
        a.endswith("ForTokenClassification") for a in config.architectures or ()
    ):
        return TOKEN_CLASSIFICATION
    return config.problem_type


def _model_max_length(tokenizer, model: nn.Module) -> int:
    """The longest input both the tokenizer and the position embeddings accept, at most 512."""
    limit = input_limit(model, tokenizer)
    return min(limit[0], _FALLBACK_MAX_LENGTH) if limit else _FALLBACK_MAX_LENGTH
