"""Serving every problem type (issue #13): the task travels in the adapter header and a merged export's
config.json; predict reads outputs as the task does (softmax; sigmoid at --threshold; the raw score);
merge verification compares what each task decides; eval shows per-class rows and the confusion matrix."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from rich.console import Console
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.cli.tables import print_eval
from lora_ft.data.loading import LoadedData
from lora_ft.data.task import MULTI_LABEL, REGRESSION, Task
from lora_ft.errors import LoraFtError
from lora_ft.lora.inject import inject_lora, lora_layers
from lora_ft.lora.io import read_adapter
from lora_ft.lora.saving import save_adapter
from lora_ft.lora.targets import default_head
from lora_ft.serving.artifacts import load_artifact
from lora_ft.serving.evaluate import evaluate_loaded
from lora_ft.serving.export import Probe, export_merged, verify_merge
from lora_ft.serving.predict import predict

from .conftest import _save_tiny, assert_one_line_error
from .test_adapter_io import SENTENCES, TARGETS

runner = CliRunner()

MULTI = Task(MULTI_LABEL, ("sports", "politics", "science"), name="toy-multi")
REG = Task(REGRESSION, ("score",), name="toy-reg")


def tiny_base(root: Path, minilm_dir: Path, num_labels: int) -> Path:
    """A 2-layer random BERT whose head has ``num_labels`` outputs (the shared tiny BERT has 2)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, num_labels=num_labels,
    )  # fmt: skip
    return _save_tiny(BertForSequenceClassification, config, minilm_dir, root)


def task_adapter(model_dir: Path, out: Path, task: Task | None, *, label_names=None, seed: int = 0):
    """A LoRA model on ``model_dir`` with non-zero lora_B and a perturbed head, saved with ``task`` in its
    header (None: an adapter from before tasks); returns the model (eval mode)."""
    names = list(label_names or task.label_names)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert model.config.num_labels == len(names)
    inject_lora(model, TARGETS[model.config.model_type], r=2, alpha=4, head=default_head(model))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # so equivalence tests cannot pass vacuously
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
        for name in default_head(model):
            for p in model.get_submodule(name).parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 2.0)
    model.eval()
    save_adapter(
        model,
        out,
        head=default_head(model),
        base_model_name_or_path=str(model_dir),
        label_names=names,
        task=task.to_dict() if task is not None else None,
    )
    return model


def raw_outputs(model, model_dir: Path, texts=SENTENCES) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        return model(**tok(list(texts), padding=True, return_tensors="pt")).logits.numpy()


@pytest.fixture(scope="module")
def base3(tmp_path_factory, minilm_dir) -> Path:
    return tiny_base(tmp_path_factory.mktemp("base3"), minilm_dir, 3)


@pytest.fixture(scope="module")
def multi_adapter(tmp_path_factory, base3):
    out = tmp_path_factory.mktemp("multi") / "adapter"
    return out, raw_outputs(task_adapter(base3, out, MULTI), base3)


@pytest.fixture(scope="module")
def reg_adapter(tmp_path_factory, minilm_dir):
    base = tiny_base(tmp_path_factory.mktemp("base1"), minilm_dir, 1)
    out = tmp_path_factory.mktemp("reg") / "adapter"
    return out, raw_outputs(task_adapter(base, out, REG), base)


def test_adapter_header_carries_the_task_and_the_loaded_model_uses_it(multi_adapter):
    path, _ = multi_adapter
    assert read_adapter(path).task == MULTI.to_dict()
    artifact = load_artifact(path)
    assert artifact.task == MULTI
    assert artifact.model.config.problem_type == MULTI_LABEL
    assert artifact.model.config.id2label == {0: "sports", 1: "politics", 2: "science"}


def test_adapter_without_a_task_record_is_single_label_over_its_labels(tmp_path, tiny_bert_dir):
    task_adapter(tiny_bert_dir, tmp_path / "a", None, label_names=["neg", "pos"])
    artifact = load_artifact(tmp_path / "a")
    assert artifact.task == Task.legacy(["neg", "pos"])
    assert artifact.model.config.problem_type == "single_label_classification"


@pytest.mark.parametrize(
    ("record", "phrase"),
    [
        ({"problem_type": "regresion", "label_names": ["score"]}, "task.problem_type must be one of"),
        ({"problem_type": MULTI_LABEL, "label_names": ["a", "b", "c", "d"]}, "are not the model's"),
    ],
)
def test_a_bad_task_record_is_one_clear_error(tmp_path, base3, record, phrase):
    model = AutoModelForSequenceClassification.from_pretrained(base3).eval()
    inject_lora(model, ["query"], r=2, alpha=4, head=default_head(model))
    save_adapter(model, tmp_path / "a", head=default_head(model), base_model_name_or_path=str(base3),
                 label_names=["a", "b", "c"], task=record)  # fmt: skip
    with pytest.raises(LoraFtError, match=phrase) as err:
        load_artifact(tmp_path / "a")
    assert "lora_ft.task" in str(err.value) and "\n" not in str(err.value)


def test_predict_multi_label_prints_the_labels_at_or_above_the_threshold(multi_adapter):
    path, logits = multi_adapter
    probs = 1 / (1 + np.exp(-logits))  # (N, 3), computed here independently of lora_ft
    threshold = float(np.median(probs))  # some labels on each side of it
    result = runner.invoke(app, ["predict", str(path), "--threshold", str(threshold), "--json", *SENTENCES])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    for row, p in zip(rows, probs, strict=True):
        want = [MULTI.label_names[i] for i in np.argsort(-p) if p[i] >= threshold]
        assert row["labels"] == want
        assert row["probabilities"] == pytest.approx(
            dict(zip(MULTI.label_names, p.tolist(), strict=True)), abs=1e-5
        )
    assert {len(r["labels"]) for r in rows} != {0}, "the threshold must select some labels"
    plain = runner.invoke(app, ["predict", str(path), "--threshold", str(threshold), *SENTENCES])
    first = plain.stdout.splitlines()[0].split("\t")
    assert first[-1] == SENTENCES[0]
    shown = [item.split("=") for item in first[0].split(",")] if rows[0]["labels"] else []
    assert [n for n, _ in shown] == rows[0]["labels"]
    assert [float(v) for _, v in shown] == pytest.approx(
        [rows[0]["probabilities"][n] for n in rows[0]["labels"]], abs=1e-4
    )


def test_predict_regression_prints_the_raw_score(reg_adapter):
    path, outputs = reg_adapter
    result = runner.invoke(app, ["predict", str(path), "--json", *SENTENCES])
    assert result.exit_code == 0, result.output
    scores = [json.loads(line)["score"] for line in result.stdout.splitlines()]
    assert scores == pytest.approx(outputs[:, 0].tolist(), abs=1e-5)
    assert len(set(np.round(scores, 4))) > 1, "scores must differ between sentences"
    plain = runner.invoke(app, ["predict", str(path), *SENTENCES]).stdout.splitlines()
    assert [float(line.split("\t")[0]) for line in plain] == pytest.approx(outputs[:, 0].tolist(), abs=1e-4)


@pytest.mark.parametrize("value", ["0", "1", "-0.2", "1.5", "nan", "inf", "-inf"])
def test_a_threshold_outside_zero_one_is_one_line_error(multi_adapter, value):
    result = runner.invoke(app, ["predict", str(multi_adapter[0]), "--threshold", value, "ok"])
    assert_one_line_error(result, "--threshold must be between 0 and 1")
    assert result.stdout == ""


@pytest.mark.parametrize("fixture", ["multi_adapter", "reg_adapter"])
def test_merged_export_gives_plain_transformers_the_same_predictions(request, tmp_path, fixture):
    path, outputs = request.getfixturevalue(fixture)
    out = tmp_path / "merged"
    export_merged(path, out)
    config = json.loads((out / "config.json").read_text())
    task = load_artifact(path).task
    assert config["problem_type"] == task.problem_type
    assert config["id2label"] == {str(i): n for i, n in enumerate(task.label_names)}
    assert config["label2id"] == {n: i for i, n in enumerate(task.label_names)}
    ours = predict(load_artifact(out), SENTENCES)
    assert load_artifact(out).task.problem_type == task.problem_type
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    np.testing.assert_allclose(raw_outputs(model, out), outputs, atol=1e-4)
    # transformers 5's pipeline picks its function from config.problem_type: none for regression,
    # sigmoid for multi-label (text_classification.py, postprocess).
    theirs = pipeline("text-classification", model=str(out), top_k=None)(SENTENCES)
    for mine, scores in zip(ours, theirs, strict=True):
        by_label = {s["label"]: s["score"] for s in scores}
        if task.is_regression:
            assert by_label == {"score": pytest.approx(mine.score, abs=1e-5)}
        else:
            assert by_label == pytest.approx(mine.probabilities, abs=1e-5)
            assert sorted(n for n, v in by_label.items() if v >= 0.5) == sorted(mine.labels)


def _probe(n: int) -> Probe:
    return Probe([f"s{i}" for i in range(n)], None, "test probe")


def test_merge_verification_compares_the_label_sets_of_a_multi_label_model():
    reference = np.array([[2.0, 0.5, -1.0], [1.0, -4e-5, -3.0]], dtype=np.float32)
    merged = reference.copy()
    merged[1, 1] = 4e-5  # within the logit tolerance and the same argmax, but "politics" now reaches 0.5
    assert verify_merge(MULTI, reference, reference + 1e-6, _probe(2))["agreement"] == 1.0
    with pytest.raises(LoraFtError, match="predictions agree on 50.0%"):
        verify_merge(MULTI, reference, merged, _probe(2))


@pytest.mark.parametrize("bad", [1e-3, math.nan, math.inf])
def test_merge_verification_of_a_regression_model_compares_the_score(bad):
    reference = np.array([[0.25], [1.5], [-0.75]], dtype=np.float32)
    merged = reference.copy()
    merged[2, 0] += bad
    with pytest.raises(LoraFtError, match="merge verification failed"):
        verify_merge(REG, reference, merged, _probe(3))
    assert verify_merge(REG, reference, reference + 5e-5, _probe(3))["agreement"] == 1.0


def _loaded(task: Task, labels, sentences=SENTENCES) -> LoadedData:
    features = {
        MULTI_LABEL: datasets.Sequence(datasets.Value("float32")),
        REGRESSION: datasets.Value("float32"),
    }[task.problem_type]
    ds = datasets.Dataset.from_dict(
        {"sentence": list(sentences), "label": labels},
        features=datasets.Features({"sentence": datasets.Value("string"), "label": features}),
    )
    return LoadedData(datasets.DatasetDict({"test": ds}), list(task.label_names), "toy", {}, task)


def test_eval_of_a_multi_label_model_uses_bce_and_its_labels_by_name(multi_adapter):
    path, logits = multi_adapter
    # The data names its labels in another order: columns are matched to the model's by name.
    data_task = Task(MULTI_LABEL, ("science", "sports", "politics"))
    hot = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    metrics = evaluate_loaded(load_artifact(path), _loaded(data_task, hot), "test")
    in_model_order = torch.tensor(hot)[:, [1, 2, 0]]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), in_model_order)
    assert metrics["loss"] == pytest.approx(bce.item(), abs=1e-5)
    subset = float(((logits >= 0) == in_model_order.numpy().astype(bool)).all(axis=1).mean())
    assert metrics["subset_accuracy"] == pytest.approx(subset)
    assert [row["label"] for row in metrics["per_label"]] == list(MULTI.label_names)
    assert metrics["problem_type"] == MULTI_LABEL and "f1_average" not in metrics


def test_eval_of_a_regression_model_uses_mse_and_refuses_classification_data(reg_adapter):
    path, outputs = reg_adapter
    scores = [0.5, -1.0, 2.0, 0.0]
    metrics = evaluate_loaded(load_artifact(path), _loaded(REG, scores), "test")
    assert metrics["loss"] == pytest.approx(float(np.mean((outputs[:, 0] - scores) ** 2)), abs=1e-5)
    assert metrics["mse"] == pytest.approx(metrics["loss"], abs=1e-5)
    with pytest.raises(
        LoraFtError, match="is a multi_label_classification task but the model was trained for regression"
    ):
        evaluate_loaded(load_artifact(path), _loaded(MULTI, [[1.0, 0.0, 0.0]] * 4), "test")


def _shown(metrics) -> str:
    out = io.StringIO()
    print_eval("m", metrics, Console(file=out, width=200))
    return out.getvalue()


def test_eval_prints_per_class_rows_and_the_confusion_matrix():
    m = {"split": "test", "data": "x", "samples": 7, "problem_type": "single_label_classification",
         "accuracy": 0.5714, "f1": 0.5, "macro_f1": 0.5556, "matthews_correlation": 0.3536, "loss": 0.9,
         "f1_average": "macro",
         "per_class": [{"label": "neg", "precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2},
                       {"label": "neu", "precision": 0.25, "recall": 0.5, "f1": 0.3333, "support": 2},
                       {"label": "pos", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}],
         "confusion_matrix": [[2, 0, 0], [1, 1, 0], [0, 3, 0]]}  # fmt: skip
    text = _shown({None: m})
    assert "matthews correlation" in text and "0.3536" in text
    lines = text.splitlines()
    assert any(all(c in line for c in ("neu", "0.2500", "0.5000", "0.3333", "2")) for line in lines)
    assert "confusion matrix" in text and "rows: true" in text
    row = next(
        line
        for line in lines
        if line.split("│")[1:2] and line.split("│")[1].strip() == "pos" and "0.0000" not in line
    )
    assert [c.strip() for c in row.split("│")[2:5]] == ["0", "3", "0"]


@pytest.mark.parametrize(
    ("metrics", "wanted"),
    [
        ({"problem_type": MULTI_LABEL, "micro_f1": 0.6123, "macro_f1": 0.4, "subset_accuracy": 0.25,
          "per_label": [{"label": "sports", "precision": 0.5, "recall": 0.75, "f1": 0.6, "support": 4}]},
         ["micro f1", "0.6123", "subset accuracy", "per label", "sports", "0.7500"]),
        ({"problem_type": REGRESSION, "pearson": 0.8123, "spearman": 0.7987, "pearson_spearman_mean": 0.8055,
          "mse": 0.31, "mae": 0.45},
         ["pearson", "0.8123", "spearman", "0.7987", "pearson spearman mean", "0.8055", "mae", "0.4500"]),
    ],
)  # fmt: skip
def test_eval_prints_each_problem_types_figures(metrics, wanted):
    text = _shown({None: {"split": "test", "data": "x", "samples": 4, "loss": 0.5, **metrics}})
    for piece in wanted:
        assert piece in text, (piece, text)
    assert "accuracy" not in text.replace("subset accuracy", "")
