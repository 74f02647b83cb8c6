"""`merge` / `eval`: a verified merge into a plain checkpoint that loads without lora_ft, identical
evaluation of an adapter and its export, and bad input as one-line errors with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.errors import LoraFtError
from lora_ft.lora.inject import lora_layers
from lora_ft.serving.artifacts import PROVENANCE_NAME, load_artifact
from lora_ft.serving.evaluate import evaluate
from lora_ft.serving.export import export_merged

from .conftest import toy_rows, write_split
from .test_adapter_io import SENTENCES, base_model, logits_of, make_adapter

runner = CliRunner()

# Runs in a fresh interpreter: what a user without lora-ft (or PEFT) does with the export.
RELOAD = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
with torch.no_grad():
    logits = model(**tok(json.loads(sys.argv[2]), padding=True, return_tensors="pt")).logits
assert "lora_ft" not in sys.modules and "peft" not in sys.modules, "the export needs lora_ft or peft"
print(json.dumps({"logits": logits.tolist(), "id2label": model.config.id2label}))
"""


def assert_one_line_error(result, phrase: str):
    assert result.exit_code != 0, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output + result.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert phrase in err, err


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def safetensors_keys(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("toy-data")
    write_split(d / "train.csv", toy_rows(48))
    write_split(d / "validation.csv", toy_rows(16, 100))
    write_split(d / "test.csv", toy_rows(24, 200))
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_bert_dir, data_dir) -> Path:
    from lora_ft.training.train import train

    from .test_train import _tiny_cfg

    out = tmp_path_factory.mktemp("runs") / "run"
    train(_tiny_cfg(tiny_bert_dir, data_dir, "train.learning_rate=1e-2"), out)
    return out


def test_merged_export_loads_without_lora_ft_and_matches(tmp_path, tiny_bert_dir):
    adapted = make_adapter(tiny_bert_dir, tmp_path / "adapter")
    expected = logits_of(adapted, tiny_bert_dir)
    report = export_merged(tmp_path / "adapter", tmp_path / "merged")
    assert report.max_abs_logit_diff <= 1e-4 and report.agreement == 1.0 and report.drift is None
    assert report.probe_source == "16 built-in sentences" and report.accuracy is None

    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, str(tmp_path / "merged"), json.dumps(SENTENCES)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(reloaded["logits"]), expected, atol=1e-5, rtol=0)
    assert (expected - logits_of(base_model(tiny_bert_dir), tiny_bert_dir)).abs().max() > 1e-2
    assert reloaded["id2label"] == {"0": "neg", "1": "pos"}

    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", PROVENANCE_NAME} <= files
    assert safetensors_keys(tmp_path / "merged" / "model.safetensors") == safetensors_keys(
        tiny_bert_dir / "model.safetensors"
    )
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "max |Δlogit| = " in card and "Labels: 0 = neg, 1 = pos (single_label_classification)." in card
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_lower_dtype_reports_measured_drift(tmp_path, tiny_bert_dir, dtype):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    report = export_merged(tmp_path / "adapter", tmp_path / "merged", dtype=dtype)
    assert report.drift is not None
    assert 0 < report.drift["max_abs_logit_diff"] < 0.1  # rounding to 8 (bf16) or 11 (fp16) bits, measured
    assert 0.0 <= report.drift["agreement"] <= 1.0
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as f:
        assert f.get_slice("classifier.weight").get_dtype() == {"bfloat16": "BF16", "float16": "F16"}[dtype]
    assert f"Saved as {dtype}: max |Δlogit|" in (tmp_path / "merged" / "README.md").read_text()


def test_run_adapter_and_its_export_evaluate_identically(tmp_path, run_dir):
    artifact = load_artifact(run_dir)
    assert artifact.kind == "adapter" and artifact.run_dir == run_dir
    assert max(float(layer.lora_B.abs().max()) for layer in lora_layers(artifact.model).values()) > 0
    from_run = evaluate(artifact)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert from_run["accuracy"] == metrics["test"]["accuracy"]  # the Trainer's own figure
    assert from_run["loss"] == pytest.approx(metrics["test"]["loss"], abs=1e-4)

    report = export_merged(run_dir, tmp_path / "merged")
    assert report.probe_source.startswith("16 validation sentences of") and report.accuracy is not None
    merged = load_artifact(tmp_path / "merged")
    assert (
        merged.kind == "model" and merged.data == artifact.data and merged.max_length == artifact.max_length
    )
    from_export = evaluate(merged)  # the run's data and split, found through lora-ft.json
    assert from_export["data"] == from_run["data"] and from_export["samples"] == 24
    assert from_export["accuracy"] == from_run["accuracy"] and from_export["f1"] == from_run["f1"]
    assert from_export["loss"] == pytest.approx(from_run["loss"], abs=1e-5)
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "| test | " in card and "| split | accuracy | F1 (binary) | loss |" in card

    result = runner.invoke(app, ["eval", str(tmp_path / "merged"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == from_run["accuracy"]


def default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_run_adapter_dir_travels_with_card_tokenizer_and_readable_weights(run_dir):
    adapter = run_dir / "adapter"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    card = (adapter / "README.md").read_text()
    assert f"| test | {metrics['test']['accuracy']:.4f} |" in card and "from peft import PeftModel" in card
    assert (adapter / "tokenizer_config.json").is_file()
    modes = {
        p.relative_to(run_dir).as_posix(): p.stat().st_mode & 0o777 for p in run_dir.rglob("*") if p.is_file()
    }
    assert modes["adapter/adapter_model.safetensors"] == default_mode(), modes
    assert set(modes.values()) == {default_mode()}, modes


def test_merged_export_files_get_the_mode_open_gives(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    old = os.umask(0o027)
    try:
        export_merged(tmp_path / "adapter", tmp_path / "merged")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "merged").iterdir()}
    assert modes["model.safetensors"] == 0o640 and set(modes.values()) == {0o640}, modes


def test_head_method_run_evaluates_through_its_model_dir(tmp_path, tiny_distilbert_dir, data_dir):
    from lora_ft.training.train import train

    from .test_train import _tiny_cfg

    metrics = train(_tiny_cfg(tiny_distilbert_dir, data_dir, "train.method=head"), tmp_path / "run")
    artifact = load_artifact(tmp_path / "run")
    assert artifact.kind == "model" and artifact.data.name == str(data_dir)
    assert evaluate(artifact)["accuracy"] == metrics["test"]["accuracy"]
    assert (tmp_path / "run" / "model" / "model.safetensors").stat().st_mode & 0o777 == default_mode()
    with pytest.raises(LoraFtError, match="nothing to merge"):
        export_merged(tmp_path / "run", tmp_path / "merged")


def test_a_merge_that_changes_the_outputs_writes_nothing(tmp_path, tiny_bert_dir, monkeypatch):
    from lora_ft.lora.inject import merge_and_unload
    from lora_ft.serving import export

    def wrong_merge(model):  # folds three times the update: the check must see it
        for layer in lora_layers(model).values():
            layer.lora_B.data.mul_(3)
        return merge_and_unload(model)

    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    monkeypatch.setattr(export, "merge_and_unload", wrong_merge)
    with pytest.raises(LoraFtError, match=r"merge verification failed .* nothing was written"):
        export_merged(tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and leftovers(tmp_path) == []


def test_cli_merge_prints_the_figures_and_force_replaces(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    out = tmp_path / "out" / "merged"
    assert runner.invoke(app, ["merge", str(tmp_path / "adapter"), "--out", str(out)]).exit_code == 0
    (out / "old.txt").write_text("old")
    args = ["merge", str(tmp_path / "adapter"), "--out", str(out), "--dtype", "bfloat16", "--force"]
    assert_one_line_error(runner.invoke(app, args), "holds old.txt, which lora-ft did not write")
    (out / "old.txt").unlink()  # an export lora-ft wrote, and nothing else, is replaced
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "float32 merge vs adapter: max |Δlogit|" in result.stdout and "bfloat16 vs float32" in result.stdout
    )
    assert (out / "model.safetensors").is_file() and leftovers(out.parent) == []
    assert json.loads((out / PROVENANCE_NAME).read_text())["merge"]["dtype"] == "bfloat16"


def _break_weights(adapter: Path):
    (adapter / "adapter_model.safetensors").unlink()


def _corrupt_weights(adapter: Path):
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not js" + weights.read_bytes()[16:])


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        (_break_weights, "is incomplete: adapter_model.safetensors is missing"),
        (_corrupt_weights, "cannot read"),
    ],
)
def test_cli_merge_damaged_adapter_is_a_one_line_error(tmp_path, tiny_bert_dir, damage, phrase):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    damage(tmp_path / "adapter")
    result = runner.invoke(app, ["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")])
    assert_one_line_error(result, phrase)
    assert not (tmp_path / "merged").exists() and leftovers(tmp_path) == []


def test_cli_merge_adapter_for_another_base(tmp_path, tiny_bert_dir, tiny_distilbert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    args = [
        "merge",
        str(tmp_path / "adapter"),
        "--out",
        str(tmp_path / "m"),
        "--base",
        str(tiny_distilbert_dir),
    ]
    assert_one_line_error(runner.invoke(app, args), "another base model: module bert.encoder.layer.0")
    assert not (tmp_path / "m").exists() and leftovers(tmp_path) == []


def test_cli_merge_existing_out_needs_force(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    (tmp_path / "m").mkdir()
    result = runner.invoke(app, ["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "m")])
    assert_one_line_error(result, "already exists; pass --force")
    assert list((tmp_path / "m").iterdir()) == [] and leftovers(tmp_path) == []


def test_cli_merge_unwritable_out(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    (tmp_path / "a-file").write_text("not a directory")
    result = runner.invoke(app, ["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "a-file" / "m")])
    assert_one_line_error(result, "cannot write")
    assert (tmp_path / "a-file").read_text() == "not a directory" and leftovers(tmp_path) == []


@pytest.mark.skipif(
    sys.platform == "win32" or __import__("os").geteuid() == 0, reason="root ignores file modes"
)
def test_cli_merge_read_only_parent(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    (tmp_path / "ro").mkdir(mode=0o500)
    result = runner.invoke(app, ["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "ro" / "m")])
    assert_one_line_error(result, "permission denied")
    assert list((tmp_path / "ro").iterdir()) == []


def test_merge_refuses_to_overwrite_its_source_or_a_complete_model(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    with pytest.raises(LoraFtError, match="would replace the source"):
        export_merged(tmp_path / "adapter", tmp_path / "adapter", force=True)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(
        LoraFtError, match="holds a complete model, not a LoRA adapter: there is nothing to merge"
    ):
        export_merged(tiny_bert_dir, tmp_path / "m")
    with pytest.raises(LoraFtError, match="--dtype must be one of float32, float16, bfloat16"):
        export_merged(tmp_path / "adapter", tmp_path / "m", dtype="int8")
    assert not (tmp_path / "m").exists()


def test_eval_bad_split_and_plain_base_without_head(tmp_path, tiny_bert_dir, minilm_dir, data_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter", label_names=["0", "1"])
    result = runner.invoke(
        app, ["eval", str(tmp_path / "adapter"), "--data", str(data_dir), "--split", "dev"]
    )
    assert_one_line_error(result, "--split must be train, validation or test")
    result = runner.invoke(app, ["eval", str(minilm_dir), "--data", str(data_dir)])
    assert_one_line_error(result, "has no trained classification head")
