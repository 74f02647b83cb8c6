"""End-to-end `train`: the run directory, metrics.json, adapter key set, reproducibility."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import TrainerCallback

from lora_ft.cli.tables import print_run_summary
from lora_ft.config import load_config
from lora_ft.data.metrics import classification_metrics, f1_average
from lora_ft.fmt import f1_heading
from lora_ft.training.train import train

CONFIGS = Path(__file__).parent.parent / "lora_ft" / "configs"


def _tiny_cfg(model_dir: Path, data_dir: Path, *extra: str):
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.name={data_dir}",
            "data.max_length=32",
            "lora.r=2",
            "lora.alpha=4",
            "train.epochs=1",
            "train.batch_size=8",
            "train.logging_steps=2",
            "train.save_strategy=no",
            *extra,
        ],
    )


def test_classification_metrics_closed_form():
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([1, 0, 0, 1])  # preds 1,0,1,1: tp=2 fp=1 fn=0
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == 0.75
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    three = classification_metrics(np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 2, 1]))
    assert three["accuracy"] == 0.75  # macro F1 over 3 classes: (1 + 2/3 + 2/3) / 3
    assert three["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_macro_f1_averages_only_the_classes_present():
    labels = np.array([0, 1, 0, 1])
    perfect = np.eye(3)[labels]  # class 2 is neither in the labels nor predicted
    assert classification_metrics(perfect, labels)["f1"] == 1.0
    logits = np.eye(3)[[0, 1, 2, 1]]  # predicts class 2 once: it counts, with F1 0
    f1_0, f1_1 = 2 * 1 / (2 * 1 + 0 + 1), 2 * 2 / (2 * 2 + 0 + 0)
    assert classification_metrics(logits, labels)["f1"] == pytest.approx((f1_0 + f1_1 + 0.0) / 3)
    assert classification_metrics(np.eye(2)[[1, 1]], np.array([1, 1]))["f1"] == 1.0  # K == 2: positive class


def test_f1_is_binary_for_two_labels_else_macro_and_the_run_table_says_which():
    assert (f1_average(2), f1_average(3)) == ("binary", "macro")
    assert f1_heading(["binary", "binary"]) == "F1 (binary)"
    assert f1_heading(["macro", None, "binary"]) == "F1 (binary / macro)"
    assert f1_heading([None]) == "F1"
    split = {"accuracy": 0.5, "f1": 0.25, "loss": 1.0}
    metrics = {"method": "lora", "model": "m", "validation": split, "test": None, "trainable_params": 1,
               "total_params": 2, "trainable_percent": 50.0, "train_seconds": 1.0,
               "train_samples_per_second": 1.0, "label_names": ["a", "b", "c"]}  # fmt: skip
    out = io.StringIO()
    print_run_summary(metrics, Path("runs/x"), Console(file=out, width=200))
    assert "F1 (macro)" in out.getvalue() and "binary" not in out.getvalue()


@pytest.mark.slow
def test_smoke_config_on_the_packaged_model_writes_every_run_file(tmp_path):
    """The real MiniLM cut to 2 layers, a few hundred rows of the built-in data."""
    out = tmp_path / "run"
    metrics = train(load_config(CONFIGS / "smoke.yaml"), out)
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert {
        "config.yaml",
        "metrics.json",
        "log.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    } <= files
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "temporary run dir left behind"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for key in (
        "method", "trainable_params", "total_params", "train_seconds", "train_samples_per_second",
        "peak_memory_mb", "train_memory_mb",
    ):  # fmt: skip
        assert key in on_disk, key
    for split in ("validation", "test"):
        # Today's keys, and the single-label metrics of issue #13 beside them.
        assert set(on_disk[split]) == {
            "accuracy", "f1", "loss", "macro_f1", "matthews_correlation", "f1_accuracy_mean",
        }  # fmt: skip
        assert 0.0 <= on_disk[split]["accuracy"] <= 1.0
    assert on_disk["train_samples"] == 256
    assert on_disk["train_memory_mb"] > 0
    # r=4 on query/value of 2 layers (384 -> 384) plus the classifier (384 -> 2)
    assert on_disk["trainable_params"] == 2 * 2 * 4 * (384 + 384) + (384 * 2 + 2)

    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    expected = {
        f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.weight"
        for i in range(2)
        for m in ("query", "value")
        for ab in ("A", "B")
    } | {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    assert keys == expected
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["query", "value"]
    assert config["modules_to_save"] == ["classifier"]
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("loss" in line for line in lines) and any("eval_accuracy" in line for line in lines)


def test_same_config_and_seed_give_the_same_metrics(tmp_path, tiny_bert_dir, toy_data_dir):
    cfg = _tiny_cfg(tiny_bert_dir, toy_data_dir, "lora.dropout=0.1")
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    for split in ("validation", "test"):
        assert a[split] == b[split]
    assert a["train_loss"] == b["train_loss"]
    with (
        safe_open(str(tmp_path / "a/adapter/adapter_model.safetensors"), "pt") as fa,
        safe_open(str(tmp_path / "b/adapter/adapter_model.safetensors"), "pt") as fb,
    ):
        for key in fa.keys():
            assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), key


@pytest.mark.parametrize("method", ["full", "head"])
def test_full_and_head_write_a_loadable_model(tmp_path, tiny_distilbert_dir, toy_data_dir, method):
    from transformers import AutoModelForSequenceClassification

    metrics = train(_tiny_cfg(tiny_distilbert_dir, toy_data_dir, f"train.method={method}"), tmp_path / "run")
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    assert not (tmp_path / "run" / "adapter").exists()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert sum(p.numel() for p in model.parameters()) == metrics["total_params"]
    if method == "head":  # DistilBERT's head: pre_classifier (32x32 + 32) and classifier (32x2 + 2)
        assert metrics["trainable_params"] == 32 * 32 + 32 + 32 * 2 + 2
    else:
        assert metrics["trainable_params"] == metrics["total_params"]


def test_existing_out_needs_force(tmp_path, tiny_bert_dir, toy_data_dir):
    from lora_ft.errors import LoraFtError

    cfg = _tiny_cfg(tiny_bert_dir, toy_data_dir)
    out = tmp_path / "run"
    first = train(cfg, out)
    with pytest.raises(LoraFtError, match="already exists; pass --force"):
        train(cfg, out)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(first))
    (out / "metrics.json").write_text("{}")  # so the replacement shows
    second = train(cfg, out, force=True)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(second)) != {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "toy-data"]  # no temporary or old dir left


class LastStep(TrainerCallback):
    """The trainable tensors as the last training step left them (before any best checkpoint is loaded)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.tensors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def as_adapter_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainable parameter names as adapter_model.safetensors spells them (PEFT's prefix, ``.weight``)."""
    return {
        f"base_model.model.{n}" + (".weight" if n.endswith(("lora_A", "lora_B")) else ""): t
        for n, t in tensors.items()
    }


BEST = [
    "train.epochs=2", "train.eval_strategy=steps", "train.eval_steps=2", "train.save_strategy=steps",
    "train.save_steps=2", "train.load_best_model=true", "train.metric_for_best=accuracy",
    "train.early_stopping_patience=2",
]  # fmt: skip


def test_the_best_checkpoint_is_published_and_early_stopping_is_recorded(
    tmp_path, tiny_bert_dir, toy_data_dir
):
    last = LastStep()
    out = tmp_path / "run"
    metrics = train(_tiny_cfg(tiny_bert_dir, toy_data_dir, *BEST), out, callbacks=[last])
    evals = [
        line for line in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval_loss" in line
    ]
    accuracies = [e["eval_accuracy"] for e in evals]
    best = evals[accuracies.index(max(accuracies))]  # the first of equals: a tie is no improvement
    # Stopped before its 12 steps, after two evaluations in a row that did not beat the best.
    assert metrics["stopped_early"] is True and metrics["global_steps"] == evals[-1]["step"] < 12
    assert max(accuracies[-2:]) <= best["eval_accuracy"] and best["step"] < metrics["global_steps"]
    assert metrics["best_step"] == best["step"] and metrics["best_metric"] == best["eval_accuracy"]
    keys = ("accuracy", "f1", "loss", "macro_f1", "matthews_correlation", "f1_accuracy_mean")
    assert metrics["validation"] == {k: best[f"eval_{k}"] for k in keys}
    assert json.loads((out / "metrics.json").read_text())["best_step"] == best["step"]

    kept = out / "checkpoints" / f"checkpoint-{best['step']}"
    # save_total_limit 1: the newest checkpoint, and the best one beside it
    assert {p.name for p in (out / "checkpoints").iterdir()} == {
        kept.name,
        f"checkpoint-{metrics['global_steps']}",
    }
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    expected = as_adapter_keys(load_file(str(kept / "trainable.safetensors")))
    assert adapter.keys() == expected.keys()
    for key in adapter:
        assert torch.equal(adapter[key], expected[key]), key
    at_last = as_adapter_keys(last.tensors)  # the weights of the last step, which were not kept
    assert any(not torch.equal(adapter[k], at_last[k]) for k in adapter)


def test_without_the_settings_the_last_step_is_published_and_nothing_stopped_early(
    tmp_path, tiny_bert_dir, toy_data_dir
):
    last = LastStep()
    metrics = train(_tiny_cfg(tiny_bert_dir, toy_data_dir), tmp_path / "run", callbacks=[last])
    assert (
        metrics["best_step"] is None and metrics["best_metric"] is None and metrics["stopped_early"] is False
    )
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    at_last = as_adapter_keys(last.tensors)
    assert all(torch.equal(adapter[k], at_last[k]) for k in adapter)
    assert metrics["validation_label_counts"] == [8, 8]  # toy_rows(16): alternating labels


def test_evaluation_rows_pair_each_evaluation_with_the_last_train_loss():
    from lora_ft.training.record import evaluation_rows

    history = [
        {"step": 1, "eval_loss": 0.9, "eval_accuracy": 0.5},  # before any training loss was logged
        {"step": 2, "loss": 0.8},
        {"step": 3, "loss": 0.7},
        {"step": 3, "eval_loss": 0.6, "eval_accuracy": 0.75},
        {"step": 4, "eval_loss": 0.55},  # a task without accuracy
        {"step": 4, "train_loss": 0.75, "train_runtime": 1.0},  # the Trainer's end-of-training summary
    ]
    assert evaluation_rows(history) == [
        {"step": 1, "train_loss": None, "validation_loss": 0.9, "accuracy": 0.5},
        {"step": 3, "train_loss": 0.7, "validation_loss": 0.6, "accuracy": 0.75},
        {"step": 4, "train_loss": 0.7, "validation_loss": 0.55, "accuracy": None},
    ]


def test_evaluations_carry_the_tasks_primary_metric_to_the_summary_and_the_card():
    from lora_ft.cli.tables import evaluation_metric, print_evaluations
    from lora_ft.lora.card import metrics_lines
    from lora_ft.training.record import evaluation_rows

    history = [
        {"step": 2, "loss": 1.25},
        {"step": 2, "eval_loss": 1.0, "eval_pearson": 0.5, "eval_mse": 1.0},
        {"step": 4, "eval_loss": 0.75},  # an evaluation without it
    ]
    rows = evaluation_rows(history, "pearson")
    assert rows == [
        {"step": 2, "train_loss": 1.25, "validation_loss": 1.0, "pearson": 0.5},
        {"step": 4, "train_loss": 1.25, "validation_loss": 0.75, "pearson": None},
    ]
    task = {"problem_type": "regression", "label_names": ["score"], "primary_metric": "pearson"}
    metrics = {"task": task, "validation": {"pearson": 0.5, "mse": 1.0, "loss": 1.0}, "evaluations": rows}
    assert evaluation_metric(metrics) == "pearson"
    assert evaluation_metric({"evaluations": []}) == "accuracy"  # a run from before tasks were recorded
    console = Console(file=io.StringIO(), width=200)
    print_evaluations(rows, console, "pearson")
    lines = [line.strip("│┃ ") for line in console.file.getvalue().splitlines()]
    assert any(line.split() == ["step", "┃", "train", "loss", "┃", "validation", "loss", "┃", "pearson"]
               for line in lines), lines  # fmt: skip
    assert any(line.split() == ["2", "│", "1.2500", "│", "1.0000", "│", "0.5000"] for line in lines), lines
    card = metrics_lines(metrics)
    assert "| split | pearson | mse | loss |" in card and "| validation | 0.5000 | 1.0000 | 1.0000 |" in card
    assert "| step | train loss | validation loss | pearson |" in card
    assert "| 2 | 1.2500 | 1.0000 | 0.5000 |" in card and "| 4 | 1.2500 | 0.7500 | — |" in card


def test_the_evaluation_table_and_inference_speed_reach_metrics_the_card_and_the_summary(
    tmp_path, tiny_bert_dir, toy_data_dir
):
    extra = ["train.max_steps=4", "train.logging_steps=1", "train.eval_strategy=steps", "train.eval_steps=1"]
    metrics = train(_tiny_cfg(tiny_bert_dir, toy_data_dir, *extra), tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = {line["step"]: line for line in log if "eval_loss" in line}
    losses = {line["step"]: line["loss"] for line in log if "loss" in line}
    assert [row["step"] for row in metrics["evaluations"]] == sorted(evals) == [1, 2, 3, 4]
    for row in metrics["evaluations"]:
        assert row["train_loss"] == pytest.approx(losses[row["step"]])
        assert row["validation_loss"] == pytest.approx(evals[row["step"]]["eval_loss"])
        assert row["accuracy"] == pytest.approx(evals[row["step"]]["eval_accuracy"])
    assert metrics["inference_samples_per_second"] > 0 and metrics["merged_inference_samples_per_second"] > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["evaluations"] == metrics["evaluations"]

    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    last = metrics["evaluations"][-1]
    assert "| step | train loss | validation loss | accuracy |" in card
    assert (
        f"| 4 | {last['train_loss']:.4f} | {last['validation_loss']:.4f} | {last['accuracy']:.4f} |" in card
    )

    console = Console(file=io.StringIO(), width=200)
    print_run_summary(metrics, tmp_path / "run", console)
    text = console.file.getvalue()
    assert "evaluations during training" in text and "eval samples/s, merged" in text
    assert f"{last['validation_loss']:.4f}" in text


def test_a_full_run_has_no_merged_inference_speed(tmp_path, tiny_bert_dir, toy_data_dir):
    metrics = train(_tiny_cfg(tiny_bert_dir, toy_data_dir, "train.method=head"), tmp_path / "run")
    assert metrics["inference_samples_per_second"] > 0
    assert metrics["merged_inference_samples_per_second"] is None


def test_inference_speed_leaves_the_model_as_it_was():
    from types import SimpleNamespace

    from torch import nn

    from lora_ft.lora.inject import inject_lora, lora_layers
    from lora_ft.training.inference import inference_speed

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.out = nn.Embedding(50, 16), nn.Linear(16, 2)

        def forward(self, input_ids, attention_mask=None):
            return self.out(self.embed(input_ids).mean(1))

    torch.manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 50, (8, 6)), "labels": torch.zeros(8)} for _ in range(3)]
    model = Toy()
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(device=torch.device("cpu")))
    trainer.get_eval_dataloader = lambda dataset: batches
    plain = inference_speed(trainer, None)
    assert plain["inference_samples_per_second"] > 0 and plain["merged_inference_samples_per_second"] is None

    inject_lora(model, ["out"], r=2, alpha=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speed = inference_speed(trainer, None)
    assert speed["inference_samples_per_second"] > 0 and speed["merged_inference_samples_per_second"] > 0
    assert not any(layer.disabled or layer.merged for layer in lora_layers(model).values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
