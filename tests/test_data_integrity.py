"""Data that changed underneath, and data read wrong: content fingerprints, the datasets cache keyed by
them, resume refused on changed data, absolute paths in the saved config, empty labels, a max_length
past the positions, and a full disk while caching. (Label names matched to the model's: test_predict.py;
macro-F1 over the classes present: test_train.py; a model without a tokenizer: test_bad_inputs.py.)"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import pytest
import yaml
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import DataConfig, load_config
from lora_ft.data.loading import load_data
from lora_ft.data.tokenization import tokenize_data
from lora_ft.errors import LoraFtError
from lora_ft.training.signals import TrainingInterrupted
from lora_ft.training.train import train

from .conftest import SignalAt, assert_one_line_error, small_data, toy_rows, write_split
from .test_bad_inputs import file_size_limit


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_keeping_size_and_mtime(path: Path, rows) -> None:
    """A file corrected in place as ``cp -p``/``rsync -t`` leave it: other bytes, same size and mtime."""
    before = path.stat()
    size = before.st_size
    write_split(path, rows)
    assert path.stat().st_size == size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _flipped(rows):
    return [(s, 1 - y) for s, y in rows]


# --- fingerprints and the datasets cache --------------------------------------------------------


def test_a_file_corrected_in_place_with_size_and_mtime_kept_is_read_again(cache, tmp_path, tiny_bert_dir):
    path = write_split(tmp_path / "d.csv", toy_rows(20))
    first = load_data(DataConfig(name=str(path)))
    _rewrite_keeping_size_and_mtime(path, _flipped(toy_rows(20)))
    second = load_data(DataConfig(name=str(path)))
    for split in ("train", "validation"):
        a, b = first.splits[split], second.splits[split]
        assert b["sentence"][:] == a["sentence"][:]  # the same carve: the sentences did not change
        assert b["label"][:] == [1 - y for y in a["label"][:]]
    assert second.fingerprint == {str(path): _sha256(path)} != first.fingerprint
    tokenized = tokenize_data(second, _tokenizer(tiny_bert_dir), 16)
    assert tokenized["train"]["labels"][:] == second.splits["train"]["label"][:]


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_the_fingerprint_is_each_file_sha256_by_absolute_path(cache, tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    write_split(d / "train.csv", [(s, ["neg", "pos"][y]) for s, y in toy_rows(12)])
    write_split(d / "validation.csv", [(s, ["neg", "pos"][y]) for s, y in toy_rows(6, 50)])
    (d / "labels.json").write_text('["neg", "pos"]')
    monkeypatch.chdir(tmp_path)
    loaded = load_data(DataConfig(name="data"))  # relative: the fingerprint still names absolute paths
    assert loaded.fingerprint == {
        str(d / n): _sha256(d / n) for n in ("labels.json", "train.csv", "validation.csv")
    }


def test_a_builtin_is_fingerprinted_by_its_name_not_the_cache_path():
    from lora_ft.data import assets

    loaded = load_data(DataConfig(name="rt-sentences", max_train_samples=8, max_eval_samples=8))
    root = assets.ensure("rt-sentences")
    assert loaded.fingerprint == {
        f"rt-sentences/{n}": _sha256(root / n)
        for n in ("labels.json", "test.jsonl", "train.jsonl", "validation.jsonl")
    }


# --- resume on changed data, absolute paths -----------------------------------------------------


def _toy(root: Path) -> Path:
    return small_data(root, train=24)


SETTINGS = ["data.max_length=16", "lora.r=2", "train.epochs=1", "train.batch_size=8", "train.threads=1"]


def test_resume_refuses_data_changed_underneath_and_continues_on_the_same_bytes(
    cache, tmp_path, tiny_bert_dir
):
    data = _toy(tmp_path)
    train_csv, validation_csv = data / "train.csv", data / "validation.csv"
    original = train_csv.read_bytes()
    cfg = load_config(None, [f"model.name={tiny_bert_dir}", f"data.name={data}", *SETTINGS])
    out = tmp_path / "runs" / "r"
    with pytest.raises(TrainingInterrupted):
        train(cfg, out, callbacks=[SignalAt(1)])
    saved = yaml.safe_load((tmp_path / "runs" / ".r.partial" / "config.yaml").read_text())
    fingerprint = {str(train_csv): _sha256(train_csv), str(validation_csv): _sha256(validation_csv)}
    assert saved["data_sha256"] == fingerprint

    _rewrite_keeping_size_and_mtime(train_csv, _flipped(toy_rows(24)))
    result = CliRunner().invoke(app, ["train", "--resume", str(out)])
    assert_one_line_error(result, f"cannot resume {out}: data file {train_csv} changed since the run started")
    assert "restore the data the run started on" in result.stderr
    train_csv.write_bytes(original)
    write_split(data / "test.csv", toy_rows(8, 200))  # a split added to the directory is other data too
    result = CliRunner().invoke(app, ["train", "--resume", str(out)])
    assert_one_line_error(
        result, f"data file {data / 'test.csv'} was not part of the data when the run started"
    )

    (data / "test.csv").unlink()
    metrics = train(cfg, out, resume=True)
    assert metrics["resumed_from_steps"] == [1] and metrics["global_steps"] == 3
    assert metrics["data_sha256"] == fingerprint


def test_relative_data_and_model_paths_are_saved_absolute(cache, tmp_path, tiny_bert_dir, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    data = _toy(project)
    monkeypatch.chdir(project)
    model = os.path.relpath(tiny_bert_dir, project)
    cfg = load_config(None, [f"model.name={model}", "data.name=data", *SETTINGS])
    metrics = train(cfg, "runs/r")
    saved = yaml.safe_load((project / "runs" / "r" / "config.yaml").read_text())
    assert saved["data"]["name"] == str(data) and saved["model"]["name"] == str(tiny_bert_dir)
    adapter = json.loads((project / "runs" / "r" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_bert_dir)

    # Evaluated from another project that has a data/ of its own, with every label flipped.
    other = tmp_path / "other"
    other.mkdir()
    decoy = other / "data"
    decoy.mkdir()
    write_split(decoy / "train.csv", _flipped(toy_rows(24)))
    write_split(decoy / "validation.csv", _flipped(toy_rows(8, 100)))
    monkeypatch.chdir(other)
    result = CliRunner().invoke(app, ["eval", str(project / "runs" / "r"), "--split", "validation", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])
    assert evaluated["data"].startswith(str(data))
    assert evaluated["accuracy"] == pytest.approx(metrics["validation"]["accuracy"])


def test_the_same_relative_config_resumes_and_its_finished_run_is_reused(
    cache, tmp_path, tiny_bert_dir, monkeypatch
):
    """The saved config holds absolute paths; the config the user gives again holds the relative ones:
    compared as written, a resume (and compare's worker) refused "a different data.name", and a
    re-run comparison refused to reuse its own finished runs."""
    from lora_ft.compare.runner import _check_reusable

    project = tmp_path / "project"
    project.mkdir()
    _toy(project)
    monkeypatch.chdir(project)
    settings = [f"model.name={os.path.relpath(tiny_bert_dir, project)}", "data.name=data", *SETTINGS]
    cfg = load_config(None, [*settings, "train.precision=fp32"])
    with pytest.raises(TrainingInterrupted):
        train(cfg, "runs/r", callbacks=[SignalAt(1)])
    metrics = train(cfg, "runs/r", resume=True)
    assert metrics["resumed_from_steps"] == [1] and metrics["global_steps"] == 3
    _check_reusable(cfg, project / "runs" / "r")
    with pytest.raises(LoraFtError, match=r"train.seed: 42 -> 7"):  # still compared, as absolute paths
        _check_reusable(
            load_config(None, [*settings, "train.precision=fp32", "train.seed=7"]), project / "runs" / "r"
        )


# --- labels -------------------------------------------------------------------------------------


def _parquet(path: Path, labels: list) -> Path:
    datasets.Dataset.from_dict(
        {"sentence": [f"sentence {i}" for i in range(len(labels))], "label": labels}
    ).to_parquet(str(path))
    return path


@pytest.mark.parametrize(
    ("name", "content", "row"),
    [
        ("d.csv", "sentence,label\ngood,1\nbad,0\nfine,\nawful,0\n", 3),
        ("d.csv", "sentence,label\ngood,1\nbad,0\nfine,  \nawful,0\n", 3),
        ("d.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": null}\n', 2),
        ("d.jsonl", '{"sentence": "good", "label": "pos"}\n{"sentence": "bad", "label": ""}\n', 2),
    ],
    ids=["csv-empty-cell", "csv-blank-cell", "jsonl-null", "jsonl-empty-string"],
)
def test_an_empty_label_is_an_error_naming_file_row_and_column(cache, tmp_path, name, content, row):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name=str(path)))
    assert str(info.value) == (
        f"empty or missing label at row {row} of data file {path} (column 'label'); fill it in or remove that row"
    )


@pytest.mark.parametrize(
    ("value", "phrase"),
    [(float("nan"), "empty or missing label at row 2"), (float("inf"), "label inf at row 2")],
)
def test_a_nan_or_inf_label_is_an_error(cache, tmp_path, value, phrase):
    path = _parquet(tmp_path / "d.parquet", [0.0, value, 1.0, 0.0])
    with pytest.raises(LoraFtError, match=phrase):
        load_data(DataConfig(name=str(path)))


def test_a_missing_text_names_the_column(cache, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good", "y": 1}\n{"text": null, "y": 0}\n', encoding="utf-8")
    with pytest.raises(LoraFtError, match=r"sentence at row 2 of data file .*d.jsonl \(column 'text'"):
        load_data(DataConfig(name=str(path), text_column="text", label_column="y"))


# --- model checks -------------------------------------------------------------------------------


def test_a_max_length_past_the_positions_is_refused_before_any_work(cache, tmp_path, tiny_bert_dir):
    from lora_ft.data.task import Task
    from lora_ft.training.modeling import check_max_length, load_model

    data = _toy(tmp_path)
    cfg = load_config(
        None, [f"model.name={tiny_bert_dir}", f"data.name={data}", *SETTINGS, "data.max_length=129"]
    )
    with pytest.raises(LoraFtError) as info:
        train(cfg, tmp_path / "r")
    assert str(info.value) == (
        f"data.max_length=129 is more than model {tiny_bert_dir} takes (128 tokens: "
        "max_position_embeddings=128); set data.max_length=128 or lower"
    )
    assert not (cache / "tokenized").exists() and set(tmp_path.iterdir()) == {cache, data}
    check_max_length(load_model(cfg.model, Task.legacy(["0", "1"])), 128)  # the last position is usable


# --- a full disk while caching ------------------------------------------------------------------


def _big_csv(path: Path, rows: int) -> Path:
    """``rows`` sentences of some 450 characters (128 tokens and more)."""
    words = " ".join(f"word{i}" for i in range(60))
    return write_split(path, [(f"{words} {s}", y) for s, y in toy_rows(rows)])


def test_a_full_disk_while_caching_data_is_one_line_naming_the_cache(cache, tmp_path, tiny_bert_dir):
    path = _big_csv(tmp_path / "big.csv", 4000)  # 1.7 MB, and as much in the datasets cache
    argv = [
        "train",
        "--set",
        f"model.name={tiny_bert_dir}",
        "--set",
        f"data.name={path}",
        "--out",
        str(tmp_path / "r"),
    ]
    with file_size_limit(1 << 20):
        result = CliRunner().invoke(app, argv)
    assert_one_line_error(result, f"error: disk full or file too large while writing {cache}")
    assert "File too large" in result.stderr
    assert "free some space, or set LORA_FT_CACHE to a directory on a disk with room" in result.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()


def test_a_full_disk_while_caching_tokenized_data_is_one_line_naming_the_cache(
    cache, tmp_path, tiny_bert_dir
):
    loaded = load_data(DataConfig(name=str(_big_csv(tmp_path / "big.csv", 2000))))  # train: 1.4 MB tokenized
    with file_size_limit(1 << 20), pytest.raises(LoraFtError) as info:
        tokenize_data(loaded, _tokenizer(tiny_bert_dir), 128)
    message = str(info.value)
    assert message.startswith(f"disk full or file too large while writing {cache / 'tokenized'}")
    assert "LORA_FT_CACHE" in message and len(message.splitlines()) == 1
    assert list((cache / "tokenized").iterdir()) == []  # no half-written cache entry
