"""The probe a merge is verified on: validation sentences of the data the model was trained on (their
labels in the model's terms), else built-in sentences; and the model's raw outputs on it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from lora_ft.data.loading import load_data
from lora_ft.data.task import TOKENS
from lora_ft.errors import LoraFtError
from lora_ft.serving.artifacts import Artifact
from lora_ft.serving.evaluate import check_same_task, label_map, model_labels
from lora_ft.serving.predict import predict_logits
from lora_ft.serving.tokens import split_words, word_logits

log = logging.getLogger("lora_ft")

DEFAULT_PROBE_SIZE = 64
# Used when the run's data is unknown or unreadable: varied length, sentiment and vocabulary.
PROBE_SENTENCES = [
    "A gorgeous, deeply moving film with two superb performances.",
    "The plot is a tedious mess and the jokes fall flat.",
    "It's not great, but it is never boring either.",
    "An instant classic.",
    "I wanted to leave after twenty minutes.",
    "The cinematography is stunning, even when the script wobbles in its second half.",
    "Dull, lifeless and far too long.",
    "Sharp, funny and surprisingly warm.",
    "The film opens in Paris in 1962.",
    "Neither the director nor the cast seems to know what this story is about.",
    "A small, wise movie that earns every one of its tears.",
    "Predictable from start to finish.",
    "Its ambition outruns its budget, yet the result is strangely affecting.",
    "Worst sequel of the decade.",
    "You will laugh, and then you will think about it for days.",
    "Two hours of noise.",
]


@dataclass
class Probe:
    texts: list[str]
    labels: np.ndarray | None  # in the model's terms (evaluate.model_labels), when the sentences have labels
    source: str
    # A token task's probe: each text's words; its outputs are the scored words' logits, all rows'
    # concatenated ``(M, K)``, and ``labels`` their tags ``(M,)``.
    words: list[list[str]] | None = None


def probe_batch(artifact: Artifact, size: int = DEFAULT_PROBE_SIZE) -> Probe:
    """``size`` validation sentences of the data the model was trained on, else the built-in sentences."""
    if size < 1:
        raise LoraFtError(f"--probe must be >= 1, got {size}")
    if artifact.data is not None:
        try:
            data = load_data(artifact.data)
        except LoraFtError as exc:
            log.warning("cannot read the run's data for the merge probe (%s); using built-in sentences", exc)
        else:
            ds = data.splits["validation"]
            ds = ds.select(range(min(size, len(ds))))
            source = f"{len(ds)} validation sentences of {data.source}"
            if artifact.task.is_token_classification:
                check_same_task(artifact.task, data)
                mapping = label_map(list(data.label_names), list(artifact.task.label_names))
                tags = [mapping[np.asarray(t, dtype=np.int64)] for t in ds["label"][:]]
                words = ds[TOKENS][:]
                return Probe([" ".join(w) for w in words], tags, source, words)
            labels = model_labels(artifact.task, data, np.asarray(ds["label"][:]))
            return Probe(ds["sentence"][:], labels, source)
    texts = PROBE_SENTENCES[:size]
    words = (
        [[w for w, _, _ in split_words(t)] for t in texts] if artifact.task.is_token_classification else None
    )
    return Probe(texts, None, f"{len(texts)} built-in sentences", words)


def probe_outputs(artifact: Artifact, probe: Probe) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's raw outputs on the probe, and the probe's labels in the same rows: ``(N, K)`` logits,
    or for a token task the scored words' ``(M, K)`` logits and their tags ``(M,)``."""
    model, tok = artifact.model, artifact.tokenizer
    if probe.words is None:
        return predict_logits(
            model, tok, probe.texts, max_length=artifact.max_length, device="cpu"
        ), probe.labels
    logits, scored = word_logits(
        model, tok, probe.words, max_length=artifact.max_length, batch_size=64, device=torch.device("cpu")
    )
    flat = np.concatenate([x[flags] for x, flags in zip(logits, scored, strict=True)])
    if probe.labels is None:
        return flat, None
    return flat, np.concatenate([t[flags] for t, flags in zip(probe.labels, scored, strict=True)])
