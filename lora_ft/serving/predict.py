"""Inference: batched logits for many sentences (or text pairs), label predictions, and evaluation on a
data split.

Sentences are tokenized once, sorted by length and batched, so each batch pads only to its own
longest sentence; results come back in the input order. A model trained on text pairs
(``data.text_pair_column``) gets pairs, encoded as in training (``data/tokenization.py``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from lora_ft.config import DataConfig
from lora_ft.data.loading import LoadedData, load_data
from lora_ft.data.metrics import classification_metrics, f1_average
from lora_ft.data.presets import apply_preset
from lora_ft.data.task import SENTENCE2, Task
from lora_ft.errors import LoraFtError
from lora_ft.serving.artifacts import Artifact

log = logging.getLogger("lora_ft")

DEFAULT_BATCH_SIZE = 64


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise LoraFtError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LoraFtError("--device cuda needs a CUDA GPU; use cpu")
    return resolved


def _progress(enabled: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("classifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled or not console.is_terminal,
    )


_CHARS_PER_TOKEN = 16  # a first guess at how much text holds max_length tokens; raised 4x until it does
_LAST_SPACE = re.compile(r"\s\S*\Z")


def _head(text: str, tokenizer, max_length: int) -> str:
    """A prefix of ``text`` that holds all of its first ``max_length`` tokens: ``text`` itself unless long.

    The tokenizer encodes the whole of what it is given before truncating, so a 23 MB line would cost
    gigabytes of token offsets to keep 128 tokens. The prefix ends at whitespace, where pre-tokenizers
    split, so its tokens are the full text's up to there and truncation keeps the same ones.
    """
    cut = max_length * _CHARS_PER_TOKEN
    while cut < len(text):
        space = _LAST_SPACE.search(text, 0, cut)
        head = text[: space.start()] if space else text[:cut]
        if len(tokenizer(head, add_special_tokens=False)["input_ids"]) >= max_length:
            return head
        cut *= 4
    return text


def predict_logits(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    text_pairs: list[str] | None = None,
    max_length: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Logits ``(N, K)`` (float32, input order) of ``model`` for ``texts``, truncated to ``max_length`` tokens.

    Args:
        text_pairs: the second text of each pair (N of them), for a model trained on pairs: each pair
            is one sequence, ``tokenizer(text, text_pair)``, truncated ``longest_first``.
        progress: show a progress bar on stderr (when it is a terminal).
    """
    if batch_size < 1:
        raise LoraFtError(f"--batch-size must be >= 1, got {batch_size}")
    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model.to(device)
    heads = [_head(t, tokenizer, max_length) for t in texts]
    pair_heads = None if text_pairs is None else [_head(t, tokenizer, max_length) for t in text_pairs]
    encoded = tokenizer(heads, pair_heads, truncation="longest_first", max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    bar = _progress(progress)
    with bar, torch.inference_mode():
        task = bar.add_task("classifying", total=len(texts))
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            width = int(lengths[idx].max())
            batch = {}
            for key in keys:
                fill = pad_id if key == "input_ids" else 0
                arr = np.full((len(idx), width), fill, dtype=np.int64)  # (B, T)
                for row, i in enumerate(idx):
                    ids = encoded[key][i]
                    arr[row, : len(ids)] = ids
                batch[key] = torch.from_numpy(arr).to(device)
            out[idx] = model(**batch).logits.float().cpu().numpy()
            bar.advance(task, len(idx))
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:  # softmax and argmax of NaN give a probability of nan and class 0: never a prediction
        raise LoraFtError(
            f"the model's logits are not finite for {bad.size} of {len(texts)} inputs (first: input "
            f"{bad[0] + 1}, {out[bad[0]].tolist()}): its weights are NaN or overflow; retrain it (a lower "
            "train.learning_rate) or use another model"
        )
    return out


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]
    text_pair: str | None = None


def _takes_pairs(artifact: Artifact) -> bool:
    """Whether ``artifact`` was trained on text pairs: its task record (an adapter's header, the run's
    metrics.json), else its training data's ``text_pair_column`` (a preset's too); else single texts,
    as every model before tasks were recorded."""
    if artifact.adapter is not None and artifact.adapter.task is not None:
        return Task.from_dict(artifact.adapter.task, f"adapter {artifact.adapter.path}").text_pair
    if artifact.metrics and "task" in artifact.metrics:
        return Task.from_dict(artifact.metrics["task"], f"{artifact.describe()}: metrics").text_pair
    return artifact.data is not None and apply_preset(artifact.data).text_pair_column is not None


def pair_columns(artifact: Artifact) -> tuple[str, str] | None:
    """None for a model of single texts; for a model of text pairs, the columns a pair file is read
    from: its training data's (``text_column``, ``text_pair_column``), else (``sentence``, ``sentence2``).

    Raises:
        LoraFtError: a malformed task record.
    """
    if not _takes_pairs(artifact):
        return None
    data = apply_preset(artifact.data) if artifact.data is not None else None
    if data is not None and data.text_pair_column is not None:
        return data.text_column, data.text_pair_column
    return "sentence", SENTENCE2


def predict(
    artifact: Artifact,
    texts: list[str],
    *,
    text_pairs: list[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = False,
) -> list[Prediction]:
    """The most likely label of each text (or pair: ``text_pairs`` holds the second texts), with its
    softmax probability and every label's."""
    logits = predict_logits(
        artifact.model,
        artifact.tokenizer,
        texts,
        text_pairs=text_pairs,
        max_length=artifact.max_length,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    names = artifact.label_names
    seconds = text_pairs if text_pairs is not None else [None] * len(texts)
    return [
        Prediction(
            text,
            names[int(p.argmax())],
            float(p.max()),
            {n: float(v) for n, v in zip(names, p, strict=True)},
            second,
        )
        for text, second, p in zip(texts, seconds, probs, strict=True)
    ]


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
        ``{"split", "data", "samples", "accuracy", "f1", "f1_average", "loss"}``; ``f1_average`` says
        how F1 was averaged (``metrics.f1_average``: binary or macro).

    Raises:
        LoraFtError: labels that do not fit the model.
    """
    ds = loaded.splits[split]
    labels = label_map(loaded.label_names, artifact.label_names)[np.asarray(ds["label"][:])]
    logits = predict_logits(
        artifact.model,
        artifact.tokenizer,
        ds["sentence"][:],
        text_pairs=ds[SENTENCE2][:] if SENTENCE2 in ds.column_names else None,
        max_length=artifact.max_length,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {
        "split": split,
        "data": loaded.source,
        "samples": len(labels),
        **classification_metrics(logits, labels),
        "f1_average": f1_average(logits.shape[-1]),
        "loss": float(loss),
    }
