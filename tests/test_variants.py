"""LoRA variants: DoRA, rsLoRA, Gaussian init and per-module rank/alpha patterns. Each is checked as a
layer against its formula, through config -> inject -> save, against PEFT in both directions, through
merge and export, and as a `compare --methods` name."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from lora_ft.compare.runner import compare, parse_methods, run_config
from lora_ft.config import load_config
from lora_ft.data.task import Task
from lora_ft.errors import LoraFtError
from lora_ft.lora import DoRALinear, LoRALinear
from lora_ft.lora.inject import inject_lora, lora_layers, merge_and_unload
from lora_ft.lora.io import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from lora_ft.lora.saving import save_adapter
from lora_ft.lora.targets import default_head
from lora_ft.serving.artifacts import load_artifact
from lora_ft.serving.export import export_merged

from .test_adapter_io import base_model, logits_of
from .test_compare import _cfg, in_process

IN, OUT, R = 12, 10, 4


def dora_layer(bias: bool = True, dropout: float = 0.0, seed: int = 0) -> DoRALinear:
    """A DoRA layer that changes something: non-zero B and a magnitude away from ‖W‖."""
    torch.manual_seed(seed)
    layer = DoRALinear(nn.Linear(IN, OUT, bias=bias), r=R, alpha=8, dropout=dropout)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_magnitude.mul_(torch.rand(OUT) + 0.5)
    return layer


def x_of(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def dora_reference(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """The DoRA paper's forward, written out: m / ‖W + ΔW‖_row ⊙ ((W + ΔW) x) + bias."""
    adapted = layer.base.weight + layer.lora_B @ layer.lora_A * layer.scaling
    direction = adapted / torch.linalg.vector_norm(adapted, dim=1, keepdim=True).detach()
    return F.linear(x, layer.lora_magnitude[:, None] * direction, layer.base.bias)


# --- the layer -----------------------------------------------------------------------------------


def test_dora_starts_equal_to_its_base():
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(IN, OUT), r=R, alpha=8)
    assert layer.lora_magnitude.shape == (OUT,)
    torch.testing.assert_close(
        layer.lora_magnitude, torch.linalg.vector_norm(layer.base.weight, dim=1), atol=0, rtol=0
    )
    x = x_of(3, 5, IN)
    assert (layer(x) - layer.base(x)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("bias", [True, False])
def test_dora_forward_matches_the_formula(bias):
    layer = dora_layer(bias=bias)
    x = x_of(3, 5, IN)
    out = layer(x)
    torch.testing.assert_close(out, dora_reference(layer, x), atol=1e-5, rtol=0)
    assert (out - layer.base(x)).abs().max() > 0.1  # the adapter changes something


def test_dora_merge_equals_forward_and_unmerge_restores_the_weight():
    layer = dora_layer()
    x = x_of(6, IN)
    w0 = layer.base.weight.detach().clone()
    base_out = layer.base(x).detach()
    dora_out = layer(x).detach()
    with torch.no_grad():
        adapted = w0 + layer.delta_weight()
        expected_w = (layer.lora_magnitude / torch.linalg.vector_norm(adapted, dim=1))[:, None] * adapted
    layer.merge()
    merged_w = layer.base.weight.detach().clone()
    torch.testing.assert_close(merged_w, expected_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), dora_out, atol=1e-5, rtol=0)
    assert (layer(x) - base_out).abs().max() > 0.1
    layer.merge()  # a second merge is a no-op
    assert torch.equal(layer.base.weight, merged_w)
    layer.disabled = True  # disabled while merged: the base output, recovered from the merged weight
    torch.testing.assert_close(layer(x), base_out, atol=1e-5, rtol=0)
    layer.disabled = False
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    layer.unmerge()  # a second unmerge is a no-op
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), dora_out, atol=1e-5, rtol=0)
    layer.disabled = True
    assert torch.equal(layer(x), layer.base(x))


def test_dora_norm_is_a_constant_in_backward_and_only_a_b_m_train():
    layer = dora_layer()
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {
        "lora_A",
        "lora_B",
        "lora_magnitude",
    }
    x = x_of(6, IN)
    target = x_of(6, OUT, seed=3)
    (layer(x) - target).pow(2).sum().backward()
    ours = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    assert layer.base.weight.grad is None and layer.base.bias.grad is None

    def grads(detach_norm: bool) -> dict[str, torch.Tensor]:
        a, b, m = (
            p.detach().clone().requires_grad_() for p in (layer.lora_A, layer.lora_B, layer.lora_magnitude)
        )
        adapted = layer.base.weight + b @ a * layer.scaling
        norm = torch.linalg.vector_norm(adapted, dim=1, keepdim=True)
        weight = m[:, None] * adapted / (norm.detach() if detach_norm else norm)
        (F.linear(x, weight, layer.base.bias) - target).pow(2).sum().backward()
        return {"lora_A": a.grad, "lora_B": b.grad, "lora_magnitude": m.grad}

    detached = grads(detach_norm=True)
    for name, grad in ours.items():
        torch.testing.assert_close(grad, detached[name], atol=1e-5, rtol=1e-5)
    # The detach is what makes the two agree: a gradient through the norm differs.
    assert (grads(detach_norm=False)["lora_B"] - ours["lora_B"]).abs().max() > 1e-3


def test_dora_dropout_is_applied_as_peft_applies_it():
    layer = dora_layer(dropout=0.5)
    x = x_of(8, IN)
    layer.eval()
    torch.testing.assert_close(layer(x), dora_reference(layer, x), atol=1e-5, rtol=0)
    layer.train()
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    xd = F.dropout(x, 0.5, training=True)
    with torch.no_grad():
        adapted = layer.base.weight + layer.delta_weight()
        factor = layer.lora_magnitude / torch.linalg.vector_norm(adapted, dim=1)
    # PEFT: base(x) + (factor - 1) · W drop(x) + factor · ΔW drop(x)
    expected = (
        layer.base(x)
        + (factor - 1) * F.linear(xd, layer.base.weight)
        + factor * F.linear(xd, layer.delta_weight())
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# --- config -> inject -> save -> PEFT ----------------------------------------------------------


def _randomize(model: nn.Module, seed: int = 0) -> None:
    """Every LoRA B, DoRA magnitude and head parameter away from its start, so equivalences test something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
            if layer.use_dora:
                layer.lora_magnitude.mul_(torch.rand(layer.lora_magnitude.shape, generator=gen) + 0.5)
        for name in default_head(model):
            for p in model.get_submodule(name).parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)


VARIANTS = {
    "dora": ({"use_dora": True}, {"use_dora": True}),
    "rslora": ({"rslora": True}, {"use_rslora": True}),
    "gaussian": ({"init": "gaussian"}, {"init_lora_weights": "gaussian"}),
    "patterns": (
        {"rank_pattern": {"query": 6}, "alpha_pattern": {"layer.1.attention.self.value": 3}},
        {"rank_pattern": {"query": 6}, "alpha_pattern": {"layer.1.attention.self.value": 3}},
    ),
    "dora+rslora+patterns": (
        {"use_dora": True, "rslora": True, "rank_pattern": {"value": 2}},
        {"use_dora": True, "use_rslora": True, "rank_pattern": {"value": 2}},
    ),
}


def _layer_settings(model: nn.Module) -> dict[str, tuple]:
    return {n: (m.r, m.scaling, m.use_dora) for n, m in lora_layers(model).items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_ft_adapter_loads_in_peft_and_back_with_the_same_logits(tmp_path, tiny_bert_dir, variant):
    from peft import PeftModel

    ours_kwargs, peft_keys = VARIANTS[variant]
    model = base_model(tiny_bert_dir)
    inject_lora(model, ["query", "value"], r=4, alpha=8, head=default_head(model), **ours_kwargs)
    _randomize(model)
    model.eval()
    save_adapter(model, tmp_path / "a", head=default_head(model), base_model_name_or_path=str(tiny_bert_dir))
    expected = logits_of(model, tiny_bert_dir)
    assert (expected - logits_of(base_model(tiny_bert_dir), tiny_bert_dir)).abs().max() > 1e-2

    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    for key, value in peft_keys.items():
        if key.endswith("_pattern"):  # saved under full module names: check what they select instead
            continue
        assert config[key] == value, key
    peft_model = PeftModel.from_pretrained(base_model(tiny_bert_dir), tmp_path / "a").eval()
    torch.testing.assert_close(logits_of(peft_model, tiny_bert_dir), expected, atol=1e-5, rtol=0)
    loaded = load_artifact(tmp_path / "a").model
    assert _layer_settings(loaded) == _layer_settings(model)
    torch.testing.assert_close(logits_of(loaded, tiny_bert_dir), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_peft_adapter_loads_in_lora_ft_with_the_same_logits(tmp_path, tiny_bert_dir, variant):
    from peft import LoraConfig, TaskType, get_peft_model

    _, peft_kwargs = VARIANTS[variant]
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"], **peft_kwargs
    )
    peft_model = get_peft_model(base_model(tiny_bert_dir), config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "lora_magnitude_vector" in name:
                p.mul_(torch.rand(p.shape, generator=gen) + 0.5)
    peft_model.eval().save_pretrained(tmp_path / "peft")
    expected = logits_of(peft_model, tiny_bert_dir)

    artifact = load_artifact(tmp_path / "peft")
    layers = lora_layers(artifact.model)
    for name, module in peft_model.base_model.model.named_modules():
        if name in layers:
            assert layers[name].r == module.r["default"] and layers[name].scaling == module.scaling["default"]
            assert layers[name].use_dora == bool(peft_kwargs.get("use_dora"))
    torch.testing.assert_close(logits_of(artifact.model, tiny_bert_dir), expected, atol=1e-5, rtol=0)
    assert (expected - logits_of(base_model(tiny_bert_dir), tiny_bert_dir)).abs().max() > 1e-2


def test_dora_adapter_on_disk_matches_peft(tmp_path, tiny_bert_dir):
    from peft import LoraConfig, TaskType, get_peft_model

    model = base_model(tiny_bert_dir)
    inject_lora(model, ["query", "value"], r=4, alpha=8, use_dora=True, head=["classifier"])
    save_adapter(model, tmp_path / "ours", head=["classifier"], base_model_name_or_path=str(tiny_bert_dir))
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"], use_dora=True
    )
    get_peft_model(base_model(tiny_bert_dir), config).save_pretrained(tmp_path / "peft")
    keys = {}
    for name in ("ours", "peft"):
        with safe_open(str(tmp_path / name / WEIGHTS_NAME), "pt") as f:
            keys[name] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert keys["ours"] == keys["peft"]
    magnitudes = {k: v for k, v in keys["ours"].items() if k.endswith(".lora_magnitude_vector")}
    assert len(magnitudes) == 4 and set(magnitudes.values()) == {(32,)}


def test_rank_pattern_saves_as_peft_keys_that_select_each_layer(tmp_path, tiny_bert_dir):
    model = base_model(tiny_bert_dir)
    report = inject_lora(
        model,
        ["query", "value"],
        r=4,
        alpha=8,
        rank_pattern={"query": 16, r"layer\.0\.attention\.self\.value": 2},
        alpha_pattern={"value": 3},
        head=["classifier"],
    )
    ranks = {w.name.split("bert.encoder.")[1]: w.r for w in report.wrapped}
    assert ranks == {
        "layer.0.attention.self.query": 16,
        "layer.0.attention.self.value": 2,
        "layer.1.attention.self.query": 16,
        "layer.1.attention.self.value": 4,
    }
    assert report.lora_params == 2 * 16 * 64 + 2 * 64 + 4 * 64
    layers = lora_layers(model)
    assert layers["bert.encoder.layer.1.attention.self.value"].scaling == pytest.approx(3 / 4)
    assert layers["bert.encoder.layer.0.attention.self.query"].scaling == pytest.approx(8 / 16)
    save_adapter(model, tmp_path / "a", head=["classifier"], base_model_name_or_path=str(tiny_bert_dir))
    adapter = read_adapter(tmp_path / "a")
    assert {m: adapter.rank_of(m) for m in adapter.lora} == {n: layer.r for n, layer in layers.items()}
    assert {m: adapter.alpha_of(m) for m in adapter.lora} == {n: layer.alpha for n, layer in layers.items()}


# --- config, trainability, merge, export ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["lora.use_dora=true"], {"use_dora": True}),
        (["lora.rslora=true"], {"use_rslora": True}),
        (["lora.init=gaussian"], {"init_lora_weights": "gaussian"}),
        (["lora.rank_pattern={query: 6}"], {"ranks": {"query": 6, "value": 2}}),
    ],
)
def test_config_switches_reach_the_saved_adapter(tmp_path, tiny_bert_dir, overrides, keys):
    from lora_ft.training.modeling import build_for_method, load_model

    settings = [f"model.name={tiny_bert_dir}", "lora.r=2", "lora.alpha=4", "lora.targets=[query,value]"]
    cfg = load_config(None, [*settings, *overrides])  # the ranks are of query and value
    loaded = load_model(cfg.model, Task.legacy(["neg", "pos"]))
    build = build_for_method(loaded, cfg)
    trainable = {n.rsplit(".", 1)[-1] for n, p in loaded.model.named_parameters() if p.requires_grad}
    expected = {"lora_A", "lora_B", "weight", "bias"} | ({"lora_magnitude"} if cfg.lora.use_dora else set())
    assert trainable == expected  # LoRA (+ magnitude) and the classifier head, nothing else
    assert all(
        n.startswith("classifier.") or ".lora_" in n
        for n, p in loaded.model.named_parameters()
        if p.requires_grad
    )
    assert build.trainable_params == sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    save_adapter(loaded.model, tmp_path / "a", head=build.head, base_model_name_or_path=str(tiny_bert_dir))
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    for key, value in keys.items():
        if key == "ranks":  # what r and rank_pattern select, module by module, under PEFT's rule
            adapter = read_adapter(tmp_path / "a")
            assert {m: adapter.rank_of(m) for m in adapter.lora} == {
                m: value[m.rsplit(".", 1)[-1]] for m in adapter.lora
            }
        else:
            assert config[key] == value, key


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("lora.rank_pattern={query: 0}", "lora.rank_pattern.query must be an integer >= 1, got 0"),
        ("lora.rank_pattern={query: 2.5}", "lora.rank_pattern.query must be int, got 2.5"),
        ("lora.alpha_pattern={value: -1}", "lora.alpha_pattern.value must be > 0, got -1"),
        ("lora.rank_pattern={'quer(y': 4}", "lora.rank_pattern key 'quer(y' is not a valid regex"),
        ("lora.use_dor=true", "unknown config key 'lora.use_dor'; did you mean 'use_dora'?"),
        ("lora.use_dora=yes", "lora.use_dora must be bool, got 'yes'"),
    ],
)
def test_bad_variant_config_is_a_one_line_error(override, phrase):
    with pytest.raises(LoraFtError) as info:
        load_config(None, [override])
    assert phrase in str(info.value) and "\n" not in str(info.value)


def test_a_pattern_that_matches_no_wrapped_module_is_an_error(tiny_bert_dir):
    model = base_model(tiny_bert_dir)
    with pytest.raises(LoraFtError, match="lora.rank_pattern key 'key' matches none of the wrapped modules"):
        inject_lora(model, ["query", "value"], r=2, alpha=4, rank_pattern={"key": 8})
    assert not lora_layers(model)  # checked before anything was wrapped


def test_dora_model_starts_as_its_base_and_a_step_moves_only_lora_magnitude_and_head(tiny_bert_dir):
    from transformers import AutoTokenizer

    model = base_model(tiny_bert_dir)
    reference = logits_of(model, tiny_bert_dir)
    inject_lora(model, ["query", "value"], r=4, alpha=8, use_dora=True, dropout=0.1, head=["classifier"])
    assert (logits_of(model.eval(), tiny_bert_dir) - reference).abs().max().item() <= 1e-6
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_()  # B = 0 would leave A without a gradient
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = tok(["a gorgeous, moving film", "tedious and flat"], padding=True, return_tensors="pt")
    model.train()
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    moved = {n.rsplit(".", 1)[-1] if ".lora_" in n else n for n in changed}
    assert moved == {"lora_A", "lora_B", "lora_magnitude", "classifier.weight", "classifier.bias"}
    assert with_grad == changed  # every base weight is bit-identical and had no gradient


def test_dora_model_merges_and_unloads_to_a_plain_model_with_the_same_logits(tiny_bert_dir):
    model = base_model(tiny_bert_dir)
    inject_lora(model, ["query", "value"], r=4, alpha=8, use_dora=True, head=["classifier"])
    _randomize(model)
    model.eval()
    expected = logits_of(model, tiny_bert_dir)
    merge_and_unload(model)
    assert not lora_layers(model)
    assert set(model.state_dict()) == set(base_model(tiny_bert_dir).state_dict())
    torch.testing.assert_close(logits_of(model, tiny_bert_dir), expected, atol=1e-5, rtol=0)


def test_dora_adapter_exports_a_verified_merged_checkpoint(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    model = base_model(tiny_bert_dir)
    inject_lora(model, ["query", "value"], r=4, alpha=8, use_dora=True, head=["classifier"])
    _randomize(model)
    model.eval()
    save_adapter(model, tmp_path / "a", head=["classifier"], base_model_name_or_path=str(tiny_bert_dir))
    report = export_merged(tmp_path / "a", tmp_path / "merged")
    assert report.max_abs_logit_diff <= 1e-5 and report.agreement == 1.0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(
        logits_of(merged, tiny_bert_dir), logits_of(model, tiny_bert_dir), atol=1e-5, rtol=0
    )
    provenance = json.loads((tmp_path / "merged" / "lora-ft.json").read_text())
    assert provenance["adapter"]["use_dora"] is True
    assert "the DoRA adapter of" in (tmp_path / "merged" / "README.md").read_text()


def test_magnitude_without_use_dora_is_refused(tmp_path, tiny_bert_dir):
    model = base_model(tiny_bert_dir)
    inject_lora(model, ["query"], r=2, alpha=4, use_dora=True, head=["classifier"])
    save_adapter(model, tmp_path / "a", head=["classifier"], base_model_name_or_path=str(tiny_bert_dir))
    path = tmp_path / "a" / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_dora": False}))
    with pytest.raises(LoraFtError, match="lora_magnitude_vector is DoRA's, and use_dora is not set"):
        read_adapter(tmp_path / "a")


# --- compare ---------------------------------------------------------------------------------


def test_variant_methods_are_lora_runs_with_the_variant_switched_on():
    from lora_ft.compare.results import RunSpec

    cfg = load_config(None, ["lora.targets=[query,value]"])  # lora-all must widen the config's targets
    assert parse_methods("lora,dora,rslora,lora-all,full") == ["lora", "dora", "rslora", "lora-all", "full"]
    with pytest.raises(LoraFtError, match="lora, full, head, dora, rslora, gaussian, lora-all; got 'qlora'"):
        parse_methods("qlora")
    runs = {m: run_config(cfg, RunSpec(m, 1)) for m in ("lora", "dora", "rslora", "lora-all")}
    assert (
        run_config(cfg, RunSpec("gaussian", 1)).lora.init == "gaussian"
        and runs["lora"].lora.init == "kaiming"
    )
    assert {r.train.method for r in runs.values()} == {"lora"}
    assert [runs[m].lora.use_dora for m in runs] == [False, True, False, False]
    assert [runs[m].lora.rslora for m in runs] == [False, False, True, False]
    assert runs["lora-all"].lora.targets == "all-linear" and runs["lora"].lora.targets == ["query", "value"]


def test_compare_lora_and_dora_gives_one_row_per_method(tmp_path, tiny_bert_dir, toy_data_dir):
    out = tmp_path / "cmp"
    result = compare(_cfg(tiny_bert_dir, toy_data_dir), out, methods=["lora", "dora"], runner=in_process([]))
    rows = {row["label"]: row for row in result.rows}
    assert list(rows) == ["lora", "dora"] and all(row["status"] == "ok" for row in rows.values())
    assert rows["dora"]["lora"]["use_dora"] is True and rows["lora"]["lora"]["use_dora"] is False
    assert rows["dora"]["learning_rate"] == rows["lora"]["learning_rate"]
    # DoRA adds one magnitude per output feature of each wrapped Linear: 2 layers x (query, value) x 32.
    assert rows["dora"]["trainable_params"] - rows["lora"]["trainable_params"] == 2 * 2 * 32
    report = (out / "report.md").read_text()
    assert "dora = lora with lora.use_dora=true" in report
    config = json.loads((out / "runs" / "dora-seed42" / "adapter" / CONFIG_NAME).read_text())
    assert config["use_dora"] is True


@pytest.mark.parametrize("use_dora", [False, True])
def test_config_init_std_reaches_every_layer(tiny_bert_dir, use_dora):
    from lora_ft.lora.inject import lora_layers
    from lora_ft.training.modeling import build_for_method, load_model

    cfg = load_config(
        None,
        [
            f"model.name={tiny_bert_dir}",
            "lora.r=2",
            "lora.init=gaussian",
            "lora.init_std=0.01",
            f"lora.use_dora={str(use_dora).lower()}",
        ],
    )
    loaded = load_model(cfg.model, Task.legacy(["neg", "pos"]))
    build_for_method(loaded, cfg)
    layers = lora_layers(loaded.model)
    assert layers and {layer.init_std for layer in layers.values()} == {0.01}
    a = torch.cat([layer.lora_A.flatten() for layer in layers.values()])
    # Far below PEFT's 1/r = 0.5; the sample std of n normals has standard error std / sqrt(2n).
    assert abs(a.std().item() - 0.01) < 5 * 0.01 / (2 * a.numel()) ** 0.5
