"""vader-sentiment and vader-sentiment-domain: the four human-rated sets of Hutto & Gilbert (2014) in
the vaderSentiment sdist (tweets, Amazon review sentences, NYT editorial sentences, movie review
sentences), one row per rated text with its mean rating (`score`) and its source (`domain`).

Both names are prepared from the same rows into the same files; their presets choose the target
(``data/presets.py``): ``score`` as regression, or ``domain`` as a 4-class label. The split keeps
every document (an Amazon review, an NYT editorial: the id before ``_``) and every repeated text in
one split, so no held-out sentence has a sibling or a copy in train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_ft.data.assets.prepare import (
    VADER_LICENCE,
    count_table,
    hutto_files,
    score_table,
    write_jsonl,
)
from lora_ft.errors import LoraFtError

# domain -> its ground-truth file inside hutto_ICWSM_2014.tar.gz
VADER_SOURCES = {
    "tweets": "hutto_ICWSM_2014/tweets_GroundTruth.txt",
    "amazon_reviews": "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
    "nyt_editorials": "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
    "movie_reviews": "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
}
VADER_MAX_SCORE = 4  # the raters' scale is -4..4
VADER_SPLIT_SEED = 1234
VADER_HELD_OUT = {"validation": 0.1, "test": 0.1}  # of each domain's rows, whole groups at a time

VADER_README = """\
# {name}

The four sets of human-rated texts Hutto & Gilbert (2014) built to evaluate VADER: each text with the
mean of >= 20 human sentiment ratings in [-4, 4] (`score`) and the set it comes from (`domain`).

- task: {task}
  The same rows and files are offered as `vader-sentiment` (regression on `score`, primary metric
  Pearson) and `vader-sentiment-domain` (single-label classification of `domain`, 4 classes, primary
  metric macro-F1): pick the task by the name.
- rows: every rated text, none dropped: {counts}. (`wc -l` counts one fewer in each file: the last
  line has no line end.) Texts are as rated, HTML entities of the tweets (`&amp;`) included.
- split: per domain, {held_out} of the rows, in whole groups; a group is a document (Amazon reviews
  and NYT editorials: the id before `_`; a tweet or a movie sentence is its own) joined with every
  group holding the same text, so no held-out text has a sibling sentence or a copy in train.
  numpy default_rng({seed}).permutation over each domain's groups sorted by key: test first,
  then validation, until each reaches its share; the rest is train. {sizes}.
- fields: id (str, `<domain>/<original id>`), sentence, score (float), domain (str).
- licence: {licence}.

## Domains by split

{domains}

## Scores by split

{scores}

Source: vaderSentiment 3.3.2 source archive (PyPI), additional_resources/hutto_ICWSM_2014.tar.gz:
{files}.

- C.J. Hutto and E. Gilbert. VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
  Media Text. ICWSM 2014.
"""
VADER_TASKS = {
    "vader-sentiment": "regression on `score` (data.label_column score, problem_type regression).",
    "vader-sentiment-domain": "single-label classification of `domain` (data.label_column domain).",
}


def parse_scores(text: str, domain: str) -> list[dict]:
    """Rows of a ``*_GroundTruth.txt`` (``id<TAB>score<TAB>text``, CRLF), every one kept, in file order.

    Raises:
        LoraFtError: a line that is not three tab-separated fields, a score outside [-4, 4] (NaN and Inf
            included), or an empty text.
    """
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): see parse_ground_truth
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            source_id, score, sentence = parts[0], float(parts[1]), parts[2]
        except (IndexError, ValueError):
            score, sentence = float("nan"), ""
        # Written so that NaN fails too: a comparison with NaN is False.
        if not (-VADER_MAX_SCORE <= score <= VADER_MAX_SCORE) or not sentence.strip() or not source_id:
            raise LoraFtError(
                f"{domain} ground-truth line {lineno} is not 'id<TAB>score<TAB>text' with a score in "
                f"[-{VADER_MAX_SCORE}, {VADER_MAX_SCORE}]: {line[:60]!r}"
            )
        rows.append({"id": f"{domain}/{source_id}", "sentence": sentence, "score": score, "domain": domain})
    return rows


def _document(row_id: str) -> str:
    """``amazon_reviews/12_3`` -> ``amazon_reviews/12``; an id without ``_`` is its own document."""
    domain, _, source_id = row_id.partition("/")
    return f"{domain}/{source_id.partition('_')[0]}"


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by group key: the document (``<domain>/<doc>`` of an id ``<doc>_<n>``), then joined with every
    group that shares a text (union-find), keyed by the smallest key of what was joined."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    by_text: dict[str, str] = {}
    keys = [_document(row["id"]) for row in rows]
    for row, key in zip(rows, keys, strict=True):
        other = by_text.setdefault(row["sentence"], key)
        a, b = find(key), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[str, list[dict]] = {}
    for row, key in zip(rows, keys, strict=True):
        groups.setdefault(find(key), []).append(row)
    return groups


def split_groups(rows: list[dict], seed: int = VADER_SPLIT_SEED) -> dict[str, list[dict]]:
    """Deterministic grouped split of one domain's rows (see the module docstring).

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each sorted by id; independent of input order.
    """
    groups = _groups(sorted(rows, key=lambda r: r["id"]))
    keys = sorted(groups)
    if len(keys) < 3:
        raise LoraFtError(f"only {len(keys)} groups of rows to split; need one for each of 3 splits")
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    quota = {split: share * len(rows) for split, share in VADER_HELD_OUT.items()}
    order = ["test", "validation"]
    for i in np.random.default_rng(seed).permutation(len(keys)):
        split = next((s for s in order if len(out[s]) < quota[s]), "train")
        out[split].extend(groups[keys[i]])
    return {split: sorted(v, key=lambda r: r["id"]) for split, v in out.items()}


def vader_splits(archive: Path, scratch: Path) -> dict[str, list[dict]]:
    """Every rated text of the four sets, split per domain and joined: train, validation, test."""
    paths = hutto_files(archive, scratch, *VADER_SOURCES.values())
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for domain, path in zip(VADER_SOURCES, paths, strict=True):
        for split, rows in split_groups(parse_scores(path.read_text(encoding="utf-8"), domain)).items():
            splits[split].extend(rows)
    return splits


def prepare_vader(name: str, archive: Path, out: Path, scratch: Path) -> None:
    splits = vader_splits(archive, scratch)
    for split, rows in splits.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    per_domain = {d: sum(r["domain"] == d for v in splits.values() for r in v) for d in VADER_SOURCES}
    readme = VADER_README.format(
        name=name,
        task=VADER_TASKS[name],
        counts=", ".join(f"{d} {n}" for d, n in per_domain.items()) + f", {sum(per_domain.values())} in all",
        held_out=" and ".join(f"{share:.0%} {split}" for split, share in VADER_HELD_OUT.items()),
        seed=VADER_SPLIT_SEED,
        sizes=", ".join(f"{len(v)} {k}" for k, v in splits.items()),
        licence=VADER_LICENCE,
        domains=count_table(splits, "domain"),
        scores=score_table(splits, "score"),
        files=", ".join(Path(p).name for p in VADER_SOURCES.values()),
    )
    (out / "README.md").write_text(readme, encoding="utf-8")
