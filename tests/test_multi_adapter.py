"""Several adapters on one base (AdapterSet): each adapter gives exactly its own logits, switching is
stable and copies no base weight, disabling gives the base model back, merging is refused; the CLI's
``--adapter NAME=DIR`` serves them all and matches single-adapter predict/eval."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import DataConfig, ModelConfig, RunConfig, dump_config
from lora_ft.errors import LoraFtError
from lora_ft.lora import LoRALinear
from lora_ft.lora.adapters import AdapterSet
from lora_ft.lora.inject import inject_lora, lora_layers, merge_and_unload, merge_lora
from lora_ft.lora.io import read_adapter
from lora_ft.lora.saving import save_adapter
from lora_ft.serving.artifacts import load_artifact
from lora_ft.serving.multi import load_adapter_set, parse_adapter_specs

from .conftest import toy_rows, write_split
from .test_adapter_io import SENTENCES, base_model, logits_of, make_adapter
from .test_export import assert_one_line_error

runner = CliRunner()


def _adapter(
    model_dir: Path, out: Path, *, targets, r, seed, head=("classifier",), labels=("neg", "pos"), **kw
):
    """A saved adapter with non-zero lora_B and a perturbed head, so it changes the logits."""
    model = base_model(model_dir)
    inject_lora(model, targets, r=r, alpha=2.0 * r, head=list(head), **kw)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
        for name in head:
            for p in model.get_submodule(name).parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    save_adapter(
        model, out, head=list(head), base_model_name_or_path=str(model_dir), label_names=list(labels)
    )
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """Three adapters of different ranks and targets: a (query, value; r=2), b (key and the FFN's
    first Linear; r=4), c (layer 0's query only; r=1, rsLoRA)."""
    d = tmp_path_factory.mktemp("multi")
    make_adapter(tiny_bert_dir, d / "a", seed=0)
    _adapter(tiny_bert_dir, d / "b", targets=["key", "intermediate.dense"], r=4, seed=1)
    _adapter(
        tiny_bert_dir,
        d / "c",
        targets=["bert.encoder.layer.0.attention.self.query"],
        r=1,
        seed=2,
        rslora=True,
    )
    return {name: d / name for name in ("a", "b", "c")}


@pytest.fixture(scope="module")
def single(adapters, tiny_bert_dir) -> dict[str, torch.Tensor]:
    """Each adapter's logits when it is loaded alone (the reference)."""
    return {name: logits_of(load_artifact(path).model, tiny_bert_dir) for name, path in adapters.items()}


@pytest.fixture()
def aset(adapters, tiny_bert_dir) -> AdapterSet:
    return load_adapter_set(str(tiny_bert_dir), {n: str(p) for n, p in adapters.items()})


def _base_params(model_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in base_model(model_dir).state_dict().items()}


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain model's state dict from a wrapped one: ``<name>.base.weight`` -> ``<name>.weight``."""
    return {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


def test_each_adapter_gives_its_own_logits(aset, single, tiny_bert_dir):
    assert aset.adapters == ["a", "b", "c"] and aset.active == "a"
    for name in ("c", "a", "b"):
        aset.set_adapter(name)
        assert aset.active == name
        torch.testing.assert_close(logits_of(aset.model, tiny_bert_dir), single[name], atol=1e-6, rtol=0)
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        assert (single[x] - single[y]).abs().max() > 1e-2, f"adapters {x} and {y} give the same logits"
    base = logits_of(base_model(tiny_bert_dir), tiny_bert_dir)
    assert min((single[n] - base).abs().max() for n in single) > 1e-2, "an adapter changes nothing"


def test_switching_back_and_forth_is_stable_and_leaves_the_base_bit_identical(aset, tiny_bert_dir):
    batch = AutoTokenizer.from_pretrained(tiny_bert_dir)(SENTENCES, padding=True, return_tensors="pt")
    first = {}
    with torch.no_grad():
        for name in aset.adapters:
            aset.set_adapter(name)
            first[name] = aset.model(**batch).logits
        for name in ["a", "c", "a", "b", "b", "c", "a", "b", "c", "a"] * 3:
            aset.set_adapter(name)
            assert torch.equal(aset.model(**batch).logits, first[name]), name
    aset.disable()
    expected = _base_params(tiny_bert_dir)
    got = aset.model.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_different_ranks_and_targets_coexist(aset):
    prefix = "bert.encoder.layer"
    aset.set_adapter("b")
    layers = lora_layers(aset.model)
    assert {layer.r for layer in layers.values()} == {4}
    assert set(layers) == {
        f"{prefix}.{i}.{m}" for i in (0, 1) for m in ("attention.self.key", "intermediate.dense")
    }
    assert isinstance(aset.model.get_submodule(f"{prefix}.0.attention.self.query"), nn.Linear)
    aset.set_adapter("c")
    (only,) = lora_layers(aset.model).items()
    assert only[0] == f"{prefix}.0.attention.self.query" and only[1].r == 1 and only[1].rslora
    assert not isinstance(aset.model.get_submodule(f"{prefix}.0.attention.self.key"), LoRALinear)
    assert not isinstance(aset.model.get_submodule(f"{prefix}.1.attention.self.query"), LoRALinear)


def test_disable_gives_the_base_model_exactly(aset, adapters, tiny_bert_dir):
    base = base_model(tiny_bert_dir)
    aset.set_adapter("b")
    aset.disable()
    assert aset.active is None and not lora_layers(aset.model)
    assert set(aset.model.state_dict()) == set(base.state_dict())
    assert torch.equal(logits_of(aset.model, tiny_bert_dir), logits_of(base, tiny_bert_dir))

    # disable(head=...): the plain encoder under that adapter's head.
    aset.disable(head="b")
    head = read_adapter(adapters["b"]).head["classifier"]
    base.classifier.load_state_dict(head)
    assert torch.equal(logits_of(aset.model, tiny_bert_dir), logits_of(base, tiny_bert_dir))
    aset.set_adapter("a")
    assert aset.active == "a"


def test_base_weights_are_shared_never_copied(aset, tiny_bert_dir):
    aset.disable()
    base_ptrs = {k: v.data_ptr() for k, v in aset.model.state_dict().items()}
    seen_ptrs = {}
    for name in ["a", "b", "c", "a"]:
        aset.set_adapter(name)
        for key, tensor in _plain_state(aset.model).items():
            if not key.startswith("classifier."):
                assert tensor.data_ptr() == base_ptrs[key], f"{key} was copied for adapter {name}"
        seen_ptrs[name] = {t.data_ptr() for t in aset.model.classifier.parameters()}
        # Each wrapper wraps the very Linear object the base holds when disabled.
        for layer_name, layer in lora_layers(aset.model).items():
            assert layer.base.weight.data_ptr() == base_ptrs[f"{layer_name}.weight"]
    assert seen_ptrs["a"].isdisjoint(seen_ptrs["b"]), "adapters a and b share a head"
    aset.disable()
    assert {k: v.data_ptr() for k, v in aset.model.state_dict().items()} == base_ptrs

    # An adapter costs its own tensors: A (r, in) and B (out, r) per module, plus its head (2 x 32 + 2).
    head = 2 * 32 + 2
    expected = {
        "a": 4 * 2 * (32 + 32) + head,
        "b": 2 * 4 * (32 + 32) + 2 * 4 * (32 + 64) + head,
        "c": 1 * 64 + head,
    }
    assert {n: aset.adapter_bytes(n) for n in aset.adapters} == {n: 4 * v for n, v in expected.items()}
    # Everything the set holds: the base once, and each adapter's own tensors.
    every = {}
    for entry in aset._entries.values():
        for module in entry.modules.values():
            every.update({p.data_ptr(): p for p in module.parameters()})
    every.update({p.data_ptr(): p for p in aset.model.parameters()})
    total = sum(p.numel() * p.element_size() for p in every.values())
    base_bytes = sum(p.numel() * p.element_size() for p in base_model(tiny_bert_dir).parameters())
    assert total == base_bytes + sum(aset.adapter_bytes(n) for n in aset.adapters)
    # The adapter record holds views of the served tensors, not a second copy of them.
    record = aset.adapter("b")
    aset.set_adapter("b")
    for module, (a, b) in record.lora.items():
        layer = aset.model.get_submodule(module)
        assert (a.data_ptr(), b.data_ptr()) == (layer.lora_A.data_ptr(), layer.lora_B.data_ptr())
    assert record.head["classifier"]["weight"].data_ptr() == aset.model.classifier.weight.data_ptr()


def test_merging_a_shared_base_is_refused(aset, tiny_bert_dir):
    before = _base_params(tiny_bert_dir)
    aset.set_adapter("a")
    for merge in (merge_lora, merge_and_unload):
        with pytest.raises(LoraFtError, match="shares its base weights with the other adapters"):
            merge(aset.model)
    aset.disable()
    assert all(torch.equal(aset.model.state_dict()[k], before[k]) for k in before)


def test_library_bad_inputs(aset, adapters, tmp_path, tiny_bert_dir, tiny_distilbert_dir):
    with pytest.raises(LoraFtError, match="no adapter named 'zz'; adapters: a, b, c"):
        aset.set_adapter("zz")
    with pytest.raises(LoraFtError, match="an adapter named 'a' is already loaded"):
        aset.add_adapter("a", adapters["b"])
    with pytest.raises(LoraFtError, match="adapter name 'a b' must be"):
        aset.add_adapter("a b", adapters["b"])
    make_adapter(tiny_distilbert_dir, tmp_path / "distil")
    with pytest.raises(LoraFtError, match="adapter 'd' does not fit base .*was made for another base model"):
        aset.add_adapter("d", tmp_path / "distil")
    _adapter(tiny_bert_dir, tmp_path / "three", targets=["query"], r=2, seed=3, labels=("x", "y", "z"))
    with pytest.raises(LoraFtError, match="has 3 labels but the base's head has 2"):
        aset.add_adapter("three", tmp_path / "three")
    make_adapter(
        tiny_bert_dir, tmp_path / "cut", model_settings={"name": str(tiny_bert_dir), "num_layers": 1}
    )
    with pytest.raises(
        LoraFtError, match="cut to 1 layers, but base .* has 2; load the base with num_layers=1"
    ):
        aset.add_adapter("cut", tmp_path / "cut")
    # A failed add leaves the set as it was.
    assert aset.adapters == ["a", "b", "c"] and aset.active == "a"
    assert set(lora_layers(aset.model)) == set(lora_layers(load_artifact(adapters["a"]).model))


def test_an_untrained_base_head_must_be_in_every_adapter(tmp_path, tiny_bert_dir, caplog):
    model = base_model(tiny_bert_dir)
    aset = AdapterSet(model, base_name="tiny", untrained=["classifier"])
    model_b = base_model(tiny_bert_dir)
    inject_lora(model_b, ["query"], r=2, alpha=4)
    save_adapter(model_b, tmp_path / "headless", head=[], base_model_name_or_path="tiny")
    with pytest.raises(
        LoraFtError, match="does not hold classifier, which base tiny leaves randomly initialised"
    ):
        aset.add_adapter("x", tmp_path / "headless")
    make_adapter(tiny_bert_dir, tmp_path / "ok")
    aset.add_adapter("ok", tmp_path / "ok")
    with caplog.at_level(logging.WARNING, logger="lora_ft"):
        aset.disable()
    assert "no trained head (classifier is randomly initialised)" in caplog.text


def test_different_label_names_warn_and_each_adapter_keeps_its_own(tmp_path, adapters, tiny_bert_dir, caplog):
    make_adapter(tiny_bert_dir, tmp_path / "named", seed=5, label_names=("negative", "positive"))
    with caplog.at_level(logging.WARNING, logger="lora_ft"):
        aset = load_adapter_set(str(tiny_bert_dir), {"a": adapters["a"], "named": tmp_path / "named"})
    assert "adapter named has labels negative, positive, adapter a has neg, pos" in caplog.text
    assert aset.label_names("a") == ["neg", "pos"] and aset.label_names("named") == ["negative", "positive"]


def test_a_dora_adapter_beside_plain_ones(tmp_path, adapters, tiny_bert_dir, single):
    """The set wraps whatever apply_adapter builds: DoRA's magnitude travels with its own wrappers."""
    _adapter(tiny_bert_dir, tmp_path / "dora", targets=["query", "value"], r=2, seed=4, use_dora=True)
    alone = logits_of(load_artifact(tmp_path / "dora").model, tiny_bert_dir)
    aset = load_adapter_set(str(tiny_bert_dir), {"a": adapters["a"], "dora": tmp_path / "dora"})
    for name, expected in (("dora", alone), ("a", single["a"]), ("dora", alone)):
        aset.set_adapter(name)
        torch.testing.assert_close(logits_of(aset.model, tiny_bert_dir), expected, atol=1e-6, rtol=0)
    assert (alone - single["a"]).abs().max() > 1e-2
    # The magnitude (one float per output feature, 4 modules of 32) is the only extra over plain LoRA.
    assert aset.adapter_bytes("dora") - aset.adapter_bytes("a") == 4 * 32 * 4


@pytest.mark.parametrize(
    ("specs", "phrase"),
    [
        (["a"], "--adapter 'a': expected NAME=DIR"),
        (["=dir"], "expected NAME=DIR"),
        (["a=x", "a=y"], "the name 'a' is given twice"),
        (["a b=x"], "the name 'a b' must be letters"),
    ],
)
def test_parse_adapter_specs_bad(specs, phrase):
    with pytest.raises(LoraFtError, match=phrase):
        parse_adapter_specs(specs)


def test_parse_adapter_specs_keeps_order_and_later_equals_signs():
    assert parse_adapter_specs(["z=runs/x", "a=dir=with=eq"]) == {"z": "runs/x", "a": "dir=with=eq"}


# --- CLI -----------------------------------------------------------------------------------------


def _flags(adapters: dict[str, Path], names=("a", "b", "c")) -> list[str]:
    return [arg for n in names for arg in ("--adapter", f"{n}={adapters[n]}")]


def _single(path: Path, *args: str) -> str:
    result = runner.invoke(app, ["predict", str(path), *SENTENCES, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_cli_use_matches_single_adapter_predict(adapters, tiny_bert_dir):
    for name in ("b", "c"):
        for extra in ([], ["--json"]):
            result = runner.invoke(
                app, ["predict", str(tiny_bert_dir), *_flags(adapters), "--use", name, *SENTENCES, *extra]
            )
            assert result.exit_code == 0, result.output
            assert result.stdout == _single(adapters[name], *extra)


def test_cli_every_adapter_in_columns_and_json(adapters, tiny_bert_dir):
    result = runner.invoke(app, ["predict", str(tiny_bert_dir), *_flags(adapters), *SENTENCES])
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split("\t") == [
        "a.label",
        "a.probability",
        "b.label",
        "b.probability",
        "c.label",
        "c.probability",
        "sentence",
    ]
    singles = {n: [line.split("\t") for line in _single(adapters[n]).splitlines()] for n in "abc"}
    assert len(rows) == len(SENTENCES)
    for i, row in enumerate(rows):
        cells = row.split("\t")
        assert cells[-1] == SENTENCES[i]
        for j, n in enumerate("abc"):
            assert cells[2 * j : 2 * j + 2] == singles[n][i][:2], (n, i)

    result = runner.invoke(app, ["predict", str(tiny_bert_dir), *_flags(adapters), *SENTENCES, "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    singles = {n: [json.loads(line) for line in _single(adapters[n], "--json").splitlines()] for n in "abc"}
    for i, line in enumerate(lines):
        assert line["text"] == SENTENCES[i] and list(line["adapters"]) == ["a", "b", "c"]
        for n in "abc":
            expected = dict(singles[n][i])
            del expected["text"]
            assert line["adapters"][n] == expected
    labels = {lines[i]["adapters"][n]["label"] for i in range(len(SENTENCES)) for n in "abc"}
    assert labels == {"neg", "pos"}, "every prediction is the same label: the comparison checks little"


def test_cli_eval_every_adapter_matches_single_eval(tmp_path, adapters, tiny_bert_dir):
    d = tmp_path / "data"
    d.mkdir()
    rows = toy_rows(16)
    for split in ("train", "validation", "test"):
        write_split(d / f"{split}.csv", rows)
    args = ["--data", str(d), "--json", "--device", "cpu"]
    result = runner.invoke(app, ["eval", str(tiny_bert_dir), *_flags(adapters), *args])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert list(got) == ["a", "b", "c"]
    for n in "abc":
        single = runner.invoke(app, ["eval", str(adapters[n]), *args])
        assert single.exit_code == 0, single.output
        assert got[n] == json.loads(single.stdout)
    assert len({got[n]["loss"] for n in "abc"}) == 3
    one = runner.invoke(app, ["eval", str(tiny_bert_dir), *_flags(adapters), "--use", "b", *args])
    assert one.exit_code == 0 and json.loads(one.stdout) == got["b"]
    table = runner.invoke(app, ["eval", str(tiny_bert_dir), *_flags(adapters), "--data", str(d)])
    assert table.exit_code == 0, table.output
    for n in "abc":
        assert any(line.split("│")[1].strip() == n for line in table.stdout.splitlines() if "│" in line)


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--adapter", "a"], "--adapter 'a': expected NAME=DIR"),
        (["--adapter", "a={a}", "--adapter", "a={b}"], "the name 'a' is given twice"),
        (["--adapter", "a={a}", "--use", "zz"], "--use zz: no adapter of that name; give one of: a"),
        (["--use", "a"], "--use picks one of the --adapter NAME=DIR adapters"),
        (["--adapter", "a={a}", "--adapter", "d={distil}"], "adapter 'd' does not fit base"),
        (["--adapter", "a={a}", "--base", "x"], "--base applies to a single adapter"),
        (["--adapter", "a={missing}"], "--adapter a={missing}: not found"),
        (["--adapter", "a={data}"], "is not an adapter directory (adapter_config.json is missing)"),
    ],
)
def test_cli_bad_inputs(tmp_path, adapters, tiny_bert_dir, tiny_distilbert_dir, args, phrase):
    distil = tmp_path / "distil"
    make_adapter(tiny_distilbert_dir, distil)
    (tmp_path / "data").mkdir()
    paths = {
        "a": adapters["a"],
        "b": adapters["b"],
        "distil": distil,
        "missing": tmp_path / "nope",
        "data": tmp_path / "data",
    }
    args = [a.format(**paths) for a in args]
    phrase = phrase.format(**paths)
    for command in ("predict", "eval"):
        extra = ["x"] if command == "predict" else []
        assert_one_line_error(runner.invoke(app, [command, str(tiny_bert_dir), *args, *extra]), phrase)


def test_cli_base_that_is_an_adapter_directory(adapters):
    result = runner.invoke(app, ["predict", str(adapters["a"]), "--adapter", f"b={adapters['b']}", "x"])
    assert_one_line_error(result, "with --adapter the first argument is the base model")


def _run_of(adapter: Path, out: Path, model_dir: Path, **data) -> Path:
    """A run directory around a copy of ``adapter``, whose config.yaml records ``data``."""
    out.mkdir()
    shutil.copytree(adapter, out / "adapter")
    cfg = RunConfig(model=ModelConfig(name=str(model_dir)), data=DataConfig(**data))
    (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    return out


def _toy_dir(root: Path) -> Path:
    d = root / "data"
    d.mkdir()
    for split, offset in (("train", 0), ("validation", 100), ("test", 200)):
        write_split(d / f"{split}.csv", toy_rows(16, offset))
    return d


def test_cli_eval_runs_that_differ_only_in_what_leaves_the_split_alone(tmp_path, adapters, tiny_bert_dir):
    d = _toy_dir(tmp_path)
    r4 = _run_of(adapters["a"], tmp_path / "r4", tiny_bert_dir, name=str(d), max_train_samples=4)
    r8 = _run_of(
        adapters["b"], tmp_path / "r8", tiny_bert_dir, name=str(d), max_train_samples=8, max_length=64
    )
    flags = ["--adapter", f"r4={r4}", "--adapter", f"r8={r8}", "--json", "--device", "cpu"]
    result = runner.invoke(app, ["eval", str(tiny_bert_dir), *flags])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert [got[n]["samples"] for n in ("r4", "r8")] == [16, 16]
    assert got["r4"]["split"] == "test" and got["r4"]["loss"] != got["r8"]["loss"]
    with_data = runner.invoke(app, ["eval", str(tiny_bert_dir), *flags, "--data", str(d)])
    assert with_data.exit_code == 0, with_data.output
    assert json.loads(with_data.stdout) == got
    # The train split is what max_train_samples changes: there the runs do differ.
    train = runner.invoke(app, ["eval", str(tiny_bert_dir), *flags, "--split", "train"])
    assert_one_line_error(train, "(data.max_train_samples: 4 for r4, 8 for r8); pass --data to evaluate them")


def test_cli_eval_runs_on_different_eval_sets_name_the_setting_and_data_settles_it(
    tmp_path, adapters, tiny_bert_dir
):
    d = _toy_dir(tmp_path)
    r4 = _run_of(adapters["a"], tmp_path / "r4", tiny_bert_dir, name=str(d), max_eval_samples=5)
    r8 = _run_of(adapters["b"], tmp_path / "r8", tiny_bert_dir, name=str(d))
    flags = ["--adapter", f"r4={r4}", "--adapter", f"r8={r8}", "--json", "--device", "cpu"]
    result = runner.invoke(app, ["eval", str(tiny_bert_dir), *flags])
    assert_one_line_error(
        result, "the adapters were trained on different data (data.max_eval_samples: 5 for r4, null for r8)"
    )
    result = runner.invoke(app, ["eval", str(tiny_bert_dir), *flags, "--data", str(d)])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert [got[n]["samples"] for n in ("r4", "r8")] == [16, 16]  # --data's own settings: no cap
    single = runner.invoke(app, ["eval", str(r4), "--json", "--device", "cpu"])
    assert single.exit_code == 0 and json.loads(single.stdout)["samples"] == 5
