"""``lora-ft inspect``: hand-built adapters and full runs whose updates are known exactly, so every
effective rank, norm and overlap below is computed by hand, not by the code under test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import config_from_dict, dump_config
from lora_ft.lora.analysis import Spectrum, analyse, lora_svd
from lora_ft.lora.inject import inject_lora, lora_layers
from lora_ft.lora.io import read_adapter
from lora_ft.lora.saving import save_adapter
from lora_ft.lora.targets import default_head
from lora_ft.outputs import MARKER_NAME

from .conftest import assert_one_line_error

runner = CliRunner()

R, ALPHA = 4, 8.0
SCALING = ALPHA / R
LORA_S = [3.0, 2.0, 1.0]  # rank 3 < r = 4: energy 9/14, 13/14, 1 -> effective rank 2 at 90%, 3 at 99%
FULL_S = [5.0, 4.0, 3.0, 2.0, 1.0]  # energy 25, 41, 50, 54, 55 of 55 -> 3 at 90%, 5 at 99%
MODULES = [f"bert.encoder.layer.{i}.attention.self.{k}" for i in (0, 1) for k in ("query", "value")]


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def _directions(module: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal output (32, 8) and input (32, 8) directions of one module, the same for LoRA and full."""
    seed = MODULES.index(module)
    return _orthonormal(32, 8, 100 + seed), _orthonormal(32, 8, 200 + seed)


def lora_factors(module: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, in), B (out, r) with B·A·scaling = U diag(LORA_S) V^T, hidden behind a random mixing M."""
    u, v = _directions(module)
    k = len(LORA_S)
    core_b = torch.zeros(32, R, dtype=torch.float64)
    core_b[:, :k] = u[:, :k] * torch.tensor(LORA_S, dtype=torch.float64) / SCALING
    core_a = torch.zeros(R, 32, dtype=torch.float64)
    core_a[:k] = v[:, :k].T
    mix = torch.randn(R, R, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 3 * torch.eye(
        R
    )
    return (torch.linalg.inv(mix) @ core_a).float(), (core_b @ mix).float()


def full_delta(module: str) -> torch.Tensor:
    """Full fine-tuning's update: LoRA's top-2 output directions, then 3 directions orthogonal to LoRA's."""
    u, v = _directions(module)
    cols = [0, 1, 3, 4, 5]  # u[:, 2] (LoRA's third direction) is left out: overlap = (1 + 1 + 0) / 3
    return u[:, cols] @ torch.diag(torch.tensor(FULL_S, dtype=torch.float64)) @ v[:, cols].T


def _base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    state = load_file(str(model_dir / "model.safetensors"))
    return {m: state[f"{m}.weight"].to(torch.float64) for m in MODULES}


def _write_config(run: Path, model_dir: Path, method: str) -> None:
    cfg = config_from_dict({"model": {"name": str(model_dir)}, "train": {"method": method}})
    (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert_dir) -> Path:
    from transformers import AutoModelForSequenceClassification

    run = tmp_path_factory.mktemp("runs") / "lora"
    run.mkdir()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    head = default_head(model)
    inject_lora(model, ["query", "value"], r=R, alpha=ALPHA, head=head)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            a, b = lora_factors(name)
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
    settings = {"name": str(tiny_bert_dir), "num_layers": None, "revision": None}
    save_adapter(model, run / "adapter", head=head, base_model_name_or_path=str(tiny_bert_dir),
                 label_names=["negative", "positive"], model_settings=settings)  # fmt: skip
    _write_config(run, tiny_bert_dir, "lora")
    (run / "metrics.json").write_text(json.dumps({"validation": {"accuracy": 0.75}}), encoding="utf-8")
    return run


def _full_like_run(root: Path, name: str, model_dir: Path, method: str, delta=full_delta) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = root / name
    run.mkdir()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for m in MODULES:
            modules[m].weight.add_(delta(m).float())
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run / "model")
    _write_config(run, model_dir, method)
    return run


@pytest.fixture(scope="module")
def full_run(lora_run, tiny_bert_dir) -> Path:
    return _full_like_run(lora_run.parent, "full", tiny_bert_dir, "full")


def test_lora_svd_equals_the_dense_svd_of_b_a():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 40, generator=g), torch.randn(24, 6, generator=g)
    u, s = lora_svd(a, b, 0.5)
    dense = (b.double() @ a.double()) * 0.5
    np.testing.assert_allclose(s, torch.linalg.svdvals(dense).numpy()[:6], rtol=1e-10)
    np.testing.assert_allclose(u.T @ u, np.eye(6), atol=1e-10)
    # U spans ΔW's columns, and ΔWᵀ u_i has length σ_i: the columns are ΔW's left singular vectors
    np.testing.assert_allclose(u @ (u.T @ dense.numpy()), dense.numpy(), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(dense.numpy().T @ u, axis=0), s, rtol=1e-10)


def test_spectrum_effective_rank_and_energy_by_hand():
    s = Spectrum(np.array([3.0, 2.0, 1.0, 0.0]), base_norm=7.0)
    np.testing.assert_allclose(s.energy(), [9 / 14, 13 / 14, 1.0, 1.0])
    assert [s.effective_rank(t) for t in (0.5, 0.9, 0.99, 1.0)] == [1, 2, 3, 3]
    assert s.rel_norm == pytest.approx(math.sqrt(14) / 7)
    zero = Spectrum(np.zeros(4), base_norm=1.0)
    assert zero.effective_rank(0.9) == zero.numerical_rank == 0 and zero.rel_norm == 0


def test_scaling_of_an_adapter_without_our_record_comes_from_its_config():
    from lora_ft.lora.analysis import adapter_scaling
    from lora_ft.lora.io import Adapter

    lora = {"q": (torch.zeros(16, 8), torch.zeros(8, 16))}
    peft = Adapter(Path("peft"), {"r": 16, "lora_alpha": 32}, lora, {})
    assert adapter_scaling(peft, "q") == 2.0
    rslora = Adapter(Path("peft"), {"r": 16, "lora_alpha": 32, "use_rslora": True}, lora, {})
    assert adapter_scaling(rslora, "q") == 8.0
    ours = Adapter(Path("ours"), {"r": 16, "lora_alpha": 32}, lora, {}, scaling={"q": 0.5})
    assert adapter_scaling(ours, "q") == 0.5


def test_analyse_known_rank_norm_and_overlap(lora_run, full_run, tiny_bert_dir):
    adapter = read_adapter(lora_run / "adapter")
    base = _base_weights(tiny_bert_dir)
    full = {m: base[m] + full_delta(m) for m in MODULES}
    updates = analyse(adapter, base, full)
    assert [u.module for u in updates] == MODULES
    for u in updates:
        base_norm = float(torch.linalg.matrix_norm(base[u.module]))
        assert (u.r, u.scaling, u.shape) == (R, SCALING, (32, 32))
        np.testing.assert_allclose(u.lora.singular_values[:3], LORA_S, rtol=1e-5)
        assert u.lora.singular_values[3] < 1e-5
        assert (u.lora.effective_rank(0.9), u.lora.effective_rank(0.99), u.lora.numerical_rank) == (2, 3, 3)
        assert u.lora.rel_norm == pytest.approx(math.sqrt(9 + 4 + 1) / base_norm, rel=1e-5)
        assert (u.full.effective_rank(0.9), u.full.effective_rank(0.99), u.full.numerical_rank) == (3, 5, 5)
        assert u.full.rel_norm == pytest.approx(math.sqrt(55) / base_norm, rel=1e-5)
        assert u.overlap_k == 3 and u.overlap == pytest.approx(2 / 3, abs=1e-5)
        assert u.overlap_random == pytest.approx(3 / 32)
        assert u.captured == pytest.approx((25 + 16) / 55, abs=1e-6)  # full's q1, q2 lie in LoRA's span


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_cli_inspect_run_writes_json_and_pngs(lora_run):
    result = runner.invoke(app, ["inspect", str(lora_run)])
    assert result.exit_code == 0, result.output
    out = lora_run / "inspect"
    doc = json.loads((out / "inspect.json").read_text())
    assert [m["module"] for m in doc["modules"]] == MODULES
    assert doc["against"] is None and doc["validation_accuracy"] == {"lora": 0.75}
    row = doc["modules"][0]
    assert row["lora"]["effective_rank"] == {"90%": 2, "99%": 3} and row["r"] == R
    assert row["lora"]["singular_values"][:3] == pytest.approx(LORA_S, rel=1e-5)
    files = sorted(p.name for p in out.iterdir())
    assert files == [MARKER_NAME, "inspect.json", "lora_energy.png", "lora_spectra.png"]
    assert all(_is_png(p) for p in out.glob("*.png"))
    assert "0.query" in result.stdout and "2/3" in result.stdout

    again = runner.invoke(app, ["inspect", str(lora_run)])
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert runner.invoke(app, ["inspect", str(lora_run), "--force"]).exit_code == 0


def test_cli_inspect_against_full_run(lora_run, full_run, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(
        app, ["inspect", str(lora_run / "adapter"), "--against", str(full_run), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "inspect.json").read_text())
    assert doc["against"] == str(full_run)
    assert [m["module"] for m in doc["modules"]] == MODULES
    for row in doc["modules"]:
        assert row["full"]["effective_rank"] == {"90%": 3, "99%": 5}
        assert row["full"]["energy_at_r"] == pytest.approx(54 / 55)  # top r = 4 of 25, 16, 9, 4, 1
        assert row["full"]["singular_values"][:5] == pytest.approx(FULL_S, rel=1e-4)
        assert row["overlap"] == pytest.approx(2 / 3, abs=1e-4) and row["overlap_k"] == 3
        assert row["captured_by_lora"] == pytest.approx(41 / 55, abs=1e-4)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["energy_vs_full.png", "lora_energy.png", "lora_spectra.png", "rank_summary.png",
                    "spectra_vs_full.png"]  # fmt: skip
    assert all(_is_png(out / p) for p in pngs)
    assert "3/5" in result.stdout and "0.67" in result.stdout and "75%" in result.stdout
    assert not list(tmp_path.glob(".report.*"))  # no temporary directory left behind
    assert out.stat().st_mode & 0o777 == 0o755


def test_bad_inputs_leave_no_out_dir(lora_run, full_run, tiny_bert_dir, tmp_path):
    head_run = _full_like_run(tmp_path, "head", tiny_bert_dir, "head")
    other = tmp_path / "other-base"
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(other)
    other_run = _full_like_run(tmp_path, "other-full", other, "full")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "missing")], "not found"),
        ([str(tmp_path / "empty")], "is not a lora-ft run or adapter directory"),
        ([str(tiny_bert_dir)], "is not a lora-ft run or adapter directory"),
        ([str(full_run)], "is a train.method=full run with no adapter/"),
        ([str(lora_run), "--against", str(lora_run)], "is a train.method=lora run; give a run trained with"),
        ([str(lora_run), "--against", str(head_run)], "is a train.method=head run"),
        ([str(lora_run), "--against", str(tiny_bert_dir)], "is not a run directory (no config.yaml)"),
        ([str(lora_run), "--against", str(other_run)], "compare runs of the same base"),
    ]
    for args, phrase in cases:
        assert_one_line_error(runner.invoke(app, ["inspect", *args, "--out", str(out)]), phrase)
        assert not out.exists()
        assert not list(tmp_path.glob(".out.*"))


def test_module_kinds_stay_distinct_under_all_linear():
    from lora_ft.lora.analysis import ModuleUpdate, _name_kinds

    leaves = ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")
    names = [f"bert.encoder.layer.{i}.{leaf}" for i in (0, 11) for leaf in leaves] + ["bert.pooler.dense"]
    updates = [ModuleUpdate(n, (1, 1), 1, 1.0, Spectrum(np.ones(1), 1.0)) for n in names]
    _name_kinds(updates)
    assert [u.short_name for u in updates] == [
        "0.query", "0.attention.output.dense", "0.intermediate.dense", "0.output.dense",
        "11.query", "11.attention.output.dense", "11.intermediate.dense", "11.output.dense", "pooler.dense",
    ]  # fmt: skip
    assert [u.layer for u in updates] == [0] * 4 + [11] * 4 + [None]
