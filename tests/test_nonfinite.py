"""NaN and Inf never pass: config values, a diverging run, saved adapters and models, metrics, merge
verification, predictions, and hostile adapter files. ``nan > limit`` is False, so every check here is
tried with NaN and both infinities as well as a wrong finite value."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import DataConfig, LoRAConfig, ModelConfig, TrainConfig
from lora_ft.data.task import Task
from lora_ft.errors import LoraFtError
from lora_ft.finite import require_finite_metrics
from lora_ft.lora import LoRALinear
from lora_ft.lora.inject import inject_lora, lora_layers
from lora_ft.lora.io import CONFIG_NAME, META_SCALING, WEIGHTS_NAME, read_adapter
from lora_ft.lora.saving import save_adapter
from lora_ft.lora.targets import default_head
from lora_ft.serving.export import Probe, verify_merge
from lora_ft.serving.predict import predict_logits
from lora_ft.training.callbacks import StopOnNonFinite

from .conftest import CrashAt, assert_one_line_error, small_data
from .test_adapter_io import TARGETS, base_model, make_adapter
from .test_bad_inputs import FLOAT_KEYS

NON_FINITE = [math.nan, math.inf, -math.inf]
runner = CliRunner()


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --- config -------------------------------------------------------------------------------------


def _float_fields():
    """Every setting whose annotation holds a float (float, float | None, dict[str, float])."""
    for cls, prefix in (
        (ModelConfig, "model"),
        (DataConfig, "data"),
        (LoRAConfig, "lora"),
        (TrainConfig, "train"),
    ):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            args = typing.get_args(hint)
            if hint is float or float in args:
                yield cls, prefix, f.name, None
            elif typing.get_origin(hint) is dict and args[1] is float:
                yield cls, prefix, f.name, "lora" if f.name == "learning_rates" else "query"


FLOAT_FIELDS = list(_float_fields())


def test_the_float_settings_are_all_found_and_all_in_the_bad_input_matrix():
    names = {f"{prefix}.{name}" for _, prefix, name, _ in FLOAT_FIELDS}
    assert names == {
        "lora.alpha", "lora.dropout", "lora.init_std", "lora.alpha_pattern", "train.epochs", "train.learning_rate",
        "train.learning_rates", "train.weight_decay", "train.warmup_ratio", "train.max_grad_norm",
    }  # fmt: skip
    assert {".".join(k.split(".")[:2]) for k in FLOAT_KEYS} == names


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    ("cls", "prefix", "name", "key"), FLOAT_FIELDS, ids=[f"{p}.{n}" for _, p, n, _ in FLOAT_FIELDS]
)
def test_every_float_setting_refuses_nan_and_inf(cls, prefix, name, key, value):
    kwargs = {name: value if key is None else {key: value}}
    where = f"{prefix}.{name}" if key is None else f"{prefix}.{name}.{key}"
    with pytest.raises(LoraFtError, match=rf"^{where} must be a finite number, got {value}$"):
        cls(**kwargs)


@pytest.mark.parametrize("value", NON_FINITE)
def test_lora_linear_refuses_a_non_finite_alpha(value):
    with pytest.raises(ValueError, match="LoRA alpha must be a finite number"):
        LoRALinear(nn.Linear(4, 4), r=2, alpha=value)
    with pytest.raises(ValueError, match="LoRA alpha must be a finite number"):
        LoRALinear(nn.Linear(4, 4), r=2, alpha="16")


# --- training ------------------------------------------------------------------------------------


@pytest.fixture()
def ws(tmp_path, tiny_bert_dir) -> SimpleNamespace:
    data = small_data(tmp_path)
    return SimpleNamespace(root=tmp_path, model=tiny_bert_dir, data=data, out=tmp_path / "runs" / "r")


def _train_argv(ws, *extra: str) -> list[str]:
    return [
        "train", "--set", f"model.name={ws.model}", "--set", f"data.name={ws.data}", "--set", "data.max_length=16",
        "--set", "train.threads=1", "--set", "train.batch_size=4", "--set", "train.eval_strategy=no",
        "--set", "train.logging_steps=1", "--out", str(ws.out), *extra,
    ]  # fmt: skip


def test_a_learning_rate_that_blows_up_stops_with_a_kept_finite_checkpoint_and_no_adapter(ws):
    """lr 1e9: the weights grow to ~1e9 within 4 steps, then the gradient norm or the loss is NaN.

    On main this exits 0 with an all-NaN adapter and logs the NaN steps as loss 0.0.
    """
    argv = _train_argv(
        ws, "--set", "train.learning_rate=1e9", "--set", "train.max_steps=8",
        "--set", "train.save_strategy=steps", "--set", "train.save_steps=2",
    )  # fmt: skip
    result = runner.invoke(app, argv)
    assert_one_line_error(result, "nothing non-finite was saved. Lower train.learning_rate (1e+09 now)")
    found = re.search(r"training diverged at step (\d+): the (loss|logged grad_norm) is nan;", result.stderr)
    # Not "resume with": the resume is exact, so it repeats the steps that diverged, and a lower
    # learning rate is a different experiment, which a resume refuses.
    kept = re.search(
        r"kept the last finite checkpoint \(step (\d+)\) in \S+, but a resume would diverge again: "
        r"start over with `lora-ft train \S+config.yaml --out \S+ --force` and "
        r"--set train.learning_rate=LOWER$",
        result.stderr.strip(),
    )
    assert found and kept, result.stderr
    step, kept_step = int(found.group(1)), int(kept.group(1))
    assert 2 <= kept_step < step <= 8
    assert not ws.out.exists()
    partial = ws.root / "runs" / ".r.partial"
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == [f"checkpoint-{kept_step}"]
    tensors = load_file(str(partial / "checkpoints" / f"checkpoint-{kept_step}" / "trainable.safetensors"))
    assert all(bool(t.isfinite().all()) for t in tensors.values())
    assert max(float(t.abs().max()) for t in tensors.values()) > 1e6  # it did blow up: finite, not sane
    log = [json.loads(line) for line in (partial / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0.1 for r in log)  # no NaN step logged as loss 0.0


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_loss_at_the_first_step_stops_and_leaves_nothing(ws, monkeypatch, value):
    from transformers import Trainer

    def bad_loss(self, model, inputs, num_items_in_batch=None):
        return torch.tensor(value)

    monkeypatch.setattr(Trainer, "training_step", bad_loss)
    result = runner.invoke(app, _train_argv(ws))
    assert_one_line_error(result, f"training diverged at step 1: the loss is {value}")
    assert list((ws.root / "runs").iterdir()) == []


class _Poison(TrainerCallback):
    """Writes ``value`` into one LoRA weight after the optimizer step of ``step``: a gradient gone bad."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if n.endswith("lora_B"))[0, 0] = self.value


@pytest.mark.parametrize("value", NON_FINITE)
def test_a_checkpoint_with_non_finite_weights_is_never_written(ws, value):
    from lora_ft.config import load_config
    from lora_ft.training.train import train

    cfg = load_config(
        None,
        [f"model.name={ws.model}", f"data.name={ws.data}", "data.max_length=16", "train.threads=1",
         "train.batch_size=4", "train.eval_strategy=no", "train.max_steps=6", "train.save_strategy=steps",
         "train.save_steps=2", "train.logging_steps=100"],
    )  # fmt: skip
    with pytest.raises(
        LoraFtError, match=r"training diverged at step 4: the updated weights are not finite"
    ) as exc:
        train(cfg, ws.out, callbacks=[_Poison(4, value)])
    assert "query.lora_B holds 1 " in str(exc.value) and "kept the last finite checkpoint (step 2)" in str(
        exc.value
    )
    checkpoints = ws.root / "runs" / ".r.partial" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "checkpoint-2"
    ]  # no .checkpoint-4.partial either


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_resume_skips_a_checkpoint_holding_non_finite_weights(ws, caplog, value):
    """A checkpoint of NaN weights (an older lora-ft saved a diverged run's) is damaged: the resume falls
    back to the previous finite one instead of loading NaN and stopping at once as "diverged"."""
    from lora_ft.config import load_config
    from lora_ft.training.train import train

    cfg = load_config(
        None,
        [f"model.name={ws.model}", f"data.name={ws.data}", "data.max_length=16", "train.threads=1",
         "train.batch_size=4", "train.eval_strategy=no", "train.max_steps=6", "train.save_strategy=steps",
         "train.save_steps=2", "train.save_total_limit=2"],
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, ws.out, callbacks=[CrashAt(5, RuntimeError("crash"))])
    newest = ws.root / "runs" / ".r.partial" / "checkpoints" / "checkpoint-4"
    tensors = load_file(str(newest / "trainable.safetensors"))
    name = next(n for n in tensors if "lora_B" in n)
    tensors[name][0, 0] = value
    save_file(tensors, str(newest / "trainable.safetensors"))
    metrics = train(cfg, ws.out, resume=True)
    assert metrics["resumed_from_steps"] == [2]
    assert f"{newest} is damaged (trainable.safetensors is not finite: {name} holds 1 " in caplog.text
    adapter = load_file(str(ws.out / "adapter" / "adapter_model.safetensors"))
    assert all(bool(t.isfinite().all()) for t in adapter.values())


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("key", ["grad_norm", "eval_loss", "loss"])
def test_a_non_finite_logged_number_stops_training(key, value):
    args = SimpleNamespace(fp16=False, learning_rate=5e-4)
    state = SimpleNamespace(global_step=7)
    callback = StopOnNonFinite()
    callback.on_log(args, state, None, logs={key: 0.5, "learning_rate": 5e-4})
    with pytest.raises(LoraFtError, match=rf"training diverged at step 7: the logged {key} is {value}"):
        callback.on_log(args, state, None, logs={key: value})


def test_an_infinite_gradient_norm_under_fp16_is_the_loss_scaler_not_divergence():
    args = SimpleNamespace(fp16=True, learning_rate=5e-4)
    StopOnNonFinite().on_log(args, SimpleNamespace(global_step=1), None, logs={"grad_norm": math.inf})
    with pytest.raises(LoraFtError, match="the logged loss is nan"):
        StopOnNonFinite().on_log(args, SimpleNamespace(global_step=1), None, logs={"loss": math.nan})


@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_final_metrics_publish_no_run(ws, monkeypatch, value):
    import lora_ft.training.record as record_module

    monkeypatch.setattr(
        record_module, "_evaluate", lambda trainer, dataset, prefix, task: {"accuracy": 0.5, "loss": value}
    )
    result = runner.invoke(app, _train_argv(ws, "--set", "train.max_steps=2"))
    assert_one_line_error(
        result,
        f"refusing to publish the run (its model's outputs are not finite): validation.loss is {value}",
    )
    assert not ws.out.exists()


@pytest.mark.parametrize("value", NON_FINITE)
def test_require_finite_metrics_names_the_first_bad_number(value):
    require_finite_metrics({"validation": {"accuracy": 0.5, "loss": 0.7}, "steps": [1, 2], "x": None}, "m")
    with pytest.raises(LoraFtError, match=rf"^m: test.per_class\[1\] is {value}$"):
        require_finite_metrics({"validation": {"loss": 0.7}, "test": {"per_class": [0.5, value]}}, "m")


# --- writers -------------------------------------------------------------------------------------


def _lora_model(model_dir: Path):
    model = base_model(model_dir)
    inject_lora(model, TARGETS["bert"], r=2, alpha=4, head=default_head(model))
    return model


@pytest.mark.parametrize("value", NON_FINITE)
def test_save_adapter_refuses_non_finite_weights_and_writes_nothing(tmp_path, tiny_bert_dir, value):
    model = _lora_model(tiny_bert_dir)
    with torch.no_grad():
        next(iter(lora_layers(model).values())).lora_B[3, 1] = value
    with pytest.raises(
        LoraFtError,
        match=r"refusing to write the adapter .*/a, its weights are not finite: "
        r"base_model\.model\.bert\.encoder\.layer\.0\.attention\.self\.query\.lora_B\.weight holds 1 ",
    ):
        save_adapter(
            model, tmp_path / "a", head=default_head(model), base_model_name_or_path=str(tiny_bert_dir)
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", NON_FINITE)
def test_full_model_outputs_refuse_non_finite_weights(tmp_path, ws, value):
    from lora_ft.config import load_config
    from lora_ft.training.prepare import prepare
    from lora_ft.training.train import _save_outputs

    cfg = load_config(
        None, [f"model.name={ws.model}", f"data.name={ws.data}", "data.max_length=16", "train.method=full"]
    )
    p = prepare(cfg)
    with torch.no_grad():
        p.loaded.model.classifier.bias[1] = value
    with pytest.raises(
        LoraFtError, match=r"refusing to write the model to .*model: classifier\.bias holds 1 "
    ):
        _save_outputs(p, tmp_path / "run", "full", {})
    assert not (tmp_path / "run").exists()


# --- adapters on disk ------------------------------------------------------------------------------


def _poison_weights(adapter: Path, value: float) -> None:
    path = adapter / WEIGHTS_NAME
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in sorted(tensors) if k.endswith("lora_B.weight"))
    tensors[key][0, 0] = value
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("value", NON_FINITE)
def test_a_nan_poisoned_adapter_is_refused_on_read_and_merge_writes_nothing(tmp_path, tiny_bert_dir, value):
    make_adapter(tiny_bert_dir, tmp_path / "a")
    _poison_weights(tmp_path / "a", value)
    with pytest.raises(LoraFtError, match=r"adapter_model\.safetensors holds weights that are not finite"):
        read_adapter(tmp_path / "a")
    result = runner.invoke(app, ["merge", str(tmp_path / "a"), "--out", str(tmp_path / "merged")])
    assert_one_line_error(result, "lora_B.weight holds 1 ")
    assert not (tmp_path / "merged").exists() and _hidden(tmp_path) == []


def _edit_config(adapter: Path, **edit) -> None:
    path = adapter / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))


HOSTILE = [
    ({"r": "2"}, "r must be an integer >= 1, got '2'"),
    ({"r": 2.0}, "r must be an integer >= 1, got 2.0"),
    ({"r": True}, "r must be an integer >= 1, got True"),
    ({"lora_alpha": "4"}, "lora_alpha must be a finite number > 0, got '4'"),
    ({"lora_alpha": math.nan}, "lora_alpha must be a finite number > 0, got nan"),
    ({"lora_alpha": math.inf}, "lora_alpha must be a finite number > 0, got inf"),
    ({"lora_alpha": -math.inf}, "lora_alpha must be a finite number > 0, got -inf"),
    ({"lora_alpha": -4}, "lora_alpha must be a finite number > 0, got -4"),
    ({"lora_dropout": math.nan}, "lora_dropout must be a number in [0, 1), got nan"),
    ({"lora_dropout": 1.5}, "lora_dropout must be a number in [0, 1), got 1.5"),
    ({"use_rslora": "yes"}, "use_rslora must be true or false, got 'yes'"),
    ({"target_modules": "(["}, "target_modules '([' is not a valid regex"),
    ({"target_modules": 5}, "target_modules must be a regex or a list of names, got 5"),
    ({"rank_pattern": {"([": 2}}, "rank_pattern key '([' is not a valid regex"),
    ({"rank_pattern": {"query": "4"}}, "rank_pattern['query'] must be an integer >= 1, got '4'"),
    ({"rank_pattern": [4]}, "rank_pattern must map module regexes to values, got [4]"),
    ({"alpha_pattern": {"query": math.nan}}, "alpha_pattern['query'] must be a finite number > 0, got nan"),
    ({"alpha_pattern": {"query": math.inf}}, "alpha_pattern['query'] must be a finite number > 0, got inf"),
    ({"alpha_pattern": {"query": 0}}, "alpha_pattern['query'] must be a finite number > 0, got 0"),
]


@pytest.mark.parametrize(("edit", "phrase"), HOSTILE, ids=[repr(e) for e, _ in HOSTILE])
def test_hostile_adapter_config_values_are_one_line_errors_naming_file_and_key(
    tmp_path, tiny_bert_dir, edit, phrase
):
    make_adapter(tiny_bert_dir, tmp_path / "a")
    _edit_config(tmp_path / "a", **edit)
    with pytest.raises(LoraFtError) as exc:
        read_adapter(tmp_path / "a")
    message = str(exc.value)
    assert (
        message.startswith(f"{tmp_path / 'a' / CONFIG_NAME}: ") and phrase in message and "\n" not in message
    )


@pytest.mark.parametrize(
    ("record", "phrase"),
    [
        ('{"m": "x"}', "gives m the scaling 'x', not a finite number"),
        ('{"m": NaN}', "gives m the scaling nan, not a finite number"),
        ('{"m": Infinity}', "gives m the scaling inf, not a finite number"),
        ('{"m": -Infinity}', "gives m the scaling -inf, not a finite number"),
        ('"2.0"', "record in the header must map modules to numbers"),
    ],
)
def test_a_non_number_scaling_header_is_a_one_line_error(tmp_path, tiny_bert_dir, record, phrase):
    make_adapter(tiny_bert_dir, tmp_path / "a")
    path = tmp_path / "a" / WEIGHTS_NAME
    with safe_open(str(path), "pt") as f:
        metadata = {**f.metadata(), META_SCALING: record}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(LoraFtError, match=rf"^{path}: the {META_SCALING} record") as exc:
        read_adapter(tmp_path / "a")
    assert phrase in str(exc.value)


# --- merge verification, predictions ---------------------------------------------------------------


SINGLE = Task.legacy(["0", "1"])


@pytest.mark.parametrize("bad", [*NON_FINITE, 2e-4])
def test_merge_verification_refuses_nan_inf_and_a_real_difference(bad):
    probe = Probe(["a", "b"], None, "2 sentences")
    reference = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    assert verify_merge(SINGLE, reference, reference + 5e-5, probe)["max_abs_logit_diff"] <= 1e-4
    merged = reference.copy()
    merged[1, 1] += bad
    with pytest.raises(LoraFtError, match="merge verification failed on 2 sentences: max |Δlogit| "):
        verify_merge(SINGLE, reference, merged, probe)
    both_nan = np.full_like(reference, math.nan)  # NaN argmaxes agree (class 0): still refused
    with pytest.raises(LoraFtError, match="merge verification failed"):
        verify_merge(SINGLE, both_nan, both_nan, probe)


def test_a_float16_export_that_overflows_is_refused(tmp_path, tiny_bert_dir):
    from lora_ft.serving.export import export_merged

    make_adapter(tiny_bert_dir, tmp_path / "a")
    path = tmp_path / "a" / WEIGHTS_NAME
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    # A merged value weight beyond float16's 65504, finite in float32; the LayerNorm after it keeps the
    # logits sane, so the float32 merge verifies.
    key = "base_model.model.bert.encoder.layer.0.attention.self.value.lora_B.weight"
    tensors[key] = tensors[key] * 1e6
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(
        LoraFtError, match=r"the merged model in float16 is not finite \(its largest value is 65504"
    ):
        export_merged(tmp_path / "a", tmp_path / "merged", dtype="float16")
    assert not (tmp_path / "merged").exists() and _hidden(tmp_path) == []
    assert export_merged(tmp_path / "a", tmp_path / "merged", dtype="float32").max_abs_logit_diff < 1e-2


@pytest.mark.parametrize("value", NON_FINITE)
def test_predict_refuses_non_finite_logits(tmp_path, tiny_bert_dir, value):
    from transformers import AutoTokenizer

    model = base_model(tiny_bert_dir)
    with torch.no_grad():
        model.classifier.bias[0] = value
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with pytest.raises(LoraFtError, match="the model's logits are not finite for 3 of 3 inputs"):
        predict_logits(model, tok, ["good", "bad", "fine"], max_length=16)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    result = runner.invoke(app, ["predict", str(tmp_path / "m"), "a fine film"])
    assert_one_line_error(result, "the model's logits are not finite for 1 of 1 inputs (first: input 1, ")
