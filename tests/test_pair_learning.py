"""A pair task whose label depends on both texts is learned, and cannot be from one text alone: the pair
encoding really puts both texts in front of the model (issue #13's acceptance).

The task, from real sentences of two built-in sets: "are text_a and text_b from the same source?" Each
text is a Rotten Tomatoes review sentence or a disaster-response message with probability 1/2, drawn
independently, so either text alone says nothing about the label (exactly chance), while the pair
decides it. The identical sentence against another of the same length stayed at chance (0.50) on
2 layers of the built-in model with 320 rows (LoRA and full fine-tuning alike), and this task on 1 or 3
layers too (0.49, 0.51). On all 6 layers, 400 rows for 2 epochs gave 0.575 (while the source of text_a
alone, as the label, reached 0.925 on that budget), and 800 rows brought the training loss to 0.35 by
the second epoch: hence 800 rows here. Measured with this test's seed 0: the pair 0.870 held-out
accuracy, text_a alone 0.535 (both runs 126 s on a loaded 2-core machine).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from lora_ft.config import load_config
from lora_ft.data import assets
from lora_ft.training.train import train

TRAIN, HELD_OUT = 800, 200


def _texts(name: str) -> list[str]:
    path = Path(assets.ensure(name)) / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r["sentence"] for r in rows if len(r["sentence"].split()) >= 5]


def _write(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _write_same_source_task(root: Path, seed: int) -> tuple[Path, Path]:
    """``root/pair`` (sentence, sentence2, label) and ``root/single`` (the same rows, text_b left out)."""
    rng = random.Random(seed)
    sources = [_texts("rt-sentences"), _texts("disaster-response-genre")]
    for texts in sources:
        rng.shuffle(texts)
    pair, single = root / "pair", root / "single"
    pair.mkdir(parents=True)
    single.mkdir(parents=True)
    used = [0, 0]
    for split, n in (("train", TRAIN), ("validation", HELD_OUT)):
        rows = []
        for _ in range(n):
            a, b = rng.randrange(2), rng.randrange(2)
            text_a = sources[a][used[a]]
            used[a] += 1
            text_b = sources[b][used[b]]
            used[b] += 1  # every sentence once: held-out rows share no text with training
            rows.append((text_a, text_b, int(a == b)))
        _write(pair / f"{split}.csv", ["sentence", "sentence2", "label"], rows)
        _write(single / f"{split}.csv", ["sentence", "label"], [(text_a, label) for text_a, _, label in rows])
    return pair, single


def _accuracy(data: Path, out: Path, seed: int, *pair: str) -> float:
    cfg = load_config(
        None,
        [
            f"data.name={data}",
            "data.test_split=null",
            "data.max_length=32",
            "train.method=lora",
            "train.learning_rates={lora: 2e-3}",
            "train.epochs=2",
            "train.batch_size=16",
            "train.eval_strategy=no",
            "train.save_strategy=no",
            f"train.seed={seed}",
            *pair,
        ],
    )
    return train(cfg, out)["validation"]["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_a_pair_task_is_learned_from_both_texts_and_not_from_one(tmp_path, seed):
    pair, single = _write_same_source_task(tmp_path / "data", seed)
    assert _accuracy(pair, tmp_path / "pair-run", seed, "data.text_pair_column=sentence2") >= 0.8
    assert (
        abs(_accuracy(single, tmp_path / "single-run", seed) - 0.5) <= 0.1
    )  # 2.8 sigma of chance on 200 rows
