"""A decoder LLM as a sequence classifier: the pad token a decoder lacks, right padding that leaves
each row's logits its own, LoRA training, a verified merge that plain transformers loads as
``LlamaForSequenceClassification``, PEFT loading the adapter with the same logits, and serving.

A tiny random Llama built from a config (2 layers, hidden 32) with a word-level tokenizer that has
an eos token and no pad token, as decoders ship; the real smollm2-135m, cut to 2 layers, in one slow test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import ModelConfig
from lora_ft.data.task import Task
from lora_ft.serving.artifacts import load_artifact
from lora_ft.serving.export import export_merged
from lora_ft.serving.predict import predict_logits
from lora_ft.training.modeling import load_model
from lora_ft.training.train import train

from .conftest import NEGATIVE, POSITIVE, assert_one_line_error, toy_rows, write_split
from .test_train import _tiny_cfg

runner = CliRunner()
LABELS = ["neg", "pos"]
# Lengths 1 to 12 tokens, so a batch of them pads most rows.
TEXTS = ["ok", "warm and wise", "a dull, lifeless mess 7", "the plot is a mess but the cast is warm and wise"]


def word_tokenizer(*, eos: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for the toy sentences: ``<unk>``, ``</s>`` when ``eos``, and no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for s in POSITIVE + NEGATIVE + TEXTS for w in re.findall(r"\w+|[^\w\s]+", s)})
    specials = ["<unk>", "</s>"] if eos else ["<unk>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *words, *map(str, range(300))]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="</s>" if eos else None
    )


def save_tiny_llama(out: Path, *, eos: bool = True) -> Path:
    """A random 2-layer Llama causal LM (what a decoder checkpoint is) with ``word_tokenizer``."""
    tok = word_tokenizer(eos=eos)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=None, bos_token_id=None,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def logits(model, tokenizer, batch_size: int = 4) -> torch.Tensor:
    """``TEXTS``' logits through lora-ft's own batching."""
    out = predict_logits(model, tokenizer, TEXTS, max_length=32, batch_size=batch_size, device="cpu")
    return torch.from_numpy(out)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("toy-data")
    write_split(d / "train.csv", toy_rows(48))
    write_split(d / "validation.csv", toy_rows(16, 100))
    write_split(d / "test.csv", toy_rows(16, 200))
    return d


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, llama_dir, toy_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "lora"
    train(_tiny_cfg(llama_dir, toy_dir, "train.learning_rate=1e-2", "lora.targets=[q_proj,v_proj]"), out)
    return out


def test_a_decoder_without_pad_token_pads_with_eos_on_the_right(llama_dir):
    loaded = load_model(ModelConfig(name=str(llama_dir)), Task.legacy(LABELS))
    eos = loaded.tokenizer.eos_token_id
    assert eos == 1 and loaded.tokenizer.pad_token == "</s>" and loaded.tokenizer.padding_side == "right"
    assert loaded.model.config.pad_token_id == eos
    assert isinstance(loaded.model, LlamaForSequenceClassification)


def test_a_padded_batch_gives_each_row_the_logits_it_has_alone(llama_dir):
    loaded = load_model(ModelConfig(name=str(llama_dir)), Task.legacy(LABELS))
    model, tok = loaded.model.eval(), loaded.tokenizer
    lengths = [len(ids) for ids in tok(TEXTS)["input_ids"]]
    assert lengths == [1, 3, 6, 12]
    alone = logits(model, tok, batch_size=1)
    torch.testing.assert_close(logits(model, tok, batch_size=4), alone, atol=1e-5, rtol=0)
    # The training collator pads the same way (tokenizer.padding_side).
    batch = DataCollatorWithPadding(tok)([tok(t) for t in TEXTS])
    assert (batch["input_ids"][0, 1:] == tok.pad_token_id).all()
    with torch.no_grad():
        collated = model(**batch).logits
    torch.testing.assert_close(collated, alone, atol=1e-5, rtol=0)
    assert (collated[0] - collated[3]).abs().max() > 1e-3  # rows differ: not all pooled at one position


def test_a_decoder_with_no_pad_and_no_eos_token_is_a_one_line_error(tmp_path, toy_dir):
    model = save_tiny_llama(tmp_path / "no-eos", eos=False)
    args = [
        "train",
        "--set",
        f"model.name={model}",
        "--set",
        f"data.name={toy_dir}",
        "--out",
        str(tmp_path / "r"),
    ]
    result = runner.invoke(app, args)
    assert_one_line_error(result, "has no pad token and no eos token to pad with")
    assert not (tmp_path / "r").exists()


def _peft_logits(base: Path, adapter: Path, pad_token_id: int) -> torch.Tensor:
    from peft import PeftModel

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, pad_token_id=pad_token_id)
    model = PeftModel.from_pretrained(model, adapter).eval()
    tok = word_tokenizer(eos=True)
    tok.pad_token = tok.eos_token
    with torch.no_grad():
        return model(**tok(TEXTS, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("targets", ["[q_proj,v_proj]", "all-linear"])
def test_lora_decoder_trains_merges_and_peft_loads_it_with_the_same_logits(
    tmp_path, llama_dir, toy_dir, targets
):
    run = tmp_path / "run"
    train(_tiny_cfg(llama_dir, toy_dir, "train.learning_rate=1e-2", f"lora.targets={targets}"), run)
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    wanted = {"q_proj", "v_proj"} if targets != "all-linear" else {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert wanted <= set(adapter_config["target_modules"]) and adapter_config["modules_to_save"] == ["score"]
    artifact = load_artifact(run)
    ours = logits(artifact.model, artifact.tokenizer)

    report = export_merged(run, tmp_path / "merged")
    assert report.max_abs_logit_diff <= 1e-4 and report.agreement == 1.0
    merged = LlamaForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.pad_token_id == 1
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "merged")
    assert tok.pad_token == "</s>" and tok.padding_side == "right"
    with torch.no_grad():
        plain = merged(**tok(TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(plain, ours, atol=1e-4, rtol=0)

    torch.testing.assert_close(_peft_logits(llama_dir, run / "adapter", 1), ours, atol=1e-5, rtol=0)
    base = load_model(ModelConfig(name=str(llama_dir)), Task.legacy(LABELS)).model.eval()
    base_logits = logits(base, artifact.tokenizer)
    assert (ours - base_logits).abs().max() > 1e-2  # training changed the outputs: the checks above bite


def test_gradient_checkpointing_trains_a_decoder_to_the_same_loss(tmp_path, llama_dir, toy_dir, lora_run):
    with_ckpt = train(
        _tiny_cfg(
            llama_dir, toy_dir, "train.learning_rate=1e-2", "lora.targets=[q_proj,v_proj]",
            "train.gradient_checkpointing=true",
        ),
        tmp_path / "ckpt",
    )  # fmt: skip
    plain = json.loads((lora_run / "metrics.json").read_text())
    assert with_ckpt["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-6)
    assert with_ckpt["test"]["loss"] == pytest.approx(plain["test"]["loss"], abs=1e-5)


def test_predict_eval_and_inspect_serve_a_decoder_run(lora_run, toy_dir):
    metrics = json.loads((lora_run / "metrics.json").read_text())
    result = runner.invoke(app, ["eval", str(lora_run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == metrics["test"]["accuracy"]
    result = runner.invoke(app, ["predict", str(lora_run), *TEXTS])
    assert result.exit_code == 0, result.output
    assert all(text in result.stdout for text in TEXTS[:2])
    result = runner.invoke(app, ["inspect", str(lora_run)])
    assert result.exit_code == 0, result.output
    assert "q_proj" in result.stdout and "v_proj" in result.stdout


@pytest.mark.slow
def test_real_smollm2_trains_with_lora_and_merges(tmp_path, toy_dir):
    """The built-in smollm2-135m cut to 2 layers, a few LoRA steps, a verified merge."""
    run = tmp_path / "run"
    cfg = _tiny_cfg(
        Path("smollm2-135m"), toy_dir, "model.name=smollm2-135m", "model.num_layers=2",
        "train.max_steps=3", "lora.targets=[q_proj,v_proj]",
    )  # fmt: skip
    train(cfg, run)
    artifact = load_artifact(run)
    assert artifact.tokenizer.pad_token == "<|im_end|>" and artifact.model.config.pad_token_id == 2
    ours = logits(artifact.model, artifact.tokenizer)
    torch.testing.assert_close(
        logits(artifact.model, artifact.tokenizer, batch_size=1), ours, atol=1e-4, rtol=0
    )
    report = export_merged(run, tmp_path / "merged")
    assert report.max_abs_logit_diff <= 1e-4 and report.agreement == 1.0
    merged = LlamaForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.num_hidden_layers == 2 and merged.config.pad_token_id == 2
