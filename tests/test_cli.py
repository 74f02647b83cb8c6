"""The CLI: bad input is one line on stderr, a non-zero exit, no traceback and no run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_ft.cli.app import app

from .conftest import toy_rows, write_split

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, phrase: str):
    assert result.exit_code != 0, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output + result.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert phrase in err, err


def _data_with(tmp_path: Path, header, rows) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for split in ("train", "validation"):
        write_split(d / f"{split}.csv", rows, header=header)
    return d


@pytest.fixture()
def out(tmp_path):
    return tmp_path / "runs" / "r"


def _common(model_dir, data_dir, out):
    return [
        "--set", f"model.name={model_dir}", "--set", f"data.name={data_dir}", "--set", "train.epochs=1",
        "--set", "data.max_length=16", "--out", str(out),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--set", "lora.r=0"], "lora.r must be an integer >= 1"),
        (["--set", "lora.dropout=1"], "lora.dropout must be in [0, 1)"),
        (["--set", "lora.rnk=4"], "unknown config key 'lora.rnk'"),
        (["--method", "qlora"], "train.method must be one of lora, full, head"),
        (["--set", "lora.targets=[nonexistent_proj]"], "nonexistent_proj"),
        (["--set", "lora.targets=[attention]"], "a BertAttention, not an nn.Linear"),
        (["--set", "train.trainer={no_such_arg: 1}"], "no_such_arg"),
    ],
)
def test_train_bad_settings(tmp_path, tiny_bert_dir, toy_data_dir, out, args, phrase):
    result = invoke("train", *_common(tiny_bert_dir, toy_data_dir, out), *args)
    assert_one_line_error(result, phrase)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_trainer_key_that_a_setting_owns_is_refused_naming_the_setting(tiny_bert_dir, toy_data_dir, out):
    """Issue #15's example: passed through, num_train_epochs=3 would quietly win over train.epochs=1."""
    result = invoke(
        "train", *_common(tiny_bert_dir, toy_data_dir, out), "--set", "train.trainer.num_train_epochs=3"
    )
    assert_one_line_error(
        result, "train.trainer.num_train_epochs is lora-ft's to set: use train.epochs instead"
    )
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_train_missing_config_file(tmp_path, out):
    assert_one_line_error(
        invoke("train", str(tmp_path / "nope.yaml"), "--out", str(out)), "config file not found"
    )
    assert not out.exists()


def test_train_unknown_model_path(tmp_path, toy_data_dir, out):
    result = invoke("train", *_common(tmp_path / "no-such-model", toy_data_dir, out))
    assert_one_line_error(result, "model path not found")
    assert not out.exists()


def test_train_data_without_text_column(tmp_path, tiny_bert_dir, out):
    data = _data_with(tmp_path, ("text", "label"), toy_rows(8))
    result = invoke("train", *_common(tiny_bert_dir, data, out))
    assert_one_line_error(result, "no column 'sentence'")
    assert not out.exists()


def test_train_labels_out_of_range(tmp_path, tiny_bert_dir, out):
    data = _data_with(tmp_path, ("sentence", "label"), [("good", 0), ("bad", 1), ("odd", 7)])
    result = invoke("train", *_common(tiny_bert_dir, data, out), "--set", "data.label_column=label")
    assert_one_line_error(result, "7")
    assert not out.exists()


def test_targets_dry_run_counts(tiny_bert_dir):
    result = invoke("targets", str(tiny_bert_dir), "--r", "4")
    assert result.exit_code == 0, result.output
    # 2 layers x (query, value), each 4 * (32 + 32); head: classifier 32*2 + 2
    assert "wrapped 4 of" in result.stdout
    assert f"{4 * 4 * 64:,} LoRA + {32 * 2 + 2:,} head" in result.stdout


def test_targets_bad_input(tmp_path, tiny_bert_dir):
    assert_one_line_error(invoke("targets", str(tmp_path / "missing")), "model path not found")
    assert_one_line_error(invoke("targets", str(tiny_bert_dir), "--targets", "q_lin"), "q_lin")
    assert_one_line_error(invoke("targets", str(tiny_bert_dir), "--r", "0"), "--r must be >= 1")


def test_fetch_unknown_asset():
    assert_one_line_error(invoke("fetch", "imagenet"), "unknown asset 'imagenet'")


def test_help_has_examples():
    for command in ("train", "targets", "fetch"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Examples" in result.stdout


def test_train_cli_end_to_end_and_module_entry_point(tmp_path, tiny_bert_dir, toy_data_dir):
    out = tmp_path / "cli-run"
    result = subprocess.run(
        [sys.executable, "-m", "lora_ft", "train", *_common(tiny_bert_dir, toy_data_dir, out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert "accuracy" in result.stdout and "trainable params" in result.stdout
    assert metrics["method"] == "lora"
