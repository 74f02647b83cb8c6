"""The training-memory estimate (``lora-ft targets --batch-size --seq-len``): the activation formula against
the tensors autograd really keeps on tiny models, and the arithmetic on Llama-2 7B from its config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.lora.calculator import savings
from lora_ft.lora.inject import inject_lora, lora_layers
from lora_ft.lora.memory import activation_bytes, layer_paths, memory_plan, model_shape
from lora_ft.training.modeling import load_model_skeleton

from .conftest import assert_one_line_error

runner = CliRunner()
LLAMA_7B = str(Path(__file__).resolve().parents[1] / "examples" / "configs" / "llama2-7b" / "config.json")


def _tiny(kind: str):
    from transformers import AutoModelForSequenceClassification, BertConfig, LlamaConfig

    torch.manual_seed(0)
    if kind == "llama":  # grouped-query attention and head_dim * heads != hidden: every width differs
        config = LlamaConfig(hidden_size=48, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
                             head_dim=16, num_key_value_heads=2, vocab_size=500, pad_token_id=0)  # fmt: skip
    else:
        config = BertConfig(hidden_size=48, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
                            vocab_size=500)  # fmt: skip
    model = AutoModelForSequenceClassification.from_config(config)
    return model.train()


def _saved_bytes(model, batch: int, seq_len: int) -> int:
    """The bytes of every floating-point tensor autograd keeps for backward (weights excluded), one forward."""
    ids = torch.randint(5, 100, (batch, seq_len))
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[0, -3:] = 0  # padding, as real batches have: the decoder then keeps its mask
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and t.is_floating_point():
            kept[storage.data_ptr()] = storage.nbytes()  # by storage: views of one tensor count once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask, labels=torch.zeros(batch, dtype=torch.long))
    return sum(kept.values())


@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("targets", [None, "all-linear", "query-value"])
@pytest.mark.parametrize(("batch", "seq_len"), [(3, 24), (2, 40)])
def test_activation_formula_matches_what_autograd_keeps(kind, targets, batch, seq_len):
    model = _tiny(kind)
    wrapped = None
    if targets is not None:
        spec = targets
        if targets == "query-value":
            spec = ["q_proj", "v_proj"] if kind == "llama" else ["query", "value"]
        inject_lora(
            model, spec, r=4, alpha=8, dropout=0.0, head=["score" if kind == "llama" else "classifier"]
        )
        wrapped = layer_paths(list(lora_layers(model)))
    measured = _saved_bytes(model, batch, seq_len)
    estimate = activation_bytes(model_shape(model), batch, seq_len, wrapped, 4, checkpointing=False, bytes_=4)
    # Measured: within 1.8% in every case (the attention mask's slices, ids and the pooler are left out).
    assert abs(estimate - measured) / measured < 0.025, (estimate, measured)


def test_llama2_7b_arithmetic_from_its_config_json():
    skeleton = load_model_skeleton(LLAMA_7B)
    plan = savings(skeleton, ["q_proj", "v_proj"], [8], ["score"])
    full, lora, bf16 = memory_plan(skeleton, plan, plan.wrapped_names, batch=1, seq_len=2048)
    params = 6_607_351_808  # the classifier: no lm_head, a 2-label score head
    assert (full.trainable_params, lora.trainable_params) == (params, 4_194_304 + 8_192)
    assert full.optimizer == 8 * params == 52_858_814_464  # the seed's "~56 GB" of AdamW state: 49.2 GiB
    assert (full.weights, full.gradients) == (4 * params, 4 * params)
    assert (lora.optimizer, lora.gradients) == (8 * 4_202_496, 4 * 4_202_496)  # 33.6 MB and 16.8 MB
    assert lora.weights == 4 * (params + 4_194_304)
    assert bf16.weights == 2 * (params - 8_192) + 4 * 4_202_496
    h, i, layers, heads, s = 4096, 11008, 32, 32, 2048
    full_layer = 6 * h + 4 * h + 4 * i + heads + s + 2
    assert full.activations == 4 * s * (layers * full_layer + 3 * h + 1) == 22_926_598_144
    # q/v LoRA: no normalised copies (-2h), no gate/up input (-h), no down input (-i), A x per wrapped (+2r)
    lora_layer = full_layer - 2 * h - h - i + 2 * 8
    assert lora.activations == 4 * s * (layers * lora_layer + h + 1)
    assert bf16.activations == lora.activations // 2
    assert full.activations_checkpointed == 4 * s * (layers * h + full_layer + 3 * h + 1)
    assert lora.total() == lora.weights + lora.gradients + lora.optimizer + lora.activations
    assert lora.added_by_training(True) == lora.gradients + lora.optimizer + lora.activations_checkpointed


def test_cli_json_has_savings_and_memory():
    result = runner.invoke(
        app, ["targets", LLAMA_7B, "--ranks", "8", "--batch-size", "1", "--seq-len", "2048", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {
        "model",
        "targets",
        "head",
        "wrapped",
        "linears",
        "targeted_params",
        "total_params",
        "ranks",
        "memory",
    }
    memory = out["memory"]
    assert (memory["batch_size"], memory["seq_len"]) == (1, 2048)
    assert [(row["method"], row["r"]) for row in memory["methods"]] == [
        ("full", None),
        ("lora", 8),
        ("lora-bf16", 8),
    ]
    assert set(memory["methods"][0]) == {"method", "r", "trainable_params", "weights", "gradients", "optimizer",
                                         "activations", "activations_checkpointed", "total", "total_checkpointed"}  # fmt: skip
    assert memory["methods"][0]["optimizer"] == 52_858_814_464
    assert out["ranks"][0]["lora_params"] == 4_194_304


def test_cli_table_prints_each_method():
    result = runner.invoke(
        app, ["targets", LLAMA_7B, "--batch-size", "1", "--seq-len", "2048", "--gradient-checkpointing"]
    )
    assert result.exit_code == 0, result.output
    assert "with gradient checkpointing" in result.stdout
    for name in ("full (fp32)", "LoRA r=8", "LoRA r=8, bf16 base", "49.2 GiB"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--batch-size", "4"], "--batch-size and --seq-len go together"),
        (["--seq-len", "4"], "--batch-size and --seq-len go together"),
        (["--batch-size", "0", "--seq-len", "8"], "--batch-size and --seq-len must be >= 1, got 0 and 8"),
        (["--batch-size", "2", "--seq-len", "-1"], "--batch-size and --seq-len must be >= 1, got 2 and -1"),
        (["--json"], "--json prints the calculator: give --ranks"),
    ],
)
def test_cli_bad_memory_options(args, phrase):
    result = runner.invoke(app, ["targets", LLAMA_7B, *args])
    assert_one_line_error(result, phrase)
    assert result.stdout == ""  # refused before the targets table, not after it


def test_unsupported_family_is_one_line_error(tiny_distilbert_dir):
    result = runner.invoke(app, ["targets", str(tiny_distilbert_dir), "--batch-size", "2", "--seq-len", "8"])
    assert_one_line_error(result, "no activation-memory formula for model type 'distilbert'")
    assert result.stdout == ""
