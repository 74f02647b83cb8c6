"""Two processes on the CPU (torchrun, gloo) against one process with the same global batch.

The 2-process run is the real command line, ``torchrun --standalone --nproc_per_node 2 -m lora_ft train``,
in a subprocess: one run directory written once, logs not duplicated, the global batch printed once,
and final adapter weights equal to a single-process run's within float32 rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_ft.config import load_config
from lora_ft.outputs import MARKER_NAME
from lora_ft.training.train import train

TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def no_dropout_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A tiny BERT without dropout: two half-batches then see exactly what one whole batch sees."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("bert-no-dropout")
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(out)
    return out


def _settings(model_dir: Path, data_dir: Path, batch_size: int, *extra: str) -> list[str]:
    # Data order: the Trainer draws one random permutation from the seed whatever the world size, and
    # accelerate deals its batches of per-device size to the ranks in turn, so ranks 0 and 1 together
    # see the samples of one single-process batch of twice the size. Length grouping would not keep
    # that (its mega-batches scale with the per-device batch), hence group_by_length=false.
    return [
        f"model.name={model_dir}",
        f"data.name={data_dir}",
        "data.max_length=32",
        "lora.r=2",
        "lora.alpha=4",
        "lora.dropout=0",
        "lora.targets=[query,value]",  # the 10 trainable tensors counted below
        "train.epochs=2",  # the second epoch checks that the ranks reshuffle like one process does
        f"train.batch_size={batch_size}",
        "train.learning_rate=5e-3",
        "train.group_by_length=false",
        "train.logging_steps=2",
        "train.eval_strategy=no",
        "train.save_strategy=no",
        *extra,
    ]


def _loss_lines(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line]


def test_two_processes_and_accumulation_match_one_process_with_the_same_global_batch(
    tmp_path, no_dropout_bert_dir, toy_data_dir
):
    """Global batch 8 three ways: 2 processes x 4, 1 process x 4 x 2 accumulation steps, 1 process x 8."""
    two = tmp_path / "runs" / "two"
    sets = [arg for s in _settings(no_dropout_bert_dir, toy_data_dir, 4) for arg in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*TORCHRUN, "-m", "lora_ft", "train", *sets, "--out", str(two)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = tmp_path / "runs" / "one"
    single = train(load_config(None, _settings(no_dropout_bert_dir, toy_data_dir, 8)), one)
    acc = tmp_path / "runs" / "acc"
    accumulated = train(
        load_config(
            None, _settings(no_dropout_bert_dir, toy_data_dir, 4, "train.gradient_accumulation_steps=2")
        ),
        acc,
    )

    # One run directory, written by rank 0 only: no partial or stale directory from the other rank.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["acc", "one", "two"]
    files = sorted(p.name for p in two.iterdir())
    assert files == [MARKER_NAME, "adapter", "config.yaml", "log.jsonl", "metrics.json"]
    assert proc.stdout.count("global batch 8 = 4 per device x 1 accumulation step(s) x 2 process(es)") == 1
    assert proc.stdout.count("trainable params") == 1  # the summary table, printed by rank 0 only

    metrics = json.loads((two / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["per_device_batch_size"], metrics["batch_size"]) == (2, 4, 8)
    assert (single["world_size"], single["per_device_batch_size"], single["batch_size"]) == (1, 8, 8)
    assert (accumulated["gradient_accumulation_steps"], accumulated["batch_size"]) == (2, 8)
    assert metrics["global_steps"] == single["global_steps"] == accumulated["global_steps"] == 2 * 48 // 8
    # Same seed, same LoRA A and head on every rank (checked across ranks in the run) and in one process.
    assert metrics["seeded_weights_sha256"] == single["seeded_weights_sha256"]

    # Rank 0 alone logs, each logging step once; the losses are means over the global batch (neither
    # multiplied by the world size nor summed over the accumulation steps).
    one_losses = _loss_lines(one)
    assert [line["step"] for line in one_losses] == [2, 4, 6, 8, 10, 12]
    for run in (two, acc):
        losses = _loss_lines(run)
        assert [line["step"] for line in losses] == [2, 4, 6, 8, 10, 12]
        for a, b in zip(losses, one_losses, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)

    # Tolerance: all runs average the gradient of the same 8 samples per step, but in another order
    # (two 4-row batches, padded to their own longest sentence, then all-reduced or accumulated, against
    # one 8-row batch), so they differ by float32 rounding, about 1e-8 here; atol=1e-6 is that with
    # headroom, and 1000x below how far training moved the weights (asserted below): not vacuous.
    one_w = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    assert len(one_w) == 10  # A and B of query/value in 2 layers, the classifier's weight and bias
    for run in (two, acc):
        weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        assert set(weights) == set(one_w)
        for key, value in one_w.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-6, msg=f"{run.name}: {key}")
    moved = max(value.abs().max().item() for key, value in one_w.items() if "lora_B" in key)
    assert moved > 1e-3  # lora_B starts at zero


def test_ranks_check_they_drew_the_same_initial_weights(tmp_path):
    worker = Path(__file__).with_name("distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*TORCHRUN, str(worker), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["is_main"] for r in ranks] == [True, False]
    assert [r["from_main"] for r in ranks] == ["value-of-rank-0", "value-of-rank-0"]
    assert ranks[0]["same_seed"] == ranks[1]["same_seed"]
    assert [r["same_seed_check"] for r in ranks] == ["ok", "ok"]
    for r in ranks:  # a rank-dependent seed is refused on every rank, so none trains on alone
        assert r["rank_seed_check"].startswith("ranks [1] built different initial LoRA/head weights")
    for r in ranks:  # the group's threads end in shutdown, not in the interpreter's teardown (-6 at exit)
        assert r["gloo_threads_before_shutdown"] and r["gloo_threads_after_shutdown"] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP is refused only without a CUDA GPU")
def test_fsdp_without_a_gpu_is_refused_rather_than_quietly_replaced_by_ddp(tmp_path):
    from lora_ft.errors import LoraFtError
    from lora_ft.training.arguments import training_arguments

    cfg = load_config(None, ["train.trainer.fsdp=true"])
    with pytest.raises(
        LoraFtError, match=r"^train.trainer.fsdp needs CUDA GPUs .*; drop it to train with DDP$"
    ):
        training_arguments(cfg, "lora", tmp_path / "checkpoints")
    assert training_arguments(load_config(None, []), "lora", tmp_path / "checkpoints").world_size == 1
