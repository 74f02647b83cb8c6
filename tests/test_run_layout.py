"""``training.layout.classify``: the one answer to "is this a run, an adapter or a model directory?"."""

from __future__ import annotations

from pathlib import Path

from lora_ft.lora.io import CONFIG_NAME
from lora_ft.training.layout import (
    ADAPTER,
    ADAPTER_DIR,
    CONFIG_FILE,
    MODEL,
    MODEL_CONFIG,
    MODEL_DIR,
    RUN,
    PathKind,
    classify,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return path


def test_a_run_holding_an_adapter_and_its_adapter_directory(tmp_path):
    run = tmp_path / "run"
    _touch(run / CONFIG_FILE)
    _touch(run / ADAPTER_DIR / CONFIG_NAME)
    assert classify(run) == PathKind(run, RUN, run=run, weights=run / ADAPTER_DIR, weights_kind=ADAPTER)
    inner = run / ADAPTER_DIR
    assert classify(inner) == PathKind(inner, ADAPTER, run=run, weights=inner, weights_kind=ADAPTER)


def test_a_full_run_its_model_directory_and_an_interrupted_run(tmp_path):
    run = tmp_path / "full"
    _touch(run / CONFIG_FILE)
    assert classify(run) == PathKind(run, RUN, run=run)  # neither adapter/ nor model/ yet
    _touch(run / MODEL_DIR / MODEL_CONFIG)
    assert classify(run) == PathKind(run, RUN, run=run, weights=run / MODEL_DIR, weights_kind=MODEL)
    inner = run / MODEL_DIR
    assert classify(inner) == PathKind(inner, MODEL, run=run, weights=inner, weights_kind=MODEL)


def test_bare_directories_belong_to_no_run(tmp_path):
    adapter = _touch(tmp_path / ADAPTER_DIR / CONFIG_NAME).parent  # named adapter/, but no run around it
    model = _touch(tmp_path / "merged" / MODEL_CONFIG).parent
    assert classify(adapter) == PathKind(adapter, ADAPTER, weights=adapter, weights_kind=ADAPTER)
    assert classify(model) == PathKind(model, MODEL, weights=model, weights_kind=MODEL)
    assert classify(tmp_path / "missing") == PathKind(tmp_path / "missing", None)
    assert classify(tmp_path) == PathKind(tmp_path, None)
