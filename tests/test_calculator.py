"""The parameter-savings calculator (``lora-ft targets --ranks``): closed form, a real injected model,
a real saved adapter, and Llama-2 7B / 70B planned from a hand-written config.json alone."""

from __future__ import annotations

import json

import psutil
import pytest
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.lora.calculator import savings
from lora_ft.lora.inject import count_parameters, inject_lora
from lora_ft.lora.io import WEIGHTS_NAME
from lora_ft.lora.saving import save_adapter
from lora_ft.lora.targets import default_head, default_targets
from lora_ft.training.modeling import load_model_skeleton

from .conftest import assert_one_line_error

runner = CliRunner()

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)  # fmt: skip
LLAMA_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=32000)  # fmt: skip


def _config_json(tmp_path, name: str, **fields) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", **fields}), encoding="utf-8")
    return str(d / "config.json")


@pytest.mark.parametrize(
    ("fixture", "dims"),
    [
        # (in + out) of each wrapped Linear; head = its parameters (weight + bias)
        ("tiny_bert_dir", {"wrapped": [64] * 4, "head": 32 * 2 + 2}),
        ("tiny_distilbert_dir", {"wrapped": [64] * 4, "head": (32 * 32 + 32) + (32 * 2 + 2)}),
    ],
)
def test_counts_match_the_closed_form_and_an_injected_model(request, tmp_path, fixture, dims):
    from transformers import AutoModelForSequenceClassification

    model_dir = request.getfixturevalue(fixture)
    skeleton = load_model_skeleton(str(model_dir))
    plan = savings(skeleton, default_targets(skeleton), [1, 4, 16], default_head(skeleton))
    assert plan.wrapped == len(dims["wrapped"])
    assert plan.targeted_params == len(dims["wrapped"]) * 32 * 32
    for cost in plan.ranks:
        assert cost.lora_params == cost.r * sum(dims["wrapped"])
        assert cost.head_params == dims["head"]

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    base_total = count_parameters(model)[1]
    assert plan.total_params == base_total
    head = default_head(model)
    inject_lora(model, default_targets(model), r=4, alpha=8, head=head)
    trainable, total = count_parameters(model)
    cost = plan.ranks[1]
    assert cost.trainable_params == trainable
    assert cost.trainable_percent == pytest.approx(100 * trainable / total)

    save_adapter(model, tmp_path / "adapter", head=head, base_model_name_or_path=str(model_dir),
                 label_names=["negative", "positive"])  # fmt: skip
    on_disk = (tmp_path / "adapter" / WEIGHTS_NAME).stat().st_size
    # The tensor bytes are exact; the header differs only by the label names and scaling digits.
    assert abs(cost.adapter_bytes - on_disk) <= 64, (cost.adapter_bytes, on_disk)
    assert cost.adapter_bytes - 4 * trainable > 0


def test_llama_2_7b_from_config_json_alone(tmp_path):
    config = _config_json(tmp_path, "llama-2-7b", **LLAMA_7B)
    skeleton = load_model_skeleton(config)
    assert default_targets(skeleton) == ["q_proj", "v_proj"]
    assert default_head(skeleton) == ["score"]
    plan = savings(skeleton, ["q_proj", "v_proj"], [4, 8, 16, 64], ["score"])
    by_rank = {c.r: c for c in plan.ranks}
    assert by_rank[8].lora_params == 4_194_304 == 32 * 2 * 8 * (4096 + 4096)
    assert by_rank[64].lora_params == 8 * 4_194_304
    assert by_rank[8].head_params == 4096 * 2  # score: Linear(4096, 2, bias=False)
    assert plan.targeted_params == 32 * 2 * 4096 * 4096
    assert plan.total_params == 6_607_351_808
    # PEFT's documented Llama-2-7B LoRA (q_proj, v_proj, r=8) on the causal LM: "trainable params:
    # 4,194,304 || all params: 6,742,609,920". The causal LM has lm_head (32000 x 4096) where we have score.
    causal_total = plan.total_params - 4096 * 2 + 32000 * 4096
    assert causal_total + by_rank[8].lora_params == 6_742_609_920
    assert by_rank[8].adapter_bytes == pytest.approx(4 * (4_194_304 + 8192), abs=32_000)

    result = runner.invoke(app, ["targets", config, "--ranks", "4,8,16,64"])
    assert result.exit_code == 0, result.output
    for text in ("4,194,304", "33,554,432", "6,607,351,808", "1,073,741,824", "16.1 MiB"):
        assert text in result.stdout, text


def test_llama_2_70b_is_planned_on_the_meta_device_without_memory(tmp_path):
    load_model_skeleton(_config_json(tmp_path, "warm", **{**LLAMA_7B, "num_hidden_layers": 1}))
    rss_before = psutil.Process().memory_info().rss
    skeleton = load_model_skeleton(_config_json(tmp_path, "llama-2-70b", **LLAMA_70B))
    rss_after = psutil.Process().memory_info().rss
    assert all(p.is_meta for p in skeleton.parameters())
    assert rss_after - rss_before < 300 * 2**20  # the weights would take 256 GiB in fp32
    plan = savings(skeleton, default_targets(skeleton), [8], default_head(skeleton))
    # 80 layers x (q_proj 8192->8192 + v_proj 8192->1024 with 8 of 64 heads as key/value heads)
    assert plan.ranks[0].lora_params == 80 * 8 * ((8192 + 8192) + (8192 + 1024)) == 16_384_000
    # Llama-2-70B's published 68,976,648,192 parameters, with the 2-label score in place of lm_head.
    assert plan.total_params == 68_976_648_192 - 32000 * 8192 + 8192 * 2


@pytest.mark.parametrize(
    ("ranks", "phrase"),
    [
        ("0", "--ranks must be integers >= 1"),
        ("4,0,8", "--ranks must be integers >= 1"),
        ("4,eight", "--ranks takes comma-separated integers"),
        (",", "--ranks must be integers >= 1"),
    ],
)
def test_bad_ranks(tiny_bert_dir, ranks, phrase):
    result = runner.invoke(app, ["targets", str(tiny_bert_dir), "--ranks", ranks])
    assert_one_line_error(result, phrase)
    assert result.stdout == ""
