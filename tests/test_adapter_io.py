"""Adapters in PEFT's format, with PEFT itself as the oracle: each tool reads the other's adapters and
gets the same logits; the on-disk format matches PEFT's; bad adapters are one-line errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from lora_ft.errors import LoraFtError
from lora_ft.lora.inject import inject_lora, lora_layers
from lora_ft.lora.io import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from lora_ft.lora.saving import save_adapter
from lora_ft.lora.targets import default_head
from lora_ft.serving.artifacts import load_artifact

SENTENCES = ["a gorgeous, moving film", "tedious and flat", "the plot is a mess but the cast is warm", "ok"]
TARGETS = {"bert": ["query", "value"], "distilbert": ["q_lin", "v_lin"]}


def base_model(model_dir: Path):
    return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()


def logits_of(model, model_dir: Path) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        return model(**tok(SENTENCES, padding=True, return_tensors="pt")).logits


def make_adapter(model_dir: Path, out: Path, *, seed: int = 0, label_names=("neg", "pos"), **save_kwargs):
    """A LoRA model on ``model_dir`` with non-zero lora_B and a trained-looking head, saved to ``out``."""
    model = base_model(model_dir)
    inject_lora(model, TARGETS[model.config.model_type], r=2, alpha=4, head=default_head(model))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
        for name in default_head(model):
            for p in model.get_submodule(name).parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    model.eval()
    save_kwargs.setdefault("base_model_name_or_path", str(model_dir))
    save_adapter(model, out, head=default_head(model), label_names=list(label_names), **save_kwargs)
    return model


def _peft_adapter(model_dir: Path, out: Path, **lora_kwargs):
    from peft import LoraConfig, TaskType, get_peft_model

    model = base_model(model_dir)
    targets = TARGETS[model.config.model_type]
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=targets, **lora_kwargs)
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    peft_model.eval()
    peft_model.save_pretrained(out)
    return peft_model


@pytest.fixture(params=["bert", "distilbert"])
def model_dir(request, tiny_bert_dir, tiny_distilbert_dir) -> Path:
    return {"bert": tiny_bert_dir, "distilbert": tiny_distilbert_dir}[request.param]


def test_lora_ft_adapter_loads_in_peft_with_the_same_logits(tmp_path, model_dir):
    from peft import PeftModel

    ours = make_adapter(model_dir, tmp_path / "adapter")
    expected = logits_of(ours, model_dir)
    peft_model = PeftModel.from_pretrained(base_model(model_dir), tmp_path / "adapter").eval()
    got = logits_of(peft_model, model_dir)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (expected - logits_of(base_model(model_dir), model_dir)).abs().max() > 1e-2, (
        "the adapter changes nothing"
    )


def test_peft_adapter_loads_in_lora_ft_with_the_same_logits(tmp_path, model_dir, caplog):
    peft_model = _peft_adapter(model_dir, tmp_path / "peft")
    expected = logits_of(peft_model, model_dir)
    with caplog.at_level(logging.WARNING, logger="lora_ft"):
        artifact = load_artifact(tmp_path / "peft")  # the base comes from base_model_name_or_path
    assert not caplog.records, "PEFT's own null config fields must load without warnings"
    assert artifact.kind == "adapter" and artifact.label_names == ["LABEL_0", "LABEL_1"]
    torch.testing.assert_close(logits_of(artifact.model, model_dir), expected, atol=1e-5, rtol=0)
    assert (expected - logits_of(base_model(model_dir), model_dir)).abs().max() > 1e-2


def test_peft_rslora_and_per_module_rank_and_alpha(tmp_path, tiny_bert_dir):
    peft_model = _peft_adapter(
        tiny_bert_dir,
        tmp_path / "peft",
        use_rslora=True,
        rank_pattern={"layer.0.attention.self.query": 2},
        alpha_pattern={"value": 3},
    )
    artifact = load_artifact(tmp_path / "peft")
    layers = lora_layers(artifact.model)
    assert layers["bert.encoder.layer.0.attention.self.query"].r == 2
    assert layers["bert.encoder.layer.1.attention.self.query"].r == 4
    assert layers["bert.encoder.layer.1.attention.self.value"].scaling == pytest.approx(3 / 4**0.5)
    torch.testing.assert_close(
        logits_of(artifact.model, tiny_bert_dir), logits_of(peft_model, tiny_bert_dir), atol=1e-5, rtol=0
    )


def test_on_disk_format_matches_peft(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "ours")
    _peft_adapter(tiny_bert_dir, tmp_path / "peft")
    keys = {}
    for name in ("ours", "peft"):
        with safe_open(str(tmp_path / name / WEIGHTS_NAME), "pt") as f:
            keys[name] = set(f.keys())
    assert keys["ours"] == keys["peft"]
    ours = json.loads((tmp_path / "ours" / CONFIG_NAME).read_text())
    theirs = json.loads((tmp_path / "peft" / CONFIG_NAME).read_text())
    for key in (
        "peft_type",
        "task_type",
        "bias",
        "fan_in_fan_out",
        "use_rslora",
        "use_dora",
        "init_lora_weights",
    ):
        assert ours[key] == theirs[key], key
    assert set(ours["target_modules"]) == set(theirs["target_modules"]) == {"query", "value"}
    assert set(ours["modules_to_save"]) <= set(theirs["modules_to_save"])
    assert (ours["r"], ours["lora_alpha"]) == (2, 4)


def test_distilbert_head_names_select_only_the_head_under_peft_rule(tmp_path, tiny_distilbert_dir):
    make_adapter(tiny_distilbert_dir, tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert config["modules_to_save"] == ["classifier", "pre_classifier"]
    assert config["target_modules"] == ["q_lin", "v_lin"]


def test_head_named_by_suffix_is_saved_under_full_names_and_loads_in_peft(tmp_path, tiny_bert_dir):
    from peft import PeftModel

    model = base_model(tiny_bert_dir)
    inject_lora(model, ["query"], r=2, alpha=4, head=["classifier", "pooler"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # LoRA B and A, the classifier and the pooler: all away from their start
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    save_adapter(
        model, tmp_path / "a", head=["classifier", "pooler"], base_model_name_or_path=str(tiny_bert_dir)
    )
    with safe_open(str(tmp_path / "a" / WEIGHTS_NAME), "pt") as f:
        assert "base_model.model.bert.pooler.dense.weight" in set(f.keys())
    assert json.loads((tmp_path / "a" / CONFIG_NAME).read_text())["modules_to_save"] == [
        "classifier",
        "pooler",
    ]
    expected = logits_of(model, tiny_bert_dir)
    peft_model = PeftModel.from_pretrained(base_model(tiny_bert_dir), tmp_path / "a").eval()
    torch.testing.assert_close(logits_of(peft_model, tiny_bert_dir), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        logits_of(load_artifact(tmp_path / "a").model, tiny_bert_dir), expected, atol=1e-5, rtol=0
    )


def test_head_survives_save_and_reload(tmp_path, tiny_bert_dir):
    ours = make_adapter(tiny_bert_dir, tmp_path / "a")
    artifact = load_artifact(tmp_path / "a")
    trained = ours.classifier.weight
    assert torch.equal(artifact.model.classifier.weight, trained)
    assert not torch.equal(base_model(tiny_bert_dir).classifier.weight, trained)
    assert torch.equal(logits_of(artifact.model, tiny_bert_dir), logits_of(ours, tiny_bert_dir))
    assert artifact.label_names == ["neg", "pos"]
    assert not artifact.model.training and not any(p.requires_grad for p in artifact.model.parameters())


def test_built_in_base_is_recorded_by_hub_id_and_loaded_offline(tmp_path, minilm_dir):
    from lora_ft.config import ModelConfig
    from lora_ft.data.assets import hub_id_of
    from lora_ft.data.task import Task
    from lora_ft.training.modeling import load_model

    loaded = load_model(ModelConfig(name="minilm-l6"), Task.legacy(["neg", "pos"]))
    inject_lora(loaded.model, ["query"], r=2, alpha=4, head=["classifier"])
    with torch.no_grad():
        for layer in lora_layers(loaded.model).values():
            layer.lora_B.normal_()
    # What training records for a built-in base (train._save_outputs): its hub id, as PEFT users know it.
    hub_id = hub_id_of("minilm-l6")
    assert hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    save_adapter(loaded.model, tmp_path / "a", head=["classifier"], base_model_name_or_path=hub_id)
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert config["base_model_name_or_path"] == hub_id
    # No lora-ft model metadata (as from PEFT): the hub id alone must find the built-in copy, offline.
    artifact = load_artifact(tmp_path / "a")
    assert artifact.base == "minilm-l6"
    torch.testing.assert_close(
        logits_of(artifact.model, minilm_dir), logits_of(loaded.model.eval(), minilm_dir), atol=1e-5, rtol=0
    )


def test_edited_lora_alpha_is_caught_by_the_recorded_scaling(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "a")
    path = tmp_path / "a" / CONFIG_NAME
    config = json.loads(path.read_text())
    config["lora_alpha"] = 16
    path.write_text(json.dumps(config))
    with pytest.raises(
        LoraFtError, match=r"trained with scaling 2 but .*gives 8; restore the original lora_alpha"
    ):
        read_adapter(tmp_path / "a")


def test_rank_in_config_must_match_the_tensors(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "a")
    path = tmp_path / "a" / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), "r": 8}))
    with pytest.raises(LoraFtError, match="has rank 2 in the weights but r=8"):
        read_adapter(tmp_path / "a")


def test_unknown_config_keys_are_ignored_with_a_warning(tmp_path, tiny_bert_dir, caplog):
    ours = make_adapter(tiny_bert_dir, tmp_path / "a")
    path = tmp_path / "a" / CONFIG_NAME
    path.write_text(
        json.dumps({**json.loads(path.read_text()), "future_option": {"x": 1}, "future_off": None})
    )
    with caplog.at_level(logging.WARNING, logger="lora_ft"):
        artifact = load_artifact(tmp_path / "a")
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "future_option" in messages and "future_off" not in messages
    assert torch.equal(logits_of(artifact.model, tiny_bert_dir), logits_of(ours, tiny_bert_dir))


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        ({"use_dora": True}, "needs lora_A and lora_B and lora_magnitude_vector"),
        ({"bias": "all"}, "only bias='none' is supported"),
        ({"peft_type": "IA3"}, "is not LORA"),
        ({"init_lora_weights": "pissa"}, "rewrites the base weights"),
    ],
)
def test_unsupported_variants_are_refused(tmp_path, tiny_bert_dir, edit, phrase):
    make_adapter(tiny_bert_dir, tmp_path / "a")
    path = tmp_path / "a" / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(LoraFtError, match=phrase):
        read_adapter(tmp_path / "a")


def test_missing_and_corrupt_files(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "a")
    config, weights = tmp_path / "a" / CONFIG_NAME, tmp_path / "a" / WEIGHTS_NAME
    good = config.read_text()
    config.write_text("{not json")
    with pytest.raises(LoraFtError, match="adapter_config.json is not valid JSON"):
        read_adapter(tmp_path / "a")
    config.write_text(good)
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(LoraFtError, match="cannot read .*adapter_model.safetensors: .*corrupt or truncated"):
        read_adapter(tmp_path / "a")
    weights.unlink()
    with pytest.raises(LoraFtError, match="is incomplete: adapter_model.safetensors is missing"):
        read_adapter(tmp_path / "a")
    config.unlink()
    with pytest.raises(LoraFtError, match="is not an adapter directory: adapter_config.json is missing"):
        read_adapter(tmp_path / "a")


def test_adapter_for_another_base_is_refused_naming_the_module(tmp_path, tiny_bert_dir, tiny_distilbert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "a")
    with pytest.raises(
        LoraFtError, match=r"another base model: module bert\.encoder\.layer\.0\.attention\.self\.query"
    ):
        load_artifact(tmp_path / "a", base=str(tiny_distilbert_dir))
    wider = tmp_path / "wide-bert"
    config = BertConfig(
        vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(wider)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(wider)
    with pytest.raises(
        LoraFtError,
        match=r"layer\.0\.attention\.self\.query is \(48, 48\) here but the adapter expects \(32, 32\)",
    ):
        load_artifact(tmp_path / "a", base=str(wider))


def test_one_object_serves_base_and_adapted_outputs(tmp_path, tiny_bert_dir):
    from lora_ft import merge_lora, set_lora_disabled, unmerge_lora

    ours = make_adapter(tiny_bert_dir, tmp_path / "a")
    adapted = logits_of(ours, tiny_bert_dir)
    set_lora_disabled(ours, True)
    without = logits_of(ours, tiny_bert_dir)
    # Disabled: the base encoder with the trained head, which differs from the adapted model.
    reference = base_model(tiny_bert_dir)
    reference.classifier.load_state_dict(ours.classifier.state_dict())
    torch.testing.assert_close(without, logits_of(reference, tiny_bert_dir), atol=1e-6, rtol=0)
    assert (without - adapted).abs().max() > 1e-2
    set_lora_disabled(ours, False)
    merge_lora(ours)
    torch.testing.assert_close(logits_of(ours, tiny_bert_dir), adapted, atol=1e-5, rtol=0)
    unmerge_lora(ours)
    torch.testing.assert_close(logits_of(ours, tiny_bert_dir), adapted, atol=1e-5, rtol=0)


def test_saved_adapter_dir_has_the_permissions_mkdir_gives(tmp_path, tiny_bert_dir):
    """Written through a private mkdtemp, published readable like any directory the user makes."""
    old = os.umask(0o027)
    try:
        make_adapter(tiny_bert_dir, tmp_path / "a")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o750
