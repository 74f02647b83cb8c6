"""Data specs -> DatasetDict(sentence, label): file types, column mapping, label checks, caps, hub mapping,
and the tokenization cache. Local files only; the hub call is monkeypatched."""

from __future__ import annotations

import json
import logging

import datasets
import pytest

from lora_ft.config import DataConfig, apply_overrides, config_from_dict
from lora_ft.data import sources, tokenization
from lora_ft.data.loading import load_data
from lora_ft.data.tokenization import tokenize_data
from lora_ft.errors import LoraFtError
from tests.conftest import toy_rows, write_split


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _columns(loaded):
    return {split: ds.column_names for split, ds in loaded.splits.items()}


def test_directory_of_csv_splits(cache, toy_data_dir):
    loaded = load_data(DataConfig(name=str(toy_data_dir)))
    assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 48, "validation": 16, "test": 16}
    assert _columns(loaded) == {s: ["sentence", "label"] for s in ("train", "validation", "test")}
    assert loaded.label_names == ["0", "1"] and loaded.num_labels == 2
    assert loaded.source == str(toy_data_dir)
    assert loaded.splits["train"][1] == {"sentence": "sharp and funny 1", "label": 1}


def test_single_tsv_with_column_mapping_carves_validation(cache, tmp_path):
    lines = ["id\ttext\tsentiment"] + [f"{i}\t{s}\t{y}" for i, (s, y) in enumerate(toy_rows(40))]
    lines += ['40\t"quoted" opening, and a stray " quote\t1', "41\tNA\t0"]
    path = tmp_path / "reviews.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = DataConfig(name=str(path), text_column="text", label_column="sentiment")
    loaded = load_data(cfg)
    assert set(loaded.splits) == {"train", "validation"}
    assert (len(loaded.splits["train"]), len(loaded.splits["validation"])) == (37, 5)
    assert loaded.source == f"{path} (validation: 10% of train, seed 42)"
    sentences = set(loaded.splits["train"]["sentence"]) | set(loaded.splits["validation"]["sentence"])
    assert '"quoted" opening, and a stray " quote' in sentences and "NA" in sentences
    assert load_data(cfg).splits["validation"]["sentence"][:] == loaded.splits["validation"]["sentence"][:]


def test_jsonl_string_labels_are_sorted_names(cache, tmp_path):
    rows = [{"text": s, "y": "pos" if y else "neg", "extra": 1} for s, y in toy_rows(20)]
    loaded = load_data(
        DataConfig(name=str(_jsonl(tmp_path / "d.jsonl", rows)), text_column="text", label_column="y")
    )
    assert loaded.label_names == ["neg", "pos"]
    assert _columns(loaded)["train"] == ["sentence", "label"]
    for row in loaded.splits["train"]:
        assert row["label"] == int(row["sentence"] in {s for s, y in toy_rows(20) if y})
    assert loaded.splits["train"].features["label"] == datasets.ClassLabel(names=["neg", "pos"])


def test_parquet_file(cache, tmp_path):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_dict(
        {"sentence": [s for s, _ in toy_rows(20)], "label": [y for _, y in toy_rows(20)]}
    ).to_parquet(str(path))
    loaded = load_data(DataConfig(name=str(path)))
    assert len(loaded.splits["train"]) + len(loaded.splits["validation"]) == 20


def test_directory_aliases_shards_and_label_names_file(cache, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    _jsonl(d / "train-00000-of-00002.jsonl", [{"sentence": s, "label": y} for s, y in toy_rows(10)])
    _jsonl(d / "train-00001-of-00002.jsonl", [{"sentence": s, "label": y} for s, y in toy_rows(10, 10)])
    _jsonl(d / "dev.jsonl", [{"sentence": s, "label": y} for s, y in toy_rows(6, 50)])
    (d / "labels.json").write_text('["bad", "good"]')
    loaded = load_data(DataConfig(name=str(d)))
    assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 20, "validation": 6}
    assert loaded.label_names == ["bad", "good"]


def test_directory_without_train_file(cache, tmp_path):
    (tmp_path / "d").mkdir()
    write_split(tmp_path / "d" / "validation.csv", toy_rows(4))
    with pytest.raises(LoraFtError, match=r"has no train\.\* file .*it holds: validation\.csv"):
        load_data(DataConfig(name=str(tmp_path / "d")))


def test_missing_column_names_the_file_and_columns(cache, tmp_path):
    path = write_split(tmp_path / "d.csv", toy_rows(4))
    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name=str(path), text_column="text"))
    assert str(info.value) == (
        f"data file {path} has no column 'text'; columns are: sentence, label "
        "(set data.text_column / data.label_column)"
    )


def test_integer_labels_must_be_0_to_k_minus_1(cache, tmp_path):
    path = write_split(tmp_path / "d.csv", [("fine", 0), ("also fine", 2), ("ok", 0)])
    with pytest.raises(LoraFtError, match=r"label 2 at row 2 of data file .*d\.csv is out of range 0\.\.1"):
        load_data(DataConfig(name=str(path)))


def test_out_of_range_label_in_validation(cache, toy_data_dir):
    write_split(toy_data_dir / "validation.csv", [("good", 1), ("odd", 7)])
    with pytest.raises(LoraFtError, match=r"label 7 at row 2 of .*validation\.csv is out of range 0\.\.1"):
        load_data(DataConfig(name=str(toy_data_dir)))


def test_non_integer_label(cache, tmp_path):
    path = write_split(tmp_path / "d.csv", [("a", 0), ("b", 0.5), ("c", 1)])
    with pytest.raises(LoraFtError, match="label 0.5 at row 2 .* is not an integer"):
        load_data(DataConfig(name=str(path)))


def test_integer_train_labels_with_class_names_elsewhere(cache, toy_data_dir):
    write_split(toy_data_dir / "validation.csv", [("good", "positive")])
    with pytest.raises(LoraFtError, match="label 'positive' at row 1 of .*validation.csv is not an integer"):
        load_data(DataConfig(name=str(toy_data_dir)))


def test_single_class_is_an_error(cache, tmp_path):
    path = write_split(tmp_path / "d.csv", [("a", 0), ("b", 0), ("c", 0)])
    with pytest.raises(LoraFtError, match="1 distinct label"):
        load_data(DataConfig(name=str(path)))


def test_string_label_unseen_in_train(cache, toy_data_dir):
    for split, offset in (("train", 0), ("validation", 100), ("test", 200)):
        rows = [(s, "positive" if y else "negative") for s, y in toy_rows(8, offset)]
        write_split(toy_data_dir / f"{split}.csv", rows)
    write_split(toy_data_dir / "test.csv", [("meh", "neutral")])
    with pytest.raises(
        LoraFtError, match="label 'neutral' at row 1 of .*test.csv does not occur in train; labels are"
    ):
        load_data(DataConfig(name=str(toy_data_dir)))


def test_test_split_skipped_when_configured_off(cache, toy_data_dir):
    assert set(load_data(DataConfig(name=str(toy_data_dir), test_split=None)).splits) == {
        "train",
        "validation",
    }


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"sentence,label\n", "has no rows"),
        (b"sentence,label\ngood,1\n,0\n", "empty, missing or non-text sentence at row 2"),
        (b"sentence,label\n   ,1\n", "empty, missing or non-text sentence at row 1"),
        (
            b"sentence,label\ngood,1\nbad,0\nfine,\n",
            r"empty or missing label at row 3 of .* \(column 'label'\)",
        ),
        (b"sentence,label\ncaf\xe9,1\n", r"not UTF-8 \(byte 0xe9 at offset 18\)"),
    ],
)
def test_bad_files(cache, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(LoraFtError, match=message):
        load_data(DataConfig(name=str(path)))


def test_caps_are_deterministic_shuffled_samples(cache, toy_data_dir):
    cfg = DataConfig(name=str(toy_data_dir), max_train_samples=10, max_eval_samples=4)
    a, b = load_data(cfg), load_data(cfg)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 10, "validation": 4, "test": 4}
    assert a.splits["train"]["sentence"][:] == b.splits["train"]["sentence"][:]
    first_ten = [s for s, _ in toy_rows(10)]
    assert a.splits["train"]["sentence"][:] != first_ten  # a sample, not the head of the file
    assert set(a.splits["train"]["label"]) == {0, 1}


def _glue_like():
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "idx": datasets.Value("int32"),
        }
    )

    def split(rows, unlabelled=False):
        return datasets.Dataset.from_dict(
            {
                "sentence": [s for s, _ in rows],
                "label": [-1 if unlabelled else y for _, y in rows],
                "idx": list(range(len(rows))),
            },
            features=features,
        )

    return datasets.DatasetDict(
        {
            "train": split(toy_rows(20)),
            "validation": split(toy_rows(6, 100)),
            "test": split(toy_rows(6, 200), unlabelled=True),
        }
    )


def test_hub_glue_mapping_and_unlabelled_test(cache, monkeypatch):
    calls = []

    def fake_hub_load(path, config):
        calls.append((path, config))
        return _glue_like()

    monkeypatch.setattr(sources, "hub_load", fake_hub_load)
    loaded = load_data(DataConfig(name="glue/sst2"))
    assert calls == [("glue", "sst2")]
    assert set(loaded.splits) == {"train", "validation"}  # -1 test labels: unlabelled, not a test split
    assert loaded.label_names == ["negative", "positive"]
    assert _columns(loaded)["train"] == ["sentence", "label"]
    assert loaded.source == "glue/sst2 (hub) (test split unlabelled (all -1), not used)"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("glue/sst2", ("glue", "sst2")),
        ("super_glue/boolq", ("super_glue", "boolq")),
        ("rotten_tomatoes", ("rotten_tomatoes", None)),
        ("stanfordnlp/imdb", ("stanfordnlp/imdb", None)),
    ],
)
def test_hub_args(name, expected):
    assert sources.hub_args(name) == expected


def test_hub_without_validation_split_is_carved(cache, monkeypatch):
    monkeypatch.setattr(
        sources, "hub_load", lambda path, config: datasets.DatasetDict({"train": _glue_like()["train"]})
    )
    loaded = load_data(DataConfig(name="rotten_tomatoes"))
    assert (len(loaded.splits["train"]), len(loaded.splits["validation"])) == (18, 2)


def test_hub_offline_error(cache, monkeypatch):
    def offline(path, config):
        raise ConnectionError("Couldn't reach 'rotten_tomatoes' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(sources, "hub_load", offline)
    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name="rotten_tomatoes"))
    message = str(info.value)
    assert "'rotten_tomatoes'" in message and "rt-sentences" in message and "local file" in message
    assert "\n" not in message


def test_missing_local_path_and_model_name(cache):
    with pytest.raises(LoraFtError, match="data file not found: ./nope.csv"):
        load_data(DataConfig(name="./nope.csv"))
    with pytest.raises(
        LoraFtError, match="is a built-in model, not a data set: use it as model.name=minilm-l6"
    ):
        load_data(DataConfig(name="minilm-l6"))


def _in_hub_cache(root, repo_id: str, splits: dict) -> None:
    """What ``load_dataset(repo_id)`` of a script-free repo of jsonl files leaves in the datasets cache
    ``root``: ``<namespace>___<name>/default/0.0.0/<commit>/`` with the arrow files and dataset_info.json."""
    from datasets.packaged_modules.json.json import Json

    source = root.parent / "repo"
    source.mkdir(parents=True)
    files = {split: str(_jsonl(source / f"{split}.jsonl", [{"sentence": s, "label": y} for s, y in rows]))
             for split, rows in splits.items()}  # fmt: skip
    namespace, name = repo_id.split("/")
    Json(cache_dir=str(root), dataset_name=name, data_files=files, hash="0" * 40).download_and_prepare()
    # Named as a hub repo's: under its namespace, its data files being its default config.
    repo = (root / name).rename(root / f"{namespace}___{name}")
    (config_dir,) = repo.iterdir()
    config_dir.rename(repo / "default")


def test_hub_data_in_the_users_datasets_cache_is_found_offline(cache, tmp_path, monkeypatch):
    users = tmp_path / "hf" / "datasets"
    _in_hub_cache(users, "someone/reviews", {"train": toy_rows(20), "test": toy_rows(6, 100)})
    # What HF_DATASETS_CACHE=... and HF_HUB_OFFLINE=1 set when datasets is imported.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", users)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    loaded = load_data(DataConfig(name="someone/reviews"))
    assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 18, "validation": 2, "test": 6}
    assert sorted(loaded.splits["test"]["sentence"]) == sorted(s for s, _ in toy_rows(6, 100))
    assert set(loaded.fingerprint) == {"someone/reviews[train]", "someone/reviews[test]"}
    again = load_data(DataConfig(name="someone/reviews"))
    assert again.fingerprint == loaded.fingerprint  # the content hash: the same rows, the same key
    assert not (cache / "hf-datasets").exists()  # no second copy in lora-ft's own cache


def test_label_names_name_integer_labels(cache, tmp_path):
    path = write_split(tmp_path / "d.csv", toy_rows(20))
    loaded = load_data(DataConfig(name=str(path), label_names=["negative", "positive"]))
    assert loaded.label_names == ["negative", "positive"]
    assert loaded.splits["train"].features["label"].names == ["negative", "positive"]
    train = loaded.splits["train"]
    by_text = dict(toy_rows(20))  # id 0 -> the first name: the ids are kept, only named
    assert train["label"][:] == [by_text[s] for s in train["sentence"]]
    assert {train.features["label"].int2str(y) for y in train["label"]} == {"negative", "positive"}
    d = tmp_path / "dir"
    d.mkdir()
    write_split(d / "train.csv", toy_rows(20))
    (d / "labels.json").write_text('["bad", "good"]')
    same = load_data(DataConfig(name=str(d), label_names=["bad", "good"]))  # agreeing with labels.json
    assert same.label_names == ["bad", "good"]
    cfg = config_from_dict(apply_overrides({}, ["data.label_names=[neg, pos]"]))
    assert cfg.data.label_names == ["neg", "pos"]
    with pytest.raises(LoraFtError, match=r"data.label_names must be a list of str or null, got \[0, 1\]"):
        config_from_dict({"data": {"label_names": [0, 1]}})


@pytest.mark.parametrize(
    "rows, names, labels_json, message",
    [
        (None, ["a", "b", "c"], None, r"data.label_names has 3 names but data file .* has 2 labels \(0, 1\); give"),
        (None, ["only"], None, "data.label_names has 1 name but"),
        (None, ["a", "a"], None, "data.label_names names label ids 0 and 1 both 'a'"),
        (None, [], None, "data.label_names must be a non-empty list of label names"),
        ([("x", "neg"), ("y", "pos")], ["a", "b"], None, "the labels of data file .* are names already"),
        (None, ["neg", "pos"], '["bad", "good"]', r"data.label_names \(neg, pos\) and .*labels.json \(bad, good\) disagree"),
    ],
)  # fmt: skip
def test_label_names_that_do_not_fit(cache, tmp_path, rows, names, labels_json, message):
    d = tmp_path / "d"
    d.mkdir()
    write_split(d / "train.csv", rows or toy_rows(20))
    if labels_json is not None:
        (d / "labels.json").write_text(labels_json)
    with pytest.raises(LoraFtError, match=message):
        load_data(DataConfig(name=str(d), label_names=names))


# --- tokenization -------------------------------------------------------------------------------


@pytest.fixture()
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def test_tokenize_columns_lengths_and_cache(minilm_dir, cache, toy_data_dir, tokenizer, monkeypatch, caplog):
    loaded = load_data(DataConfig(name=str(toy_data_dir)))
    tokenized = tokenize_data(loaded, tokenizer, max_length=8)
    assert set(tokenized) == {"train", "validation", "test"}
    assert set(tokenized["train"].column_names) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "labels",
        "length",
    }
    row = tokenized["train"][3]
    assert row["length"] == len(row["input_ids"]) <= 8 and row["labels"] == loaded.splits["train"][3]["label"]
    assert max(tokenized["train"]["length"]) == 8  # "the best movie of the year 42" needs truncation
    cached = list((cache / "tokenized").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("minilm-l6-8-")

    def not_again(*args, **kwargs):
        raise AssertionError("the tokenizer ran on a cached call")

    monkeypatch.setattr(type(tokenizer), "__call__", not_again)
    with caplog.at_level(logging.INFO, logger="lora_ft"):
        again = tokenize_data(load_data(DataConfig(name=str(toy_data_dir))), tokenizer, max_length=8)
    assert "tokenized data from cache" in caplog.text
    assert again["train"][:] == tokenized["train"][:]


def test_tokenize_cache_key_tracks_settings_and_content(minilm_dir, cache, toy_data_dir, tokenizer):
    loaded = load_data(DataConfig(name=str(toy_data_dir)))
    base = tokenization.tokenized_cache_dir(loaded, tokenizer, 16)
    tokenizer(["a call stores truncation settings in the backend"], truncation=True, max_length=5)
    assert tokenization.tokenized_cache_dir(loaded, tokenizer, 16) == base
    assert tokenization.tokenized_cache_dir(loaded, tokenizer, 32) != base
    capped = load_data(DataConfig(name=str(toy_data_dir), max_train_samples=5))
    assert tokenization.tokenized_cache_dir(capped, tokenizer, 16) != base


@pytest.mark.slow
def test_builtin_rt_sentences():
    """The real built-in data through load_data (uses, or prepares, the user's cache)."""
    loaded = load_data(DataConfig())
    assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 8072, "validation": 1000, "test": 1000}
    assert loaded.label_names == ["negative", "positive"] and loaded.source == "built-in rt-sentences"
    assert _columns(loaded)["test"] == ["sentence", "label"]
