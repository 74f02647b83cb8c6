"""Multi-label and regression end to end: their labels read and checked (data/label_types.py), the
model's head size and loss from the task, tiny runs of every method recording the task's metrics, and
train.metric_for_best naming any problem type's key."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from safetensors import safe_open

from lora_ft.cli.tables import print_run_summary
from lora_ft.config import DataConfig, load_config
from lora_ft.config.schema import BEST_METRICS
from lora_ft.data import sources
from lora_ft.data.loading import load_data
from lora_ft.data.task import F1_ACCURACY_MEAN, METRIC_KEYS, MULTI_LABEL, REGRESSION, SINGLE_LABEL, Task
from lora_ft.errors import LoraFtError
from lora_ft.training.arguments import training_arguments
from lora_ft.training.prepare import prepare
from lora_ft.training.train import train
from tests.conftest import NEGATIVE, POSITIVE, write_split


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _sentence(j: int) -> tuple[str, bool]:
    positive = bool(j % 2)
    return f"{(POSITIVE if positive else NEGATIVE)[j % 4]} {j}", positive


def _tags(j: int) -> list[str]:
    """Two labels a model can learn from the words, and one (``long``) from a fixed phrase length."""
    _, positive = _sentence(j)
    return (["good"] if positive else ["bad"]) + (["three"] if j % 3 == 0 else [])


def typed_data(root: Path, problem_type: str, train: int = 32) -> Path:
    """``root/<problem_type>`` with train/validation/test jsonl splits: multi-label tags, or a rating."""
    d = root / problem_type
    d.mkdir(parents=True)
    for split, n, offset in (("train", train, 0), ("validation", 8, 100), ("test", 8, 200)):
        rows = []
        for j in range(offset, offset + n):
            text, positive = _sentence(j)
            label = _tags(j) if problem_type == MULTI_LABEL else (2.0 if positive else -2.0) + (j % 5) / 10
            rows.append({"sentence": text, "label": label})
        _jsonl(d / f"{split}.jsonl", rows)
    return d


def _cfg(model_dir: Path, data_dir: Path, problem_type: str, *extra: str):
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.name={data_dir}",
            f"data.problem_type={problem_type}",
            "data.max_length=32",
            "lora.r=2",
            "lora.alpha=4",
            "train.batch_size=8",
            "train.logging_steps=2",
            "train.save_strategy=no",
            *extra,
        ],
    )


# --- loading -------------------------------------------------------------------------------------


def test_multi_label_names_are_sorted_from_train_and_rows_become_multi_hot(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    _jsonl(d / "train.jsonl", [{"sentence": "a", "label": ["fire", "flood"]}, {"sentence": "b", "label": []},
                               {"sentence": "c", "label": ["aid"]}])  # fmt: skip
    _jsonl(d / "validation.jsonl", [{"sentence": "d", "label": ["flood", "flood"]}])
    loaded = load_data(DataConfig(name=str(d), problem_type=MULTI_LABEL, test_split=None))
    assert loaded.task == Task(MULTI_LABEL, ("aid", "fire", "flood"), False, "", str(d))
    assert loaded.label_names == ["aid", "fire", "flood"]
    train_split = loaded.splits["train"]
    assert train_split.features["label"] == datasets.Sequence(datasets.Value("float32"))
    by_text = dict(zip(train_split["sentence"], train_split["label"], strict=True))
    by_text.update(
        zip(loaded.splits["validation"]["sentence"], loaded.splits["validation"]["label"], strict=True)
    )
    # An empty list is a row with none of the labels: legitimate, kept as all zeros.
    assert by_text == {"a": [0.0, 1.0, 1.0], "b": [0.0, 0.0, 0.0], "c": [1.0, 0.0, 0.0], "d": [0.0, 0.0, 1.0]}


def test_multi_label_csv_splits_on_the_separator(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_split(d / "train.csv", [("a", "fire; flood"), ("b", "aid"), ("c", "flood")])
    write_split(d / "validation.csv", [("d", "aid;fire")])
    loaded = load_data(DataConfig(name=str(d), problem_type=MULTI_LABEL, label_separator=";"))
    assert loaded.label_names == ["aid", "fire", "flood"]
    assert loaded.splits["train"]["label"] == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert loaded.splits["validation"]["label"] == [[1.0, 1.0, 0.0]]


def test_multi_label_ids_are_named_by_label_names_or_by_themselves(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    _jsonl(d / "train.jsonl", [{"sentence": "a", "label": [0, 2]}, {"sentence": "b", "label": [1]}])
    _jsonl(d / "validation.jsonl", [{"sentence": "c", "label": [3]}])
    named = load_data(DataConfig(name=str(d), problem_type=MULTI_LABEL, label_names=["w", "x", "y", "z"]))
    assert named.label_names == ["w", "x", "y", "z"]  # z never occurs in train: the names say it exists
    assert named.splits["validation"]["label"] == [[0.0, 0.0, 0.0, 1.0]]
    with pytest.raises(LoraFtError, match=r"label 3 at row 1 of .*validation.jsonl.*ids 0\.\.2") as info:
        load_data(DataConfig(name=str(d), problem_type=MULTI_LABEL))  # ids alone: K = largest id + 1
    assert "\n" not in str(info.value)


def test_multi_label_hub_sequence_of_class_labels_keeps_the_hub_names(cache, monkeypatch):
    feature = datasets.Sequence(datasets.ClassLabel(names=["sports", "tech", "art"]))
    features = datasets.Features({"sentence": datasets.Value("string"), "label": feature})
    rows = {"sentence": ["a", "b", "c"], "label": [[0], [1, 2], []]}
    hub = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(rows, features=features) for s in ("train", "validation")}
    )
    monkeypatch.setattr(sources, "hub_load", lambda path, config: hub)
    loaded = load_data(DataConfig(name="someone/topics", problem_type=MULTI_LABEL))
    assert loaded.label_names == ["sports", "tech", "art"]
    assert loaded.splits["validation"]["label"] == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_multi_label_parquet_lists(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for split, labels in (("train", [["x"], ["y", "x"]]), ("validation", [["y"]])):
        datasets.Dataset.from_dict(
            {"text": [f"s{i}" for i in range(len(labels))], "tags": labels}
        ).to_parquet(str(d / f"{split}.parquet"))
    loaded = load_data(
        DataConfig(name=str(d), problem_type=MULTI_LABEL, text_column="text", label_column="tags")
    )
    assert loaded.splits["train"]["label"] == [[1.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize(
    "rows, separator, phrase",
    [
        ([("a", "x"), ("b", "ghost")], ";", "label 'ghost' at row 2 of"),  # unknown in validation
        ([("a", "x;;y")], ";", "has an empty label between separators ';'"),
        ([("a", "x")], None, "train.csv (column 'label') is a string; multi-label labels are a list per row"),
        ([("a", "")], ";", "empty or missing label at row 1"),
    ],
)
def test_bad_multi_label_cells_are_one_line_errors(tmp_path, rows, separator, phrase):
    d = tmp_path / "d"
    d.mkdir()
    write_split(d / "train.csv", [("t1", "x"), ("t2", "y")])
    write_split(d / "validation.csv", rows)
    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name=str(d), problem_type=MULTI_LABEL, label_separator=separator))
    message = str(info.value)
    assert phrase in message and ".csv" in message and "\n" not in message, message


@pytest.mark.parametrize(
    "label, phrase",
    [
        (None, "empty or missing label at row 1"),
        ([None], "holds None"),
        ([True], "holds True"),
        ("x", "is a string"),
        (3, "is not a list of labels"),
        ([1], "is an id, but the train split's labels are names"),
    ],
)
def test_bad_multi_label_jsonl_rows_are_one_line_errors(tmp_path, label, phrase):
    d = tmp_path / "d"
    d.mkdir()
    _jsonl(d / "train.jsonl", [{"sentence": "a", "label": ["x"]}, {"sentence": "b", "label": ["y"]}])
    _jsonl(d / "validation.jsonl", [{"sentence": "c", "label": label}])
    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name=str(d), problem_type=MULTI_LABEL))
    message = str(info.value)
    assert phrase in message and "row 1 of" in message and "validation.jsonl" in message, message
    assert "\n" not in message


def test_regression_labels_are_floats_and_the_one_output_is_score(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_split(d / "train.csv", [("a", "1.5"), ("b", "-2"), ("c", "3")])
    _jsonl(d / "validation.jsonl", [{"sentence": "d", "label": 2}, {"sentence": "e", "label": -0.25}])
    loaded = load_data(DataConfig(name=str(d), problem_type=REGRESSION))
    assert loaded.task.label_names == ("score",) and loaded.label_names == ["score"]
    assert loaded.task.num_labels == 1 and loaded.task.is_regression
    assert loaded.splits["train"].features["label"] == datasets.Value("float32")
    assert sorted(loaded.splits["train"]["label"]) == [-2.0, 1.5, 3.0]
    assert loaded.splits["validation"]["label"] == [2.0, -0.25]


def test_regression_ignores_labels_json_and_skips_an_unlabelled_test_split(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "labels.json").write_text('["negative", "positive"]')  # names the classes of another column
    _jsonl(d / "train.jsonl", [{"sentence": "a", "label": 0.5}, {"sentence": "b", "label": 1.0}])
    _jsonl(d / "validation.jsonl", [{"sentence": "c", "label": 0.1}])
    _jsonl(d / "test.jsonl", [{"sentence": "d", "label": -1}, {"sentence": "e", "label": -1.0}])
    loaded = load_data(DataConfig(name=str(d), problem_type=REGRESSION))
    assert loaded.label_names == ["score"] and "test" not in loaded.splits
    assert "test split unlabelled (all -1), not used" in loaded.source


@pytest.mark.parametrize(
    "cell, phrase",
    [
        ("high", "label 'high' at row 2 of"),
        ("nan", "label nan at row 2 of"),
        ("inf", "label inf at row 2 of"),
        ("-inf", "label -inf at row 2 of"),
        ("1e39", "not a finite number (float32)"),
    ],
)
def test_a_regression_label_that_is_not_a_finite_number_is_a_one_line_error(tmp_path, cell, phrase):
    path = write_split(tmp_path / "train.csv", [("a", "0.5"), ("b", cell), ("c", "2")])
    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name=str(path), problem_type=REGRESSION))
    message = str(info.value)
    assert (
        phrase in message and "train.csv" in message and "column 'label'" in message and "\n" not in message
    )


def test_regression_refuses_booleans_and_label_names(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 0.5}, {"sentence": "b", "label": True}])
    with pytest.raises(LoraFtError, match="label True at row 2 .* is not a number"):
        load_data(DataConfig(name=str(tmp_path / "train.jsonl"), problem_type=REGRESSION))
    write_split(tmp_path / "ok.csv", [("a", "0.5"), ("b", "1")])
    with pytest.raises(LoraFtError, match="a regression task has one output"):
        load_data(DataConfig(name=str(tmp_path / "ok.csv"), problem_type=REGRESSION, label_names=["x"]))


# --- the model: head size and loss ----------------------------------------------------------------


def _manual_loss(problem_type: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if problem_type == REGRESSION:
        return torch.mean((logits[:, 0] - labels) ** 2)
    if problem_type == MULTI_LABEL:
        p = torch.sigmoid(logits)
        return -torch.mean(labels * torch.log(p) + (1 - labels) * torch.log(1 - p))
    return -torch.mean(torch.log_softmax(logits, -1)[torch.arange(len(labels)), labels])


@pytest.mark.parametrize("problem_type", [SINGLE_LABEL, MULTI_LABEL, REGRESSION])
def test_the_model_config_names_the_problem_type_and_its_loss_is_that_problems(
    tmp_path, cache, tiny_bert_dir, toy_data_dir, problem_type
):
    data = toy_data_dir if problem_type == SINGLE_LABEL else typed_data(tmp_path, problem_type)
    p = prepare(_cfg(tiny_bert_dir, data, problem_type))
    model = p.loaded.model.eval()
    k = {SINGLE_LABEL: 2, MULTI_LABEL: 3, REGRESSION: 1}[problem_type]  # bad, good, three
    assert model.config.problem_type == problem_type and model.config.num_labels == k
    assert model.classifier.out_features == k
    assert model.config.id2label == dict(enumerate(p.data.label_names))
    batch = p.tokenized["validation"].select(range(4))
    labels = torch.tensor(batch["labels"])
    with torch.no_grad():
        out = model(
            input_ids=torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in batch["input_ids"]], True),
            attention_mask=torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in batch["attention_mask"]], True),
            labels=labels,
        )  # fmt: skip
    assert out.logits.shape == (4, k)
    torch.testing.assert_close(out.loss, _manual_loss(problem_type, out.logits, labels))


# --- tiny runs -------------------------------------------------------------------------------------


def _head_rows(run: Path, method: str, problem_type: str) -> int:
    """The classifier's output rows as saved: in the adapter (lora), else in the model and its config."""
    if method == "lora":
        with safe_open(run / "adapter" / "adapter_model.safetensors", "pt") as f:
            return f.get_tensor("base_model.model.classifier.weight").shape[0]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["problem_type"] == problem_type
    with safe_open(run / "model" / "model.safetensors", "pt") as f:
        rows = f.get_tensor("classifier.weight").shape[0]
    assert rows == len(config["id2label"])
    return rows


@pytest.mark.parametrize("method", ["lora", "full", "head"])
@pytest.mark.parametrize("problem_type", [MULTI_LABEL, REGRESSION])
def test_tiny_runs_record_the_tasks_metrics(tmp_path, cache, tiny_bert_dir, problem_type, method):
    data = typed_data(tmp_path, problem_type)
    run = tmp_path / "run"
    metrics = train(_cfg(tiny_bert_dir, data, problem_type, f"train.method={method}"), run)
    keys = {*METRIC_KEYS[problem_type], "loss"}
    assert set(metrics["validation"]) == keys and set(metrics["test"]) == keys
    assert json.loads((run / "metrics.json").read_text())["task"] == metrics["task"]
    assert metrics["task"]["problem_type"] == problem_type
    assert "f1_average" not in metrics and "validation_label_counts" not in metrics  # single-label only
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == metrics["task"]
    assert _head_rows(run, method, problem_type) == (3 if problem_type == MULTI_LABEL else 1)
    if problem_type == REGRESSION:  # the Trainer's loss is the MSE the metrics compute
        assert metrics["validation"]["loss"] == pytest.approx(metrics["validation"]["mse"], rel=1e-5)


def test_a_single_label_run_keeps_todays_keys_and_adds_the_new(tmp_path, cache, tiny_bert_dir, toy_data_dir):
    metrics = train(_cfg(tiny_bert_dir, toy_data_dir, SINGLE_LABEL, "train.method=head"), tmp_path / "run")
    assert set(metrics["validation"]) == {
        "accuracy",
        "f1",
        "loss",
        "macro_f1",
        "matthews_correlation",
        F1_ACCURACY_MEAN,
    }
    assert metrics["f1_average"] == "binary" and metrics["validation_label_counts"] == [8, 8]
    assert metrics["task"] == Task(SINGLE_LABEL, ("0", "1"), name=str(toy_data_dir)).to_dict()


# --- metric_for_best -------------------------------------------------------------------------------


def test_best_metrics_are_every_problem_types_keys_and_loss():
    assert set(BEST_METRICS) == {
        "loss",
        F1_ACCURACY_MEAN,
        *(k for keys in METRIC_KEYS.values() for k in keys),
    }
    assert len(BEST_METRICS) == len(set(BEST_METRICS))


@pytest.mark.parametrize(
    "key, greater", [("mse", False), ("mae", False), ("pearson", True), ("micro_f1", True)]
)
def test_greater_is_better_follows_the_key(tmp_path, key, greater):
    cfg = load_config(None, [f"train.metric_for_best={key}", "train.early_stopping_patience=1"])
    args = training_arguments(cfg, "lora", tmp_path)
    assert args.metric_for_best_model == key and args.greater_is_better is greater


def test_a_metric_for_best_the_task_does_not_report_is_refused_before_anything_is_written(
    tmp_path, cache, tiny_bert_dir
):
    data = typed_data(tmp_path, REGRESSION)
    run = tmp_path / "run"
    with pytest.raises(LoraFtError) as info:
        train(_cfg(tiny_bert_dir, data, REGRESSION, "train.metric_for_best=accuracy"), run)
    message = str(info.value)
    assert "train.metric_for_best=accuracy is not reported for regression data" in message
    assert "pearson_spearman_mean" in message and "\n" not in message
    assert not run.exists() and not (tmp_path / ".run.partial").exists()


def test_the_best_checkpoint_by_mse_is_the_lowest(tmp_path, cache, tiny_bert_dir):
    data = typed_data(tmp_path, REGRESSION)
    cfg = _cfg(
        tiny_bert_dir, data, REGRESSION, "train.epochs=3", "train.save_strategy=epoch",
        "train.load_best_model=true", "train.metric_for_best=mse", "train.learning_rates.lora=0.05",
    )  # fmt: skip
    run = tmp_path / "run"
    metrics = train(cfg, run)
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = {e["step"]: e["eval_mse"] for e in logged if "eval_mse" in e}
    assert len(evals) == 3 and len(set(evals.values())) == 3
    best = min(evals, key=evals.get)
    assert metrics["best_step"] == best and metrics["best_metric"] == pytest.approx(evals[best])
    assert metrics["validation"]["mse"] == pytest.approx(evals[best])
    assert np.isfinite(list(metrics["validation"].values())).all()


def test_the_train_summary_shows_a_regression_runs_own_metrics():
    split = {
        "pearson": 0.81,
        "spearman": 0.79,
        "pearson_spearman_mean": 0.8,
        "mse": 1.25,
        "mae": 0.9,
        "loss": 1.25,
    }
    metrics = {
        "method": "lora", "model": "m", "validation": split, "test": split, "trainable_params": 10,
        "total_params": 100, "trainable_percent": 10.0, "train_seconds": 1.0, "train_samples_per_second": 5.0,
        "label_names": ["score"], "task": Task(REGRESSION, ("score",)).to_dict(),
    }  # fmt: skip
    out = io.StringIO()
    print_run_summary(metrics, Path("runs/x"), Console(file=out, width=200))
    text = out.getvalue()
    assert "│ pearson_spearman_mean │     0.8000 │ 0.8000 │" in text and "│ mse " in text
    assert "accuracy" not in text and "F1" not in text


@pytest.mark.parametrize(
    "settings",
    [{"label_separator": ";"}, {"label_separator": "", "problem_type": "multi_label_classification"}],
)
def test_label_separator_needs_multi_label_and_a_character(settings):
    from lora_ft.config import DataConfig

    with pytest.raises(LoraFtError, match="data.label_separator"):
        DataConfig(**settings)
    DataConfig(label_separator=";", problem_type="multi_label_classification")


def test_misspelt_problem_type_names_the_three():
    from lora_ft.config import DataConfig

    with pytest.raises(LoraFtError, match="data.problem_type must be one of single_label_classification"):
        DataConfig(problem_type="regresion")
