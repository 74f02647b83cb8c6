"""The paths a decoder takes beyond train/merge/predict (tests/test_decoder.py): `compare` (LoRA vs
full vs head-only on one budget), bf16 autocast over a bf16 base, and several adapters served on one
decoder base, each giving exactly its own run's logits. The same tiny random Llama."""

from __future__ import annotations

import json

import pytest
import torch

from lora_ft.compare.runner import compare
from lora_ft.serving.artifacts import load_artifact
from lora_ft.serving.export import export_merged
from lora_ft.serving.multi import load_adapter_set, predict_each
from lora_ft.serving.predict import predict
from lora_ft.training.train import train

from . import test_decoder
from .test_compare import _cfg as compare_cfg
from .test_compare import in_process
from .test_decoder import TEXTS, logits
from .test_train import _tiny_cfg

# test_decoder's module-scoped fixtures: the tiny Llama, the toy data and a LoRA run on q_proj/v_proj.
llama_dir, toy_dir, lora_run = test_decoder.llama_dir, test_decoder.toy_dir, test_decoder.lora_run
HIDDEN, LAYERS, KV_WIDTH = 32, 2, 16  # save_tiny_llama: 4 heads of 8, 2 key/value heads


def test_compare_trains_lora_full_and_head_on_a_decoder(tmp_path, llama_dir, toy_dir):
    cfg = compare_cfg(llama_dir, toy_dir, "lora.targets=[q_proj,v_proj]")
    result = compare(cfg, tmp_path / "cmp", runner=in_process([]))
    rows = {row["label"]: row for row in result.rows}
    assert list(rows) == ["lora", "full", "head"] and {r["status"] for r in rows.values()} == {"ok"}
    r = 2  # compare_cfg's lora.r
    # q_proj is 32 -> 32 and v_proj 32 -> 16 (grouped-query attention); the head `score` has no bias.
    lora = LAYERS * (r * (HIDDEN + HIDDEN) + r * (HIDDEN + KV_WIDTH))
    assert rows["head"]["trainable_params"] == HIDDEN * 2
    assert rows["lora"]["trainable_params"] == lora + HIDDEN * 2
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"]
    for row in rows.values():
        assert 0.0 <= row["test"]["accuracy"]["mean"] <= 1.0
    assert (tmp_path / "cmp" / "report.md").read_text().count("| lora ") >= 1


def test_bf16_trains_a_decoder_and_its_merge_verifies(tmp_path, llama_dir, toy_dir):
    run = tmp_path / "run"
    cfg = _tiny_cfg(
        llama_dir, toy_dir, "train.learning_rate=1e-2", "lora.targets=[q_proj,v_proj]", "train.precision=bf16"
    )
    metrics = train(cfg, run)
    assert metrics["precision"] == "bf16"
    assert all(map(torch.isfinite, map(torch.tensor, (metrics["train_loss"], metrics["test"]["loss"]))))
    report = export_merged(run, tmp_path / "merged")  # merged and verified in float32
    assert report.max_abs_logit_diff <= 1e-4 and report.agreement == 1.0
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["dtype"] == "float32" and saved["pad_token_id"] == 1


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, llama_dir, toy_dir):
    """A second adapter on the same decoder: other targets, rank and seed than ``lora_run``."""
    out = tmp_path_factory.mktemp("runs") / "second"
    extra = ("train.learning_rate=2e-2", "lora.targets=[k_proj,o_proj]", "lora.r=4", "train.seed=7")
    train(_tiny_cfg(llama_dir, toy_dir, *extra), out)
    return out


def test_two_decoder_adapters_on_one_base_each_give_their_own_logits(llama_dir, lora_run, second_run):
    runs = {"qv": lora_run, "ko": second_run}
    aset = load_adapter_set(str(llama_dir), {name: str(run) for name, run in runs.items()})
    single = {name: load_artifact(run) for name, run in runs.items()}
    for name in ("ko", "qv", "ko"):
        aset.set_adapter(name)
        torch.testing.assert_close(
            logits(aset.model, aset.tokenizer),
            logits(single[name].model, single[name].tokenizer),
            atol=1e-6,
            rtol=0,
        )
    apart = logits(single["qv"].model, single["qv"].tokenizer) - logits(
        single["ko"].model, single["ko"].tokenizer
    )
    assert apart.abs().max() > 1e-3  # the two adapters differ, so the equalities above bite
    served = predict_each(aset, TEXTS)
    for name, artifact in single.items():
        alone = predict(artifact, TEXTS)
        assert [p.label for p in served[name]] == [p.label for p in alone]
        assert [p.probability for p in served[name]] == pytest.approx(
            [p.probability for p in alone], abs=1e-6
        )
