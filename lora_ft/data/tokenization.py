"""Tokenization of loaded splits, cached on disk under a key of everything that shapes the result
(the tokenizer's vocabulary and rules, ``max_length``, the label names, whether inputs are pairs, every
split's content); a cached result appears only by rename, so a directory that exists is complete.

A pair task (``sentence`` and ``sentence2``) is tokenized as the model's pair encoding,
``tokenizer(text, text_pair)``: one sequence with the model's separator between the texts (and
``token_type_ids`` 0/1 for BERT), truncated ``longest_first`` so the longer text loses tokens first.

A token task (``tokens``: a list of words) is tokenized word by word (``is_split_into_words``, a fast
tokenizer's ``word_ids()``): each word's tag goes to its first sub-token and every other position
(later sub-tokens, special tokens) gets ``IGNORE`` (-100), which the loss and the metrics skip
(Devlin et al. 2019, §5.3). Words cut off by ``max_length``, and words the tokenizer turns into no
token at all, are not scored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import datasets

from lora_ft.data import assets
from lora_ft.data.loading import LoadedData
from lora_ft.data.sources import cache_full, content_hash
from lora_ft.data.task import IGNORE, SENTENCE2, TOKENS
from lora_ft.errors import LoraFtError
from lora_ft.failures import is_disk_full
from lora_ft.fsutil import move_into_place, staging_dir

logger = logging.getLogger("lora_ft")

TOKENIZED_FORMAT = 1


def tokenized_cache_dir(data: LoadedData, tokenizer, max_length: int) -> Path:
    """Where ``tokenize_data`` keeps its result: ``<cache>/tokenized/<tokenizer>-<max_length>-<hash>``.

    The hash covers the tokenizer's vocabulary and rules (``backend_tokenizer.to_str()``), its name,
    ``max_length``, the label names, whether inputs are pairs and every split's content, so any change
    gives a fresh directory.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        rules = json.loads(backend.to_str())
        # Calling the tokenizer stores its last truncation/padding settings in the backend; not vocabulary.
        rules.pop("truncation", None)
        rules.pop("padding", None)
    else:
        rules = tokenizer.get_vocab()
    rules = json.dumps(rules, sort_keys=True, ensure_ascii=False)  # ascii-escaping a 30k vocab costs 0.1 s
    meta = {
        "format": TOKENIZED_FORMAT,
        "tokenizer": tokenizer.name_or_path,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "truncation_side": tokenizer.truncation_side,
        "max_length": max_length,
        "label_names": data.label_names,
        "text_pair": data.task.text_pair,
    }
    if data.task.is_token_classification:
        meta["problem_type"] = data.task.problem_type
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode("utf-8"))
    h.update(hashlib.sha256(rules.encode("utf-8")).digest())
    for split, ds in data.splits.items():
        h.update(split.encode("utf-8"))
        h.update(content_hash(ds))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(tokenizer.name_or_path).name or "tokenizer")
    return assets.cache_root() / "tokenized" / f"{slug}-{max_length}-{h.hexdigest()[:16]}"


def encode_words(tokenizer, words: list[list[str]], max_length: int) -> tuple[dict, list[list[int | None]]]:
    """``words`` (each row a list of words) tokenized word by word, truncated to ``max_length``; and each
    row's ``word_ids`` (position -> the word it belongs to, None for special tokens).

    Raises:
        LoraFtError: a slow tokenizer, which cannot say which word a token belongs to.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise LoraFtError(
            f"token classification needs a fast tokenizer (word_ids()); {type(tokenizer).__name__} is not "
            "one: use a model that ships a tokenizer.json"
        )
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    return encoded, [encoded.word_ids(i) for i in range(len(words))]


def first_subtoken_labels(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """Position -> the tag of the word it starts, ``IGNORE`` for later sub-tokens and special tokens."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE if word is None or word == previous else tags[word])
        previous = word
    return out


def _encode_tokens(tokenizer, batch: dict[str, list], max_length: int) -> dict[str, list]:
    encoded, word_ids = encode_words(tokenizer, batch[TOKENS], max_length)
    encoded = dict(encoded)
    encoded["labels"] = [
        first_subtoken_labels(ids, tags) for ids, tags in zip(word_ids, batch["label"], strict=True)
    ]
    encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
    return encoded


def tokenize_data(data: LoadedData, tokenizer, max_length: int) -> datasets.DatasetDict:
    """Tokenize every split (truncation to ``max_length``, no padding), cached on disk.

    Returns:
        A ``DatasetDict`` with the splits of ``data`` and columns ``input_ids``, ``attention_mask``
        (``token_type_ids`` when the tokenizer gives them), ``labels`` and ``length`` (the token count,
        of both texts for a pair, for length-grouped batching). Padding is left to
        ``DataCollatorWithPadding``.
    """
    target = tokenized_cache_dir(data, tokenizer, max_length)
    if target.is_dir():  # complete by construction: it only appears by rename
        logger.info("tokenized data from cache: %s", target)
        return datasets.load_from_disk(str(target))

    pair = data.task.text_pair
    words = data.task.is_token_classification

    def encode(batch: dict[str, list]) -> dict[str, list]:
        if words:
            return _encode_tokens(tokenizer, batch, max_length)
        if pair:
            encoded = tokenizer(
                batch["sentence"], batch[SENTENCE2], truncation="longest_first", max_length=max_length
            )
        else:
            encoded = tokenizer(batch["sentence"], truncation=True, max_length=max_length)
        encoded = dict(encoded)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    inputs = [TOKENS] if words else ["sentence", SENTENCE2] if pair else ["sentence"]
    tokenized = datasets.DatasetDict()
    for split, ds in data.splits.items():
        # An explicit fingerprint spares datasets from hashing the tokenizer (slow, and random for some).
        ds = ds.map(
            encode,
            batched=True,
            # A token task's labels become per position (with IGNORE), no longer the words' ClassLabels.
            remove_columns=[*inputs, "label"] if words else inputs,
            keep_in_memory=True,
            new_fingerprint=f"{target.name}-{split}",
            desc=f"tokenizing {split}",
        )
        tokenized[split] = ds if words else ds.rename_column("label", "labels")
    try:
        _save_tokenized(tokenized, target)
    except OSError as exc:
        if is_disk_full(exc):
            raise cache_full(exc, target.parent) from None
        raise
    logger.info("tokenized data cached in %s", target)
    return datasets.load_from_disk(str(target))


def _save_tokenized(tokenized: datasets.DatasetDict, target: Path) -> None:
    assets.cache_dir(target.parent.name)  # a cache that is a file or read-only: one line naming LORA_FT_CACHE
    with staging_dir(target.parent, f".{target.name}.tmp-") as tmp:
        try:
            tokenized.save_to_disk(str(tmp))
            move_into_place(tmp, target)
        except OSError:
            if not target.is_dir():
                raise  # a real failure, not another process having saved the same key first
