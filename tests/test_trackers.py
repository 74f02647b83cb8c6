"""Experiment trackers (``train.report_to``): the setting and its errors, then TensorBoard, MLflow and
trackio each writing real files from a tiny run, read back with the tracker's own reader: the curves,
the run config and the final metrics, equal to log.jsonl and metrics.json; and ``compare`` logging its
runs under one experiment."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.compare.results import RunSpec
from lora_ft.compare.runner import compare, run_config
from lora_ft.config import load_config
from lora_ft.errors import LoraFtError
from lora_ft.training import train as train_mod
from lora_ft.training.arguments import training_arguments
from lora_ft.training.resume_rules import refused_changes
from lora_ft.training.tracking import final_metrics, run_params
from lora_ft.training.train import train

from .conftest import assert_one_line_error
from .test_compare import in_process

# 48 rows, batch 8: 6 steps, a loss logged every 2 of them; one evaluation at the end of the epoch.
SETTINGS = [
    "data.max_length=32", "lora.r=2", "lora.alpha=4", "train.epochs=1", "train.batch_size=8",
    "train.logging_steps=2", "train.save_strategy=no", "train.threads=1",
]  # fmt: skip


def _cfg(model_dir: Path, data_dir: Path, *extra: str):
    return load_config(None, [f"model.name={model_dir}", f"data.name={data_dir}", *SETTINGS, *extra])


def _mlflow_store(tmp_path: Path, monkeypatch) -> str:
    """A local MLflow store of this test's own (SQLite: MLflow 3 refuses its old ./mlruns file store)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def test_report_to_takes_a_list_of_known_trackers_and_one_name(tmp_path):
    assert load_config(None, []).train.report_to == []
    assert load_config(None, ["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    assert load_config(None, ["train.report_to=[mlflow, trackio]"]).train.report_to == ["mlflow", "trackio"]
    with pytest.raises(LoraFtError, match="train.report_to takes a list of tensorboard, mlflow, trackio"):
        load_config(None, ["train.report_to=[wandb]"])
    with pytest.raises(LoraFtError, match="names a tracker twice"):
        load_config(None, ["train.report_to=[mlflow, mlflow]"])
    with pytest.raises(LoraFtError, match="train.run_name is empty"):
        load_config(None, ["train.run_name=' '"])


def test_report_to_maps_onto_the_trainer_and_its_pass_through_is_refused(tmp_path):
    cfg = load_config(None, ["train.project=sweep", "train.run_name=first"])
    args = training_arguments(cfg, "lora", tmp_path / "checkpoints", run_name="ignored")
    assert (args.report_to, args.run_name, args.project) == ([], "first", "sweep")
    args = training_arguments(load_config(None, []), "lora", tmp_path / "checkpoints", run_name="x")
    assert (args.run_name, args.project) == ("x", "lora-ft")
    for key in ("report_to", "run_name", "project"):
        cfg = load_config(None, [f"train.trainer.{key}=tensorboard"])
        with pytest.raises(LoraFtError, match=f"train.trainer.{key} is lora-ft's to set: use train.{key}"):
            training_arguments(cfg, "lora", tmp_path / "checkpoints")


def test_a_resume_may_change_where_it_reports():
    saved = load_config(None, [])
    new = load_config(None, ["train.report_to=[tensorboard]", "train.project=p", "train.run_name=r"])
    assert refused_changes(saved, new) == {}


def test_a_missing_tracker_is_one_line_naming_the_extra_before_anything_loads(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    hidden = {"mlflow", "trackio"}  # as if not installed, whether or not they are
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded data or a model before refusing the tracker")

    monkeypatch.setattr(train_mod, "prepare", no_loading)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "--set", "train.report_to=[mlflow, trackio]", "--out", str(out)]
    )
    assert_one_line_error(
        result,
        "train.report_to names mlflow, trackio, not installed here: pip install 'lora-ft[mlflow,trackio]'",
    )
    assert list(tmp_path.iterdir()) == []


def test_final_metrics_keep_the_finite_numbers_of_metrics_json():
    metrics = {"validation": {"accuracy": 0.75, "loss": 0.5}, "test": None, "train_loss": float("nan"),
               "train_memory_mb": float("inf"), "global_steps": 6, "method": "lora", "seed": 3}  # fmt: skip
    assert final_metrics(metrics) == {
        "final/validation/accuracy": 0.75,
        "final/validation/loss": 0.5,
        "final/global_steps": 6.0,
    }
    params = run_params(load_config(None, ["lora.targets=[query, value]"]))
    assert params["lora.r"] == 8 and params["lora.targets"] == '["query", "value"]'
    assert params["train.learning_rates.lora"] == 2e-3 and params["model.revision"] is None


def test_tensorboard_event_files_hold_the_curves_config_and_final_metrics(
    tmp_path, tiny_bert_dir, toy_data_dir
):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    out = tmp_path / "run"
    metrics = train(_cfg(tiny_bert_dir, toy_data_dir, "train.report_to=[tensorboard]"), out)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    assert losses == pytest.approx(_losses(out)) and sorted(losses) == [2, 4, 6]
    assert events.Scalars("eval/accuracy")[-1].value == pytest.approx(metrics["validation"]["accuracy"])
    final = events.Scalars("final/test/accuracy")
    assert [(e.step, e.value) for e in final] == [(6, pytest.approx(metrics["test"]["accuracy"]))]
    assert events.Scalars("final/trainable_params")[0].value == metrics["trainable_params"]
    (config,) = events.Tensors("lora_ft/config/text_summary")
    assert "r: 2" in config.tensor_proto.string_val[0].decode()
    start = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_START_INFO_TAG]
    hparams = hparams_metadata.parse_session_start_info_plugin_data(start).hparams
    assert hparams["lora.r"].number_value == 2 and hparams["train.method"].string_value == "lora"


def test_mlflow_run_holds_params_curves_and_final_metrics(tmp_path, monkeypatch, tiny_bert_dir, toy_data_dir):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    uri = _mlflow_store(tmp_path, monkeypatch)
    out = tmp_path / "run"
    metrics = train(_cfg(tiny_bert_dir, toy_data_dir, "train.report_to=[mlflow]", "train.project=tiny"), out)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["lora.r"] == "2" and run.data.params["train.report_to"] == '["mlflow"]'
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(_losses(out))
    assert run.data.metrics["final/test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["final/validation/loss"] == pytest.approx(metrics["validation"]["loss"])


def test_trackio_store_holds_config_curves_and_final_metrics(
    tmp_path, monkeypatch, tiny_bert_dir, toy_data_dir
):
    store = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(store))
    trackio = pytest.importorskip("trackio", reason="the trackio extra is not installed")
    from trackio.sqlite_storage import SQLiteStorage

    for name, module in list(sys.modules.items()):  # trackio reads TRACKIO_DIR once, on import
        if name.startswith("trackio") and hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", store)
    out = tmp_path / "run"
    metrics = train(_cfg(tiny_bert_dir, toy_data_dir, "train.report_to=[trackio]", "train.project=tiny"), out)
    (run,) = trackio.Api().runs("tiny")
    assert run.name == "run" and run.config["lora.r"] == 2 and run.config["train.method"] == "lora"
    logs = SQLiteStorage.get_logs("tiny", "run")
    losses = {log["train/global_step"]: log["train/loss"] for log in logs if "train/loss" in log}
    assert losses == pytest.approx(_losses(out))
    (final,) = [log for log in logs if "final/test/accuracy" in log]
    assert final["final/test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert final["train/global_step"] == metrics["global_steps"] == 6
    assert list(store.glob("*.db"))


class _FailAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("boom")


def test_a_failed_run_ends_its_mlflow_run_as_failed(tmp_path, monkeypatch, tiny_bert_dir, toy_data_dir):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    uri = _mlflow_store(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="boom"):
        train(
            _cfg(tiny_bert_dir, toy_data_dir, "train.report_to=[mlflow]"),
            tmp_path / "run",
            callbacks=[_FailAt()],
        )
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lora-ft").experiment_id])
    assert run.info.status == "FAILED"
    assert not any(key.startswith("final/") for key in run.data.metrics)


def test_compare_names_each_run_variant_seed_in_the_comparison_s_experiment(
    tmp_path, monkeypatch, tiny_bert_dir, toy_data_dir
):
    cfg = load_config(None, ["train.seed=7"])
    assert run_config(cfg, RunSpec("lora", 7, 4), "sweep").train.run_name == "lora-r4-seed7"
    assert run_config(cfg, RunSpec("dora", 7), "sweep").train.project == "sweep"
    named = load_config(None, ["train.project=mine"])
    assert run_config(named, RunSpec("head", 7), "sweep").train.project == "mine"

    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    uri = _mlflow_store(tmp_path, monkeypatch)
    out = tmp_path / "sweep-1"
    result = compare(
        _cfg(tiny_bert_dir, toy_data_dir, "train.report_to=[mlflow]"), out, methods=["lora", "head"],
        runner=in_process([]),
    )  # fmt: skip
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep-1").experiment_id])
    accuracy = {r.info.run_name: r.data.metrics["final/validation/accuracy"] for r in runs}
    expected = {r.spec.name: r.metrics["validation"]["accuracy"] for r in result.results}
    assert sorted(accuracy) == ["head-seed42", "lora-seed42"]
    assert accuracy == pytest.approx(expected)
