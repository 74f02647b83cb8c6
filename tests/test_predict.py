"""`predict` and evaluation: length-sorted batching keeps input order and values, the CLI reads
arguments, files and stdin, writes plain or JSON lines, and rejects bad input in one line."""

from __future__ import annotations

import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.cli.tables import print_eval
from lora_ft.config import DataConfig, ModelConfig, RunConfig, dump_config
from lora_ft.data.metrics import classification_metrics
from lora_ft.errors import LoraFtError
from lora_ft.serving.artifacts import load_artifact
from lora_ft.serving.evaluate import evaluate, label_map
from lora_ft.serving.predict import predict_logits

from .conftest import toy_rows, write_split
from .test_adapter_io import make_adapter
from .test_export import assert_one_line_error

runner = CliRunner()
TEXTS = [
    "a gorgeous, moving film",
    "tedious",
    "the plot is a mess, the pacing drags and the ending makes no sense at all",
    "warm and wise",
    "cold",
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_bert_dir):
    path = tmp_path_factory.mktemp("predict") / "adapter"
    make_adapter(tiny_bert_dir, path, label_names=["negative", "positive"])
    return path


@pytest.fixture(scope="module")
def artifact(adapter):
    return load_artifact(adapter)


def _expected(artifact) -> np.ndarray:
    """One sentence at a time: no padding, no sorting."""
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            rows.append(artifact.model(**artifact.tokenizer(text, return_tensors="pt")).logits[0].numpy())
    return np.stack(rows)


def test_sorted_batches_keep_input_order_and_values(artifact):
    got = predict_logits(artifact.model, artifact.tokenizer, TEXTS, max_length=64, batch_size=2, device="cpu")
    np.testing.assert_allclose(got, _expected(artifact), atol=1e-5, rtol=0)
    assert np.abs(got[0] - got[1]).max() > 1e-3  # different sentences, different logits: order is checked
    empty = predict_logits(artifact.model, artifact.tokenizer, [], max_length=64)
    assert empty.shape == (0, 2)


def test_truncation_to_max_length(artifact):
    long = ["word " * 200]
    short = predict_logits(artifact.model, artifact.tokenizer, long, max_length=8, device="cpu")
    with torch.no_grad():
        ids = artifact.tokenizer(long, truncation=True, max_length=8, return_tensors="pt")
        assert ids["input_ids"].shape[1] == 8
        np.testing.assert_allclose(short, artifact.model(**ids).logits.numpy(), atol=1e-5, rtol=0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), -1).numpy()


def test_cli_predict_arguments_plain_output(adapter, artifact):
    result = runner.invoke(app, ["predict", str(adapter), *TEXTS])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(TEXTS)
    probs = _softmax(_expected(artifact))
    for line, text, p in zip(lines, TEXTS, probs, strict=True):
        label, prob, echoed = line.split("\t")
        assert echoed == text
        assert label == ["negative", "positive"][int(p.argmax())]
        assert float(prob) == pytest.approx(float(p.max()), abs=1e-4)


def test_cli_predict_file_stdin_and_json_agree(tmp_path, adapter):
    f = tmp_path / "in.txt"
    f.write_text(
        "\n".join(TEXTS[:2]) + "\n\n" + "\n".join(TEXTS[2:]) + "\n", encoding="utf-8"
    )  # a blank line
    from_file = runner.invoke(app, ["predict", str(adapter), "--file", str(f), "--json"])
    from_stdin = runner.invoke(app, ["predict", str(adapter), "-", "--json"], input=f.read_text())
    from_args = runner.invoke(app, ["predict", str(adapter), *TEXTS, "--json"])
    for result in (from_file, from_stdin, from_args):
        assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in from_file.stdout.splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    for r in rows:
        assert set(r) == {"text", "label", "probability", "probabilities"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["probability"] == max(r["probabilities"].values())
    assert from_file.stdout == from_stdin.stdout == from_args.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "phrase"),
    [
        ([], None, "no sentences to classify"),
        (["--file", "missing.txt"], None, "--file missing.txt not found"),
        (["one", "-"], None, '"-" (read stdin) must be the only sentence argument'),
        (["one", "--file", "in.txt"], None, "not several at once"),
        (["-"], "\n\n", "no sentences to classify"),
        (["--file", "latin1.txt"], None, "is not UTF-8 text"),
        (["x", "--batch-size", "0"], None, "--batch-size must be >= 1"),
    ],
)
def test_cli_predict_bad_input(tmp_path, adapter, monkeypatch, args, stdin, phrase):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("a\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    assert_one_line_error(runner.invoke(app, ["predict", str(adapter), *args], input=stdin), phrase)


def test_cli_predict_unknown_directory(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "nope"), "x"])
    assert_one_line_error(result, "not found; give a run directory, an adapter directory")
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["predict", str(tmp_path / "empty"), "x"])
    assert_one_line_error(result, "is not a run, adapter or model directory")


def test_label_map():
    np.testing.assert_array_equal(label_map(["neg", "pos"], ["neg", "pos"]), [0, 1])
    np.testing.assert_array_equal(label_map(["pos", "neg"], ["neg", "pos"]), [1, 0])  # by name
    np.testing.assert_array_equal(label_map(["0", "1"], ["LABEL_0", "LABEL_1"]), [0, 1])  # by position
    with pytest.raises(LoraFtError, match="the data has labels a, b, c but the model predicts neg, pos"):
        label_map(["a", "b", "c"], ["neg", "pos"])


def test_label_names_are_matched_by_name_and_say_so(caplog):
    with caplog.at_level(logging.WARNING, logger="lora_ft"):
        np.testing.assert_array_equal(label_map(["positive", "negative"], ["negative", "positive"]), [1, 0])
    assert "by name (data id -> model id): positive 0 -> 1, negative 1 -> 0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lora_ft"):
        np.testing.assert_array_equal(label_map(["negative", "positive"], ["negative", "positive"]), [0, 1])
        np.testing.assert_array_equal(label_map(["0", "1"], ["negative", "positive"]), [0, 1])  # ids
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("data", "model"),
    [
        (["bad", "good"], ["negative", "positive"]),  # same count, other names: position would be a guess
        (["negative", "positive"], ["LABEL_0", "LABEL_1"]),  # the model has no names to match
        (["0", "1", "2"], ["negative", "positive"]),  # more ids than the model has
    ],
)
def test_label_names_that_cannot_be_matched_are_refused_naming_both_sets(data, model):
    with pytest.raises(LoraFtError) as info:
        label_map(data, model)
    message = str(info.value)
    assert f"the data has labels {', '.join(data)} but the model predicts {', '.join(model)}" in message
    assert "cannot be matched by name" in message


def test_evaluate_on_a_data_directory(tmp_path, adapter, artifact):
    d = tmp_path / "data"
    d.mkdir()
    rows = [(s, ["negative", "positive"][label]) for s, label in toy_rows(12)]
    write_split(d / "train.csv", rows)
    write_split(d / "validation.csv", rows[:4])
    write_split(d / "test.csv", rows[4:])  # string labels: mapped to the model's by name
    metrics = evaluate(artifact, DataConfig(name=str(d)), "test", batch_size=3, device="cpu")
    texts = [s for s, _ in rows[4:]]
    labels = np.array([["negative", "positive"].index(label) for _, label in rows[4:]])
    logits = predict_logits(artifact.model, artifact.tokenizer, texts, max_length=artifact.max_length)
    expected = classification_metrics(logits, labels)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert metrics["samples"] == 8
    assert metrics["accuracy"] == expected["accuracy"] and metrics["f1"] == expected["f1"]
    assert metrics["loss"] == pytest.approx(loss, abs=1e-6)

    result = runner.invoke(app, ["eval", str(adapter), "--data", str(d), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == expected["accuracy"]
    result = runner.invoke(app, ["eval", str(adapter), "--data", str(d), "--split", "validation"])
    assert result.exit_code == 0 and "validation split" in result.stdout


def test_eval_of_a_single_file_run_falls_back_to_validation_and_says_so(tmp_path, adapter, tiny_bert_dir):
    data = write_split(tmp_path / "reviews.csv", toy_rows(40))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(adapter, run / "adapter")
    cfg = RunConfig(model=ModelConfig(name=str(tiny_bert_dir)), data=DataConfig(name=str(data)))
    (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")

    result = runner.invoke(app, ["eval", str(run), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["split"] == "validation" and got["samples"] == 4  # 10% of 40 rows carved out
    said = " ".join(result.stderr.split())  # the log handler may wrap the note at the terminal's width
    assert said.count("has no test split; evaluating on its validation split") == 1, result.stderr
    validation = runner.invoke(app, ["eval", str(run), "--json", "--device", "cpu", "--split", "validation"])
    assert validation.exit_code == 0 and json.loads(validation.stdout) == got
    assert "no test split" not in validation.stderr
    table = runner.invoke(app, ["eval", str(run), "--device", "cpu"])
    assert table.exit_code == 0 and "validation split of" in " ".join(table.stdout.split())
    # Only a missing test split is replaced: a data set that has one is scored on it.
    d = tmp_path / "splits"
    d.mkdir()
    for split, offset in (("train", 0), ("validation", 100), ("test", 200)):
        write_split(d / f"{split}.csv", toy_rows(8, offset))
    own = runner.invoke(app, ["eval", str(run), "--data", str(d), "--json", "--device", "cpu"])
    assert own.exit_code == 0 and json.loads(own.stdout)["split"] == "test"


def test_eval_tables_say_how_f1_was_averaged(tmp_path, adapter):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("train", "validation", "test"):
        write_split(d / f"{split}.csv", toy_rows(8))
    result = runner.invoke(app, ["eval", str(adapter), "--data", str(d), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "accuracy" in line)
    assert "F1 (binary)" in header
    js = runner.invoke(app, ["eval", str(adapter), "--data", str(d), "--json", "--device", "cpu"])
    assert json.loads(js.stdout)["f1_average"] == "binary"

    out = io.StringIO()
    metrics = {"split": "test", "data": "x", "samples": 3, "accuracy": 0.5, "f1": 0.25, "loss": 1.0}
    print_eval("m", {None: {**metrics, "f1_average": "macro"}}, Console(file=out, width=200))
    assert "F1 (macro)" in out.getvalue() and "F1 (binary)" not in out.getvalue()
