"""Mixed precision on the CPU: a low-precision frozen base under float32 LoRA weights, gradients and
optimizer state; activation checkpointing that still trains LoRA; fp16 refused without a GPU."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerCallback
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import load_config
from lora_ft.errors import LoraFtError
from lora_ft.lora import LoRALinear
from lora_ft.training import precision
from lora_ft.training.precision import prepare_model, resolve_precision, set_dtypes
from lora_ft.training.train import train


def _cfg(model_dir, data_dir, *extra: str):
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.name={data_dir}",
            "data.max_length=32",
            "lora.r=2",
            "lora.alpha=4",
            "lora.dropout=0",
            "lora.targets=[query,value]",  # the counts below are of query and value in 2 layers
            "train.epochs=1",
            "train.batch_size=8",
            "train.learning_rate=5e-3",
            "train.eval_strategy=no",
            "train.save_strategy=no",
            *extra,
        ],
    )


def _toy(dtype: torch.dtype) -> nn.Module:
    """A LoRA-wrapped Linear and a trainable head, loaded in ``dtype`` like a checkpoint saved in it."""
    torch.manual_seed(0)
    model = nn.Sequential(LoRALinear(nn.Linear(8, 8).to(dtype), r=2, alpha=4), nn.Linear(8, 2).to(dtype))
    with torch.no_grad():
        model[0].lora_B.normal_()  # a non-zero update, so gradients reach lora_A too
    return model


class Probe(TrainerCallback):
    """Dtypes during training: parameters and gradients before an optimizer step, its state after one."""

    def __init__(self):
        self.params: dict[str, torch.dtype] = {}
        self.grads: dict[str, tuple[torch.dtype, float]] = {}
        self.state: list[torch.dtype] = []
        self.activation: list[torch.dtype] = []
        self.checkpointing = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.checkpointing = model.is_activation_checkpointing
        first = next(m for m in model.modules() if isinstance(m, LoRALinear))
        first.base.register_forward_hook(lambda mod, inp, out: self.activation.append(out.dtype))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # The last step: lora_B has left zero by then, so lora_A gets a gradient too.
        if state.global_step == state.max_steps - 1:
            self.params = {n: p.dtype for n, p in model.named_parameters()}
            self.grads = {
                n: (p.grad.dtype, p.grad.abs().sum().item())
                for n, p in model.named_parameters()
                if p.requires_grad
            }

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if not self.state:
            self.state = [s[k].dtype for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]


def test_bf16_keeps_lora_weights_grads_and_adamw_state_float32_over_a_bf16_base(
    tmp_path, tiny_bert_dir, toy_data_dir
):
    probe = Probe()
    metrics = train(
        _cfg(tiny_bert_dir, toy_data_dir, "train.precision=bf16"), tmp_path / "run", callbacks=[probe]
    )
    trainable = {n for n, p in probe.params.items() if n in probe.grads}
    assert len(trainable) == 2 * 2 * 2 + 2  # A and B of query/value in 2 layers, classifier weight and bias
    assert {probe.params[n] for n in trainable} == {torch.float32}
    assert {probe.params[n] for n in probe.params if n not in trainable} == {torch.bfloat16}
    assert {dtype for dtype, _ in probe.grads.values()} == {torch.float32}
    assert all(size > 0 for _, size in probe.grads.values()), probe.grads
    assert probe.state == [torch.float32] * (2 * len(trainable))  # exp_avg and exp_avg_sq of each
    assert probe.activation and set(probe.activation) == {torch.bfloat16}  # the base really ran in bf16
    assert metrics["precision"] == "bf16"
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert all(t.abs().max() > 0 for k, t in saved.items() if "lora_B" in k)


def test_activation_checkpointing_trains_lora_exactly_as_without(tmp_path, tiny_bert_dir, toy_data_dir):
    """Reentrant checkpointing, where frozen embeddings would cut every LoRA weight off its gradient."""
    plain = train(_cfg(tiny_bert_dir, toy_data_dir), tmp_path / "plain")
    probe = Probe()
    checkpointed = train(
        _cfg(
            tiny_bert_dir,
            toy_data_dir,
            "train.gradient_checkpointing=true",
            "train.trainer.activation_checkpointing_kwargs={use_reentrant: true}",
        ),
        tmp_path / "ckpt",
        callbacks=[probe],
    )
    assert probe.checkpointing is True
    assert checkpointed["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-6)
    a = load_file(str(tmp_path / "plain" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors"))
    lora_b = [k for k in b if "lora_B" in k]
    assert len(lora_b) == 4 and all(b[k].abs().max() > 1e-4 for k in lora_b)  # every layer's B left zero
    for key in a:  # the recomputed forward is the same computation: float32 rounding at most
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without a CUDA GPU")
def test_fp16_without_a_gpu_is_a_one_line_error_before_anything_is_written(
    tmp_path, tiny_bert_dir, toy_data_dir
):
    with pytest.raises(
        LoraFtError, match=r"^train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU$"
    ):
        train(_cfg(tiny_bert_dir, toy_data_dir, "train.precision=fp16"), tmp_path / "runs" / "x")
    assert not (tmp_path / "runs").exists()
    result = CliRunner().invoke(
        app, ["train", "--set", "train.precision=fp16", "--out", str(tmp_path / "runs" / "y")]
    )
    assert result.exit_code == 1
    assert (
        result.stderr.strip() == "error: train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU"
    )
    assert not (tmp_path / "runs").exists()


def test_float32_trainable_weights_are_what_the_fp16_grad_scaler_needs():
    """The known failure ("Attempting to unscale FP16 gradients") and its fix, on the CPU."""

    def step(model: nn.Module) -> torch.optim.Optimizer:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        scaler = torch.amp.GradScaler("cpu", init_scale=16.0)  # small: the default 2**16 overflows step one
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(torch.randn(4, 8)).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        return opt

    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        step(_toy(torch.float16))  # the head trains in the checkpoint's fp16
    model = _toy(torch.float16)
    base_before = model[0].base.weight.clone()
    set_dtypes(model, torch.float16)
    opt = step(model)
    assert model[0].base.weight.dtype == torch.float16 and torch.equal(model[0].base.weight, base_before)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {s[k].dtype for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")} == {torch.float32}
    assert len(opt.state) == 4  # lora_A, lora_B, head weight and bias all stepped


@pytest.mark.parametrize(
    ("precision", "method", "frozen"),
    [
        ("bf16", "lora", torch.bfloat16),
        ("fp32", "lora", torch.float32),  # a bf16 checkpoint trained in fp32 is upcast
        ("bf16", "full", torch.float32),  # full/head save the whole model: never rounded to bf16
        ("bf16", "head", torch.float32),
    ],
)
def test_prepare_model_sets_frozen_and_trainable_dtypes(precision, method, frozen):
    model = _toy(torch.bfloat16)
    if method == "full":
        model.requires_grad_(True)
    prepare_model(model, precision, method, checkpointing=False)
    assert model[0].base.weight.dtype == frozen
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


@pytest.mark.parametrize(
    ("flags", "expected"), [({"avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"), ({"avx2"}, "fp32")]
)
def test_auto_is_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch, flags, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
    assert resolve_precision("auto") == expected
    assert [resolve_precision(p) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\n")
    monkeypatch.setattr(precision, "_CPUINFO", cpuinfo)
    assert {"avx512f", "avx512_bf16"} <= precision._cpu_flags()
    monkeypatch.setattr(precision, "_CPUINFO", tmp_path / "missing")
    assert precision._cpu_flags() == set()


def test_a_run_with_auto_records_the_precision_it_ran_in(monkeypatch, tmp_path, tiny_bert_dir, toy_data_dir):
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    metrics = train(_cfg(tiny_bert_dir, toy_data_dir, "train.precision=auto"), tmp_path / "run")
    assert metrics["precision"] == "bf16"
    assert load_config(tmp_path / "run" / "config.yaml").train.precision == "bf16"
