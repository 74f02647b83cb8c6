"""Evaluation: a model's metrics and loss on one split of a data set, by the model's task.

The data's labels are put in the model's terms first (``label_map``: by name, or by id when the data's
labels are bare ids), so a model is never scored against a guess.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch

from lora_ft.config import DataConfig
from lora_ft.data import metrics
from lora_ft.data.loading import LoadedData, load_data
from lora_ft.data.task import SENTENCE2, TOKENS, Task
from lora_ft.errors import LoraFtError
from lora_ft.serving.artifacts import Artifact
from lora_ft.serving.predict import DEFAULT_BATCH_SIZE, predict_logits, resolve_device
from lora_ft.serving.tokens import padded, word_logits

log = logging.getLogger("lora_ft")

_GENERIC = re.compile(r"(LABEL_)?\d+")


def label_map(data_names: list[str], model_names: list[str]) -> np.ndarray:
    """Data label id -> model label id, by name; by position only when the data's labels are bare ids.

    Integer labels (``0``, ``1``) name no class: they are the model's ids. Named labels are matched by
    name (saying so when the order differs); names that the model does not have cannot be matched, and
    matching them by position would score the model against a guess.

    Raises:
        LoraFtError: data labels that are names the model does not predict, or more ids than it has.
    """
    if all(n in model_names for n in data_names):
        mapping = np.array([model_names.index(n) for n in data_names])
        if list(mapping) != list(range(len(data_names))):
            log.warning(
                "data labels matched to the model's by name (data id -> model id): %s",
                ", ".join(
                    f"{n} {i} -> {j}" for i, (n, j) in enumerate(zip(data_names, mapping, strict=True))
                ),
            )
        return mapping
    if all(_GENERIC.fullmatch(n) for n in data_names) and len(data_names) <= len(model_names):
        return np.arange(len(data_names))
    raise LoraFtError(
        f"the data has labels {', '.join(data_names)} but the model predicts {', '.join(model_names)}; "
        "they cannot be matched by name: evaluate on data with the model's label names (or its ids "
        f"0..{len(model_names) - 1})"
    )


def eval_split(cfg: DataConfig, split: str) -> tuple[LoadedData, str]:
    """The data ``cfg`` names, read, and the split to evaluate: ``split``, or validation in place of a
    test split the data does not have (a single file, a hub set with an unlabelled test), saying so.

    Raises:
        LoraFtError: unreadable data, or a missing split other than test.
    """
    loaded = load_data(cfg)
    if split == "test" and split not in loaded.splits and "validation" in loaded.splits:
        log.warning("data %s has no test split; evaluating on its validation split", loaded.source)
        return loaded, "validation"
    if split not in loaded.splits:
        raise LoraFtError(
            f"data {loaded.source} has no {split} split; splits are: {', '.join(loaded.splits)}"
        )
    return loaded, split


def evaluate(
    artifact: Artifact,
    data: DataConfig | None = None,
    split: str = "test",
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """Accuracy, F1 and mean cross-entropy loss of ``artifact`` on one split of ``data``.

    ``data`` defaults to the data the model was trained on (run dirs, merged exports), else the
    built-in ``rt-sentences``; a test split it lacks is replaced by its validation split (``eval_split``).
    Sentences are truncated as in training (``artifact.max_length``).

    Returns:
        see ``evaluate_loaded``.

    Raises:
        LoraFtError: unreadable data, a missing split, or labels that do not fit the model.
    """
    loaded, split = eval_split(data or artifact.data or DataConfig(), split)
    return evaluate_loaded(artifact, loaded, split, batch_size=batch_size, device=device, progress=progress)


def evaluate_loaded(
    artifact: Artifact,
    loaded: LoadedData,
    split: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """``evaluate`` on data already read (``eval_split``): several models, one read.

    Returns:
        ``{"split", "data", "samples", "problem_type", "loss", "f1_average" (single-label)}`` and
        ``metrics.task_metrics``'s keys for ``artifact.task`` (scalars, and per-class rows and the
        confusion matrix for single-label, per-label rows for multi-label); ``f1_average`` says how
        ``f1`` was averaged (binary or macro). The loss is the one the task trains with: cross-entropy,
        BCE-with-logits or MSE.

    Raises:
        LoraFtError: labels that do not fit the model.
    """
    task = artifact.task
    ds = loaded.splits[split]
    if task.is_token_classification:
        logits, labels = _token_outputs(artifact, loaded, split, batch_size, device)
    else:
        labels = model_labels(task, loaded, np.asarray(ds["label"][:]))
        logits = _logits(artifact, ds, batch_size, device, progress)
    out = {
        "split": split,
        "data": loaded.source,
        "samples": len(labels),
        "problem_type": task.problem_type,
        **metrics.task_metrics(task, logits, labels),
        "loss": _loss(task, logits, labels),
    }
    if task.is_single_label:
        out["f1_average"] = metrics.f1_average(task.num_labels)
    return out


def _logits(artifact: Artifact, ds, batch_size: int, device: str | None, progress: bool) -> np.ndarray:
    return predict_logits(
        artifact.model,
        artifact.tokenizer,
        ds["sentence"][:],
        text_pairs=ds[SENTENCE2][:] if SENTENCE2 in ds.column_names else None,
        max_length=artifact.max_length,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


def _token_outputs(
    artifact: Artifact, loaded: LoadedData, split: str, batch_size: int, device: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """A token task's ``(N, W, K)`` per-word logits and ``(N, W)`` tag ids in the model's terms."""
    ds = loaded.splits[split]
    mapping = label_map(list(loaded.label_names), list(artifact.task.label_names))
    check_same_task(artifact.task, loaded)
    logits, scored = word_logits(
        artifact.model,
        artifact.tokenizer,
        ds[TOKENS][:],
        max_length=artifact.max_length,
        batch_size=batch_size,
        device=resolve_device(device),
    )
    return padded(logits, scored, [mapping[np.asarray(t, dtype=np.int64)].tolist() for t in ds["label"][:]])


def check_same_task(task: Task, loaded: LoadedData) -> None:
    """Refuse data of another problem type than the model's ``task``."""
    if loaded.task.problem_type != task.problem_type:
        raise LoraFtError(
            f"the data {loaded.source} is a {loaded.task.problem_type} task but the model was trained for "
            f"{task.problem_type}; evaluate on data of the model's task (data.problem_type)"
        )


def model_labels(task: Task, loaded: LoadedData, labels: np.ndarray) -> np.ndarray:
    """The data's labels in the model's terms: class ids through ``label_map`` (single-label), multi-hot
    columns in the model's label order (multi-label), scores as they are (regression).

    Raises:
        LoraFtError: data of another problem type than the model's, or labels the model does not have.
    """
    check_same_task(task, loaded)
    if task.is_regression:
        return labels.astype(np.float32).reshape(-1)
    mapping = label_map(list(loaded.label_names), list(task.label_names))
    if task.is_single_label:
        return mapping[labels]
    hot = np.zeros((len(labels), task.num_labels), dtype=np.float32)  # (N, K) in the model's label order
    hot[:, mapping] = labels.reshape(len(labels), -1)
    return hot


def _loss(task: Task, logits: np.ndarray, labels: np.ndarray) -> float:
    """The mean loss the task trains with (what ``config.problem_type`` makes transformers compute)."""
    x, y = torch.from_numpy(logits), torch.from_numpy(labels)
    if task.is_token_classification:  # cross-entropy over the scored words (IGNORE skipped)
        return float(torch.nn.functional.cross_entropy(x.reshape(-1, x.shape[-1]), y.reshape(-1)).item())
    if task.is_regression:
        return float(torch.nn.functional.mse_loss(x[:, 0], y).item())
    if task.is_multi_label:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(x, y).item())
    return float(torch.nn.functional.cross_entropy(x, y).item())
