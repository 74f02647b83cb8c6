"""Bad input to every command: exit code, one line with the key phrase, no traceback, nothing written.

Each row of the matrix runs the real CLI in-process. "Nothing written" is checked by hashing every
file under the workspace before and after: no partial run, no half-written output, no user file
changed. Then the failures that need a process of their own (a full disk) or a patched allocator
(memory), and safe loading: pickles only when asked and then ``weights_only``; no remote code unless
asked. Fetched-asset hash checks and archive path traversal are tested in test_assets.py
(test_sha256_mismatch_deletes_and_names_both_hashes, test_safe_extract_tar_refuses,
test_safe_extract_zip_refuses).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import ModelConfig, dump_config, load_config

from .conftest import assert_one_line_error, small_data, toy_rows, write_split


@dataclass
class Ws:
    """A workspace: the tiny model, toy data, and where runs go (``out`` = runs/r)."""

    root: Path
    model: Path
    data: Path

    @property
    def out(self) -> Path:
        return self.root / "runs" / "r"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def data_dir(self, name: str, rows, header=("sentence", "label"), splits=("train", "validation")) -> Path:
        d = self.root / name
        d.mkdir()
        for split in splits:
            write_split(d / f"{split}.csv", rows, header=header)
        return d

    def model_copy(self, name: str, drop: tuple[str, ...] = ()) -> Path:
        d = self.root / name
        shutil.copytree(self.model, d)
        for pattern in drop:
            for path in d.glob(pattern):
                path.unlink()
        return d


def _train(ws: Ws, *extra: str, model: Path | None = None, data: Path | None = None) -> list[str]:
    return [
        "train", "--set", f"model.name={model or ws.model}", "--set", f"data.name={data or ws.data}",
        "--set", "data.max_length=16", "--set", "train.threads=1", "--out", str(ws.out), *extra,
    ]  # fmt: skip


def _pickled_model(ws: Ws) -> Path:
    from transformers import AutoModelForSequenceClassification

    d = ws.model_copy("pickled", drop=("*.safetensors",))
    torch.save(
        AutoModelForSequenceClassification.from_pretrained(ws.model).state_dict(), d / "pytorch_model.bin"
    )
    return d


def _named_model(ws: Ws, names: list[str]) -> Path:
    """The tiny model, its two outputs named ``names``, as a model trained on named labels saves them."""
    d = ws.model_copy("named")
    config = json.loads((d / "config.json").read_text())
    config["id2label"] = dict(enumerate(names))
    config["label2id"] = {n: i for i, n in enumerate(names)}
    (d / "config.json").write_text(json.dumps(config))
    return d


def _interrupted(ws: Ws) -> None:
    """An interrupted run of runs/r (lora.r=2) with a checkpoint at step 3, as a Ctrl-C leaves it."""
    cfg = load_config(None, [f"model.name={ws.model}", f"data.name={ws.data}", "lora.r=2"])
    partial = ws.root / "runs" / ".r.partial"
    (partial / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (partial / "checkpoints" / "checkpoint-3" / "resume.json").write_text("{}")
    (partial / "config.yaml").write_text(dump_config(cfg))


def _running(ws: Ws) -> Callable[[], None]:
    """Another process training into runs/r: its lock held (by this test's own open file)."""
    _interrupted(ws)
    lock = ws.root / "runs" / ".r.partial" / ".lock"
    lock.write_text("4242")
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return lambda: os.close(fd)


def _adapter(ws: Ws, name: str, config: str, weights: bool = True) -> Path:
    path = ws.file(f"{name}/adapter_config.json", config).parent
    if weights:
        ws.file(f"{name}/adapter_model.safetensors", b"\0" * 16)
    return path


def _finished(ws: Ws) -> None:
    ws.out.mkdir(parents=True)
    (ws.out / "metrics.json").write_text("{}")


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True)


ALLOCATION_FAILED = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes."


def _cache_is_a_file(ws: Ws, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("LORA_FT_CACHE", str(ws.root.parent / "cache-file"))
    (ws.root.parent / "cache-file").write_text("not a directory")


def _read_only_cache(ws: Ws, mp: pytest.MonkeyPatch) -> None:
    """An empty cache on a read-only file system, as far as lora-ft can tell (root writes anywhere)."""
    cache = ws.root.parent / "ro-cache"
    cache.mkdir()
    mp.setenv("LORA_FT_CACHE", str(cache))
    real = os.access
    mp.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p).is_relative_to(cache) else real(p, mode, **kw)
    )
    real_statvfs = os.statvfs
    read_only = os.statvfs_result((4096,) * 8 + (os.ST_RDONLY, 255))
    mp.setattr(os, "statvfs", lambda p: read_only if Path(p).is_relative_to(cache) else real_statvfs(p))


def _full_disk_at_the_weights(ws: Ws, mp: pytest.MonkeyPatch) -> None:
    import transformers.modeling_utils

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    mp.setattr(transformers.modeling_utils, "safe_save_file", full)


def _forward_fails(error: BaseException) -> Callable[[Ws, pytest.MonkeyPatch], None]:
    def patch(ws: Ws, mp: pytest.MonkeyPatch) -> None:
        from transformers import BertForSequenceClassification

        def forward(*args, **kwargs):
            raise error

        mp.setattr(BertForSequenceClassification, "forward", forward)

    return patch


def _adapter_dir(ws: Ws, labels=("neg", "pos")) -> Path:
    from .test_adapter_io import make_adapter

    path = ws.root / f"adapter-{'-'.join(labels)}"
    if not path.exists():
        make_adapter(ws.model, path, label_names=labels)
    return path


def _model_labelled(ws: Ws, id2label: dict[int, str]) -> Path:
    import json

    d = ws.model_copy("m-labels")
    config = json.loads((d / "config.json").read_text())
    config["id2label"] = {str(i): n for i, n in id2label.items()}
    config["label2id"] = {n: i for i, n in id2label.items()}
    (d / "config.json").write_text(json.dumps(config))
    return d


# Every float setting of the config (tests/test_nonfinite.py checks this list is all of them).
FLOAT_KEYS = (
    "lora.alpha", "lora.dropout", "lora.init_std", "lora.alpha_pattern.query", "train.epochs", "train.learning_rate",
    "train.learning_rates.lora", "train.weight_decay", "train.warmup_ratio", "train.max_grad_norm",
)  # fmt: skip


@dataclass(frozen=True)
class Bad:
    id: str
    argv: Callable[[Ws], list[str]]
    phrase: str | Callable[[Ws], str]
    setup: Callable[[Ws], object] | None = None
    patch: Callable[[Ws, pytest.MonkeyPatch], None] | None = None  # the environment: cache, disk, memory
    stdin: bytes | None = None


ROWS = [
    # --- train: config files
    Bad("config-missing", lambda ws: ["train", str(ws.root / "nope.yaml")], "config file not found"),
    Bad("config-not-yaml", lambda ws: ["train", str(ws.file("c.yaml", "model: [unclosed"))], "is not valid YAML"),
    Bad("config-a-list", lambda ws: ["train", str(ws.file("c.yaml", "- a\n- b\n"))], "must hold a mapping"),
    Bad("config-not-utf8", lambda ws: ["train", str(ws.file("c.yaml", b"model:\n  name: \xff\xfe\n"))], "not valid YAML"),
    Bad("config-unknown-section", lambda ws: ["train", str(ws.file("c.yaml", "optimizer: {}\n"))], "unknown config key 'optimizer'"),
    Bad("config-wrong-type", lambda ws: ["train", str(ws.file("c.yaml", "lora: {r: eight}\n"))], "lora.r must be int, got 'eight'"),
    # --- train: overrides and numeric ranges
    Bad("set-without-equals", lambda ws: _train(ws, "--set", "lora.r"), "is not key=value"),
    Bad("set-into-a-value", lambda ws: _train(ws, "--set", "lora.r.x=1"), "lora.r must be int, got {'x': 1}"),
    Bad("batch-size-0", lambda ws: _train(ws, "--set", "train.batch_size=0"), "train.batch_size must be >= 1"),
    Bad("alpha-negative", lambda ws: _train(ws, "--set", "lora.alpha=-1"), "lora.alpha must be > 0"),
    Bad("epochs-0", lambda ws: _train(ws, "--set", "train.epochs=0"), "train.epochs must be > 0"),
    Bad("max-length-4", lambda ws: _train(ws, "--set", "data.max_length=4"), "data.max_length must be >= 8 tokens"),
    Bad("warmup-1.5", lambda ws: _train(ws, "--set", "train.warmup_ratio=1.5"), "train.warmup_ratio must be in [0, 1)"),
    Bad("scheduler-unknown", lambda ws: _train(ws, "--set", "train.lr_scheduler=exp"), "train.lr_scheduler must be one of"),
    Bad("max-train-samples-0", lambda ws: _train(ws, "--set", "data.max_train_samples=0"), "data.max_train_samples must be >= 1"),
    Bad("targets-bad-regex", lambda ws: _train(ws, "--set", "lora.targets=['([']"), "is not a valid regex"),
    # --- train: numbers out of range, and NaN / +-Inf for every float setting (each spelled as YAML)
    *[
        Bad(f"{key}={text}", lambda ws, key=key, text=text: _train(ws, "--set", f"{key}={text}"), f"{key} must be a finite number, got {shown}")
        for key in FLOAT_KEYS
        for text, shown in ((".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"))
    ],
    Bad("dropout-1.5", lambda ws: _train(ws, "--set", "lora.dropout=1.5"), "lora.dropout must be in [0, 1), got 1.5"),
    Bad("alpha-pattern-0", lambda ws: _train(ws, "--set", "lora.alpha_pattern.query=0"), "lora.alpha_pattern.query must be > 0"),
    Bad("lr-0", lambda ws: _train(ws, "--set", "train.learning_rate=0"), "train.learning_rate must be > 0, got 0.0"),
    Bad("lr-method-negative", lambda ws: _train(ws, "--set", "train.learning_rates.lora=-1e-4"), "train.learning_rates.lora must be > 0"),
    Bad("weight-decay-negative", lambda ws: _train(ws, "--set", "train.weight_decay=-0.1"), "train.weight_decay must be >= 0"),
    Bad("max-grad-norm-negative", lambda ws: _train(ws, "--set", "train.max_grad_norm=-1"), "train.max_grad_norm must be >= 0 (0 turns gradient clipping off), got -1.0"),
    Bad("seed-negative", lambda ws: _train(ws, "--set", "train.seed=-1"), "train.seed must be in [0, 4294967295] (what numpy's seeding accepts), got -1"),
    Bad("seed-2**32", lambda ws: _train(ws, "--set", "train.seed=4294967296"), "train.seed must be in [0, 4294967295]"),
    Bad("threads-huge", lambda ws: _train(ws, "--set", "train.threads=100000"), f"train.threads=100000 is more than this machine's {os.cpu_count()} CPUs"),
    Bad("r-above-the-layer", lambda ws: _train(ws, "--set", "lora.r=64"), "r=64 for bert.encoder.layer.0.attention.self.query is above what its 32x32 weight can use (rank at most 32)"),
    Bad(
        "targets-very-long",  # 3,000 names that match nothing: still one line
        lambda ws: _train(ws, "--set", "lora.targets=[" + ",".join(f"q{i}" for i in range(3000)) + "]"),
        "q2999",
    ),
    # --- train: model paths
    Bad("model-missing", lambda ws: _train(ws, model=ws.root / "no-model"), "model path not found"),
    Bad("model-no-config", lambda ws: _train(ws, model=ws.model_copy("m-noconfig", drop=("config.json",))), "no config.json in it"),
    Bad("model-no-weights", lambda ws: _train(ws, model=ws.model_copy("m-noweights", drop=("*.safetensors",))), "has no weights"),
    Bad("model-only-pickle", lambda ws: _train(ws, model=_pickled_model(ws)), "pass --set model.allow_pickle=true"),
    Bad("model-no-tokenizer", lambda ws: _train(ws, model=ws.model_copy("m-notok", drop=("tokenizer*",))), "has no tokenizer files"),
    Bad("max-length-past-positions", lambda ws: _train(ws, "--set", "data.max_length=129"), "data.max_length=129 is more than model"),
    # --- train: data files, columns, labels
    Bad("data-missing", lambda ws: _train(ws, data=ws.root / "no-data"), "data file not found"),
    Bad("data-no-label-column", lambda ws: _train(ws, data=ws.data_dir("d-nolabel", toy_rows(8), ("sentence", "y"))), "has no column 'label'"),
    Bad("data-text-column-typo", lambda ws: _train(ws, "--set", "data.text_column=txt"), "has no column 'txt'"),
    Bad("data-float-labels", lambda ws: _train(ws, data=ws.data_dir("d-float", [("good", 0.5), ("bad", 1)])), "is not an integer"),
    Bad("data-one-label", lambda ws: _train(ws, data=ws.data_dir("d-onelabel", [("a", 1), ("b", 1)])), "a classifier needs two or more"),
    Bad("data-empty", lambda ws: _train(ws, data=ws.data_dir("d-empty", [])), "has no rows"),
    Bad("data-empty-sentence", lambda ws: _train(ws, data=ws.data_dir("d-emptysentence", [("", 1), ("bad", 0)])), "empty, missing or non-text sentence at row 1"),
    Bad("data-empty-label", lambda ws: _train(ws, data=ws.data_dir("d-emptylabel", [("good", 1), ("bad", 0), ("fine", "")])), "empty or missing label at row 3"),
    Bad(
        "data-not-utf8",
        lambda ws: _train(ws, data=ws.file("d-latin1/train.csv", b"sentence,label\n\xff bad,1\nok,0\n").parent),
        "is not UTF-8",
    ),
    # --- train: output paths, resume
    Bad("out-exists", lambda ws: _train(ws), "already exists; pass --force", setup=lambda ws: _mkdir(ws.out)),
    Bad("out-is-a-file", lambda ws: _train(ws, "--force"), "exists and is not a directory", setup=lambda ws: ws.file("runs/r", "x")),
    Bad("out-name-too-long", lambda ws: [*_train(ws)[:-2], "--out", str(ws.root / ("r" * 300))], "File name too long"),
    Bad("resume-nothing", lambda ws: ["train", "--resume", str(ws.out)], "no interrupted run to resume"),
    Bad("resume-finished", lambda ws: ["train", "--resume", str(ws.out)], "is a finished run; nothing to resume", setup=_finished),
    Bad(
        "resume-changed-rank",
        lambda ws: ["train", "--resume", str(ws.out), "--set", "lora.r=4"],
        lambda ws: f"cannot resume {ws.out} with a different lora.r (2 -> 4)",
        setup=_interrupted,
    ),
    Bad("resume-other-out", lambda ws: ["train", "--resume", str(ws.out), "--out", str(ws.root / "x")], "drop --out", setup=_interrupted),
    Bad("fresh-over-interrupted", lambda ws: _train(ws), "has an interrupted run in", setup=_interrupted),
    Bad("while-another-trains", lambda ws: _train(ws, "--force"), "another lora-ft process (pid 4242)", setup=_running),
    # --- targets, fetch
    Bad("targets-not-a-model", lambda ws: ["targets", str(ws.file("w.txt", "x"))], "not a Hugging Face model directory"),
    Bad("targets-bad-config", lambda ws: ["targets", str(ws.file("cfg/config.json", "{nope"))], "cannot build model"),
    Bad("targets-r-negative", lambda ws: ["targets", str(ws.model), "--r", "-3"], "--r must be >= 1"),
    Bad("fetch-from-two", lambda ws: ["fetch", "minilm-l6", "rt-sentences", "--from", str(ws.root)], "--from takes one asset name"),
    Bad("fetch-from-missing", lambda ws: ["fetch", "minilm-l6", "--from", str(ws.root / "x.whl")], "--from file not found"),
    # --- merge, eval, predict, compare
    Bad("merge-missing", lambda ws: ["merge", str(ws.root / "nope"), "--out", str(ws.out)], "not found; give a run directory"),
    Bad("merge-empty-dir", lambda ws: ["merge", str(ws.root / "e"), "--out", str(ws.out)], "is not a run, adapter or model directory", setup=lambda ws: _mkdir(ws.root / "e")),
    Bad("merge-adapter-not-json", lambda ws: ["merge", str(_adapter(ws, "a-json", "{nope")), "--out", str(ws.out)], "is not valid JSON"),
    Bad("merge-adapter-no-weights", lambda ws: ["merge", str(_adapter(ws, "a-now", '{"peft_type": "LORA"}', weights=False)), "--out", str(ws.out)], "adapter_model.safetensors is missing"),
    Bad("merge-full-model", lambda ws: ["merge", str(ws.model), "--out", str(ws.out)], "not a LoRA adapter: there is nothing to merge"),
    Bad("merge-dtype", lambda ws: ["merge", str(ws.model), "--out", str(ws.out), "--dtype", "float8"], "--dtype must be one of"),
    Bad("eval-split", lambda ws: ["eval", str(ws.model), "--data", str(ws.data), "--split", "dev"], "--split must be train, validation or test"),
    Bad(
        "eval-label-names-differ",
        lambda ws: ["eval", str(_named_model(ws, ["negative", "positive"])), "--data", str(ws.data_dir("d-named", [("good", "pos"), ("bad", "neg")])), "--split", "validation"],
        "the data has labels neg, pos but the model predicts negative, positive; they cannot be matched by name",
    ),
    Bad("eval-data-missing", lambda ws: ["eval", str(ws.model), "--data", str(ws.root / "nope")], "data file not found"),
    Bad("predict-no-sentences", lambda ws: ["predict", str(ws.model)], "no sentences to classify"),
    Bad("predict-empty-sentence", lambda ws: ["predict", str(ws.model), "good", "  "], "sentence argument 2 is empty"),
    Bad("predict-file-missing", lambda ws: ["predict", str(ws.model), "--file", str(ws.root / "missing.txt")], "missing.txt not found"),
    Bad("predict-file-not-utf8", lambda ws: ["predict", str(ws.model), "--file", str(ws.file("s.txt", b"ok\n\xff\xfe\n"))], "s.txt is not UTF-8 text (byte 0xff at offset 3, line 2); re-save it as UTF-8"),
    Bad("predict-stdin-not-utf8", lambda ws: ["predict", str(ws.model), "-"], "stdin is not UTF-8 text (byte 0xe9 at offset 8, line 2)", stdin=b"good\ncaf\xe9 bad\n"),
    Bad("predict-oom", lambda ws: ["predict", str(ws.model), "good"], "out of memory while classifying at --batch-size 64; lower --batch-size", patch=_forward_fails(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))),
    Bad("predict-oom-cpu", lambda ws: ["predict", str(ws.model), "good", "-b", "8"], "out of memory while classifying at --batch-size 8; lower --batch-size (e.g. --batch-size 2)", patch=_forward_fails(RuntimeError(ALLOCATION_FAILED))),
    Bad("eval-memory-error", lambda ws: ["eval", str(ws.model), "--data", str(ws.data), "--split", "validation"], "out of memory while classifying at --batch-size 64", patch=_forward_fails(MemoryError())),
    Bad("predict-adapter-duplicate-labels", lambda ws: ["predict", str(_adapter_dir(ws, ("neg", "neg"))), "good"], "lora_ft.label_names record names label ids 0 and 1 both 'neg'"),
    Bad("predict-model-duplicate-labels", lambda ws: ["predict", str(_model_labelled(ws, {0: "pos", 1: "pos"})), "good"], "config.json: id2label names label ids 0 and 1 both 'pos'"),
    Bad("train-labels-json-broken", lambda ws: _train(ws, data=ws.file("data/labels.json", "[neg, pos").parent), "labels.json is not valid UTF-8 JSON"),
    Bad("train-labels-json-duplicate", lambda ws: _train(ws, data=ws.file("data/labels.json", '["neg", "neg"]').parent), "labels.json names label ids 0 and 1 both 'neg'"),
    Bad("train-labels-json-not-a-list", lambda ws: _train(ws, data=ws.file("data/labels.json", '{"0": "neg"}').parent), "labels.json must be a non-empty list of label names"),
    Bad("merge-disk-full", lambda ws: ["merge", str(_adapter_dir(ws)), "--out", str(ws.root / "merged")], lambda ws: f"disk full or file too large while writing {ws.root / '.merged.'}", patch=_full_disk_at_the_weights),
    # --- the asset cache, and built-in names used for the other kind
    Bad("cache-is-a-file", lambda ws: ["fetch", "rt-sentences"], "is a file; set LORA_FT_CACHE to a directory", patch=_cache_is_a_file),
    Bad("cache-read-only", lambda ws: _train(ws), "is not writable (Read-only file system); set LORA_FT_CACHE to a writable directory", patch=_read_only_cache),
    Bad("fetch-into-read-only-cache", lambda ws: ["fetch", "rt-sentences"], "is not writable (Read-only file system); set LORA_FT_CACHE", patch=_read_only_cache),
    Bad("model-name-is-data", lambda ws: [*_train(ws), "--set", "model.name=rt-sentences"], "'rt-sentences' is a built-in data set, not a model: use it as data.name=rt-sentences"),
    Bad("data-name-is-model", lambda ws: [*_train(ws), "--set", "data.name=minilm-l6"], "'minilm-l6' is a built-in model, not a data set: use it as model.name=minilm-l6"),
    Bad("compare-method", lambda ws: ["compare", "--methods", "qlora", "--out", str(ws.out)], "(qlora unknown)"),
    Bad("compare-seeds-0", lambda ws: ["compare", "--seeds", "0", "--out", str(ws.out)], "--seeds must be >= 1"),
    Bad("compare-ranks", lambda ws: ["compare", "--ranks", "0,a", "--out", str(ws.out)], "--ranks takes comma-separated integers"),
]  # fmt: skip


@pytest.fixture()
def ws(tmp_path, tiny_bert_dir) -> Ws:
    root = tmp_path / "ws"
    return Ws(root=root, model=tiny_bert_dir, data=small_data(root))


def test_the_matrix_is_at_least_30_distinct_inputs_over_every_command(ws):
    assert len({row.id for row in ROWS}) == len(ROWS) >= 30
    commands = {row.argv(ws)[0] for row in ROWS}
    assert commands == {"train", "targets", "fetch", "merge", "eval", "predict", "compare"}


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(ws, row, monkeypatch):
    cleanup = row.setup(ws) if row.setup else None
    argv = row.argv(ws)
    if row.patch:
        row.patch(ws, monkeypatch)
    before = _snapshot(ws.root)
    try:
        result = CliRunner().invoke(app, argv, input=row.stdin)
    finally:
        if callable(cleanup):
            cleanup()
    assert_one_line_error(result, row.phrase(ws) if callable(row.phrase) else row.phrase)
    assert _snapshot(ws.root) == before  # no partial output, no user file touched


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_directory(ws):
    ro = ws.root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    result = CliRunner().invoke(app, [*_train(ws)[:-2], "--out", str(ro / "r")])
    assert_one_line_error(result, "permission denied")
    assert not any(ro.iterdir())


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Cap every file this process writes at ``limit`` bytes: a full disk, as far as a writer can tell."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Ignored, SIGXFSZ no longer kills the writer: its write fails with EFBIG, as ENOSPC would.
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_full_disk_is_one_line_and_leaves_no_run(ws):
    """Files capped at 1 MB: full fine-tuning's 4 MB checkpoint is the first write that cannot finish."""
    with file_size_limit(1 << 20):
        result = CliRunner().invoke(app, _train(ws, "--set", "train.method=full", "--set", "train.epochs=1"))
    assert_one_line_error(result, "error: disk full or file too large while writing ")
    assert "File too large" in result.stderr and "free some space or choose another --out" in result.stderr
    assert list((ws.root / "runs").iterdir()) == []  # no run, no hidden partial


@pytest.mark.parametrize(
    ("patch", "phrase"),
    [
        ("training_step", "out of memory at train.batch_size=32, data.max_length=16; lower one of them"),
        (
            "prediction_step",
            "out of memory while evaluating at train.eval_batch_size=128, data.max_length=16",
        ),
    ],
)
def test_a_batch_that_does_not_fit_names_the_setting(ws, monkeypatch, patch, phrase):
    from transformers import Trainer

    def fail(*args, **kwargs):
        raise RuntimeError(ALLOCATION_FAILED)

    monkeypatch.setattr(Trainer, patch, fail)
    result = CliRunner().invoke(app, _train(ws, "--set", "train.epochs=1"))
    assert_one_line_error(result, phrase)
    if patch == "training_step":  # before the first checkpoint: nothing to keep
        assert sorted(p.name for p in (ws.root / "runs").iterdir()) == []
    else:  # training finished and checkpointed its last step: kept, and the way back is named
        assert (
            f"kept the last checkpoint (step 1): resume with: lora-ft train --resume {ws.out}"
            in result.stderr
        )
        assert (ws.root / "runs" / ".r.partial" / "checkpoints" / "checkpoint-1").is_dir()


def test_a_cuda_out_of_memory_error_names_the_setting_too(ws, monkeypatch):
    from transformers import Trainer

    def fail(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "training_step", fail)
    result = CliRunner().invoke(app, _train(ws, "--set", "train.batch_size=4"))
    assert_one_line_error(result, "out of memory at train.batch_size=4")


def test_pickled_weights_load_only_when_allowed_and_then_weights_only(ws, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from lora_ft.data.task import Task
    from lora_ft.training.modeling import load_model

    pickled = _pickled_model(ws)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_model(
        ModelConfig(name=str(pickled), allow_pickle=True), Task.legacy(["negative", "positive"])
    )
    assert calls == [True]
    expected = AutoModelForSequenceClassification.from_pretrained(ws.model).state_dict()
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_even_when_pickles_are_allowed(ws):
    pickled = _pickled_model(ws)
    marker = ws.root / "payload-ran"
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload(marker)}, pickled / "pytorch_model.bin")
    result = CliRunner().invoke(app, _train(ws, "--set", "model.allow_pickle=true", model=pickled))
    assert_one_line_error(result, "hold objects other than tensors")
    assert "weights_only=False" not in result.output
    assert not marker.exists()
    assert not (ws.root / "runs").exists()


def test_trust_remote_code_is_false_unless_asked(ws, monkeypatch):
    import transformers

    from lora_ft.data.task import Task
    from lora_ft.training.modeling import load_model, load_model_skeleton

    seen = []
    for cls in (
        transformers.AutoConfig,
        transformers.AutoTokenizer,
        transformers.AutoModelForSequenceClassification,
    ):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            seen.append((klass.__name__, kwargs.get("trust_remote_code")))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_model(ModelConfig(name=str(ws.model)), Task.legacy(["negative", "positive"]))
    load_model_skeleton(str(ws.model))
    assert {name for name, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"}
    assert all(flag is False for _, flag in seen), seen
    seen.clear()
    load_model(ModelConfig(name=str(ws.model), trust_remote_code=True), Task.legacy(["negative", "positive"]))
    assert seen and all(flag is True for _, flag in seen), seen


def test_a_very_long_sentence_is_truncated_not_an_error(ws):
    from lora_ft.training.prepare import prepare

    data = ws.data_dir("long", [("a wonderful film " * 5_000, 1), ("dull", 0)] * 4)
    prepared = prepare(
        load_config(None, [f"model.name={ws.model}", f"data.name={data}", "data.max_length=16"])
    )
    assert max(prepared.tokenized["train"]["length"]) == 16
