"""Inference for token classification (data/task.py): per-word logits, the entities they tag, and the
padded arrays ``metrics.task_metrics`` scores.

A word's logits are those of its first sub-token, as training labels it (data/tokenization.py); a word
cut off by truncation, or one the tokenizer turns into no token, has none and is not scored (its
``scored`` flag is False). Raw text is split into words at whitespace and punctuation (``split_words``;
``@mentions`` and ``#hashtags`` kept whole, as in tweets), each with its character span, so an
entity's span in the text is exact. Entities are read from the predicted tags by seqeval's own
decoder, the one its metrics count with (conlleval's reading: an ``I-X`` after ``O`` opens an entity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from seqeval.metrics.sequence_labeling import get_entities
from torch import nn

from lora_ft.data.task import IGNORE, Task
from lora_ft.data.tokenization import encode_words, first_subtoken_labels
from lora_ft.errors import LoraFtError

_WORD = re.compile(r"[@#]?\w+(?:['’]\w+)*|[^\w\s]")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``text``'s words with their character spans ``(word, start, end)``: runs of word characters (with
    a leading ``@``/``#`` and inner apostrophes kept) and each other non-space character alone."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def word_logits(
    model: nn.Module,
    tokenizer,
    words: list[list[str]],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each row's per-word logits ``(W_i, K)`` (float32; zeros where not scored) and ``scored`` flags ``(W_i,)``.

    Raises:
        LoraFtError: a batch size below 1, a slow tokenizer, or logits that are not finite.
    """
    if batch_size < 1:
        raise LoraFtError(f"--batch-size must be >= 1, got {batch_size}")
    k = model.config.num_labels
    out = [np.zeros((len(w), k), dtype=np.float32) for w in words]
    scored = [np.zeros(len(w), dtype=bool) for w in words]
    if not words:
        return out, scored
    encoded, word_ids = encode_words(tokenizer, words, max_length)
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.to(device)
    with torch.inference_mode():
        for start in range(0, len(words), batch_size):
            idx = order[start : start + batch_size]
            width = int(lengths[idx].max())
            batch = {}
            for key in keys:
                arr = np.full(
                    (len(idx), width), pad_id if key == "input_ids" else 0, dtype=np.int64
                )  # (B, T)
                for row, i in enumerate(idx):
                    arr[row, : lengths[i]] = encoded[key][i]
                batch[key] = torch.from_numpy(arr).to(device)
            logits = model(**batch).logits.float().cpu().numpy()  # (B, T, K)
            if logits.ndim != 3:
                raise LoraFtError(
                    f"{type(model).__name__} gives one output per text, not one per token: it is not a "
                    "token classifier"
                )
            for row, i in enumerate(idx):
                firsts = first_subtoken_labels(word_ids[i], list(range(len(words[i]))))
                for position, word in enumerate(firsts):
                    if word != IGNORE:
                        out[i][word] = logits[row, position]
                        scored[i][word] = True
    if not all(np.isfinite(x).all() for x in out):
        raise LoraFtError(
            "the model's logits are not finite: its weights are NaN or overflow; retrain it (a lower "
            "train.learning_rate) or use another model"
        )
    return out, scored


def padded(
    logits: list[np.ndarray], scored: list[np.ndarray], tags: list[list[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of per-word logits and tag ids as ``(N, W, K)`` logits and ``(N, W)`` labels, ``IGNORE`` where
    a word is not scored or past a row's end: what ``metrics.task_metrics`` takes."""
    width = max((len(t) for t in tags), default=0)
    k = logits[0].shape[-1] if logits else 0
    x = np.zeros((len(tags), width, k), dtype=np.float32)
    y = np.full((len(tags), width), IGNORE, dtype=np.int64)
    for i, (row, flags, row_tags) in enumerate(zip(logits, scored, tags, strict=True)):
        x[i, : len(row)] = row
        y[i, : len(row_tags)] = np.where(flags, row_tags, IGNORE)
    return x, y


@dataclass
class Entity:
    """One entity found: its type, its words ``[start, end)`` (word indices), its text, its character span
    in the input (when the input was raw text), and its score: the mean over its words of the
    predicted tag's softmax probability."""

    type: str
    start: int
    end: int
    text: str
    score: float
    char_start: int | None = None
    char_end: int | None = None


def entities(task: Task, words: list[str], logits: np.ndarray, scored: np.ndarray) -> list[Entity]:
    """The entities the per-word ``logits`` ``(W, K)`` tag (unscored words read as ``O``)."""
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    best = probs.argmax(-1)
    tags = [task.label_names[int(b)] if flag else "O" for b, flag in zip(best, scored, strict=True)]
    found = []
    for kind, first, last in get_entities(tags):
        score = float(np.mean([probs[i, best[i]] for i in range(first, last + 1)]))
        found.append(Entity(kind, first, last + 1, " ".join(words[first : last + 1]), score))
    return found
