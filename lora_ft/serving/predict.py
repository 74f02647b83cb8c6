"""Inference: batched logits for many sentences (or text pairs), and predictions from them by the
model's task.

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

from lora_ft.data.presets import apply_preset
from lora_ft.data.task import SENTENCE2, Task
from lora_ft.errors import LoraFtError
from lora_ft.serving.artifacts import Artifact
from lora_ft.serving.tokens import Entity, entities, split_words, word_logits

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
    encoded = tokenizer(heads, text_pair=pair_heads, truncation="longest_first", max_length=max_length)
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


DEFAULT_THRESHOLD = 0.5


def check_threshold(threshold: float) -> float:
    """``threshold`` if it is strictly between 0 and 1 (a multi-label cut on sigmoid probabilities)."""
    if not 0.0 < threshold < 1.0:  # False for NaN as well: a NaN cut would select nothing, silently
        raise LoraFtError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
    return threshold


@dataclass
class Prediction:
    """One text's prediction, by the task's problem type (``data/task.py``).

    Attributes:
        label: single-label: the most likely label; multi-label: the chosen labels joined by ", "
            ("" for none); regression: "score".
        probability: single-label: ``label``'s softmax probability; else None.
        probabilities: single-label: every label's softmax probability; multi-label: every label's
            sigmoid probability; regression: empty.
        labels: multi-label: the labels with probability >= the threshold, most likely first; else None.
        score: regression: the model's output; else None.
        entities: token classification: the entities found, in text order (``label`` is then ""); else None.
    """

    text: str
    label: str
    probability: float | None
    probabilities: dict[str, float]
    text_pair: str | None = None
    labels: list[str] | None = None
    score: float | None = None
    entities: list[Entity] | None = None


def predictions_from_logits(
    task: Task,
    texts: list[str],
    logits: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    text_pairs: list[str] | None = None,
) -> list[Prediction]:
    """``logits`` ``(N, K)`` as ``task`` reads them: softmax and argmax (single-label), sigmoid and
    ``threshold`` (multi-label), the raw output (regression); ``text_pairs``: each text's second text."""
    out = _by_task(task, texts, logits, threshold)
    for prediction, second in zip(out, text_pairs or [], strict=False):
        prediction.text_pair = second
    return out


def _by_task(task: Task, texts: list[str], logits: np.ndarray, threshold: float) -> list[Prediction]:
    names = list(task.label_names)
    if task.is_regression:
        return [
            Prediction(t, names[0], None, {}, score=float(v))
            for t, v in zip(texts, logits[:, 0], strict=True)
        ]
    if task.is_multi_label:
        probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
        out = []
        for text, p in zip(texts, probs, strict=True):
            chosen = [names[i] for i in np.argsort(-p, kind="stable") if p[i] >= threshold]
            out.append(Prediction(text, ", ".join(chosen), None, _by_name(names, p), labels=chosen))
        return out
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    return [
        Prediction(text, names[int(p.argmax())], float(p.max()), _by_name(names, p))
        for text, p in zip(texts, probs, strict=True)
    ]


def _by_name(names: list[str], values: np.ndarray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, values, strict=True)}


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
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = False,
) -> list[Prediction]:
    """Each text's prediction for ``artifact.task`` (``predictions_from_logits``); ``threshold`` cuts
    multi-label probabilities."""
    check_threshold(threshold)
    if artifact.task.is_token_classification:
        return predict_entities(artifact, texts, batch_size=batch_size, device=device)
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
    return predictions_from_logits(artifact.task, texts, logits, threshold, text_pairs)


def predict_entities(
    artifact: Artifact, texts: list[str], *, batch_size: int = DEFAULT_BATCH_SIZE, device: str | None = None
) -> list[Prediction]:
    """Each text's entities (``serving/tokens.py``): the text split into words (``split_words``), each
    entity with its word span, its character span in the text and its score."""
    spans = [split_words(t) for t in texts]
    if any(not s for s in spans):
        first = next(i for i, s in enumerate(spans) if not s)
        raise LoraFtError(f"text {first + 1} has no words to tag: {texts[first]!r}")
    words = [[w for w, _, _ in s] for s in spans]
    logits, scored = word_logits(
        artifact.model,
        artifact.tokenizer,
        words,
        max_length=artifact.max_length,
        batch_size=batch_size,
        device=resolve_device(device),
    )
    out = []
    for text, span, row_words, x, flags in zip(texts, spans, words, logits, scored, strict=True):
        found = entities(artifact.task, row_words, x, flags)
        for e in found:
            e.char_start, e.char_end = span[e.start][1], span[e.end - 1][2]
            e.text = text[e.char_start : e.char_end]
        out.append(Prediction(text, "", None, {}, entities=found))
    return out
