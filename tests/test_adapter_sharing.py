"""Adapters that travel: the model card and tokenizer beside the weights, a card snippet that runs with
PEFT offline and names the labels, a layer cut recorded and enforced, and files teammates can read."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lora_ft.errors import LoraFtError
from lora_ft.lora.apply import apply_adapter
from lora_ft.lora.card import ADAPTER_PLACEHOLDER
from lora_ft.lora.inject import inject_lora, lora_layers
from lora_ft.lora.io import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from lora_ft.lora.saving import save_adapter
from lora_ft.lora.targets import default_head
from lora_ft.serving.artifacts import load_artifact

from .test_adapter_io import base_model, logits_of, make_adapter

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = "org/tiny-bert"  # as recorded; the snippet is pointed at the local copy, as the card says
METRICS = {"data": "toy", "validation": {"accuracy": 0.8125, "f1": 0.7, "loss": 0.51}}


def card_snippet(adapter: Path, base: Path) -> str:
    """The card's PEFT snippet, pointed at a local base (the card's offline advice) and at ``adapter``."""
    card = (adapter / "README.md").read_text()
    code = re.search(r"## Use it with PEFT\n\n```python\n(.*?)```", card, re.S).group(1)
    code = re.sub(r'^base = ".*"', f"base = {str(base)!r}", code, count=1, flags=re.M)
    return code.replace(ADAPTER_PLACEHOLDER, str(adapter))


def run_snippet(code: str, capsys) -> tuple[dict, str]:
    namespace: dict = {}
    exec(compile(code, "card-snippet", "exec"), namespace)
    return namespace, capsys.readouterr().out.strip()


def cut_adapter(base_dir: Path, out: Path, layers: int = 1):
    """A LoRA adapter trained (non-zero lora_B) on ``base_dir`` cut to its first ``layers`` layers."""
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_hidden_layers=layers).eval()
    inject_lora(model, ["query", "value"], r=2, alpha=4, head=default_head(model))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
    model.eval()
    settings = {"name": str(base_dir), "num_layers": layers, "revision": None}
    save_adapter(
        model,
        out,
        head=default_head(model),
        base_model_name_or_path=HUB_ID,
        label_names=["neg", "pos"],
        model_settings=settings,
    )
    return model


def test_adapter_dir_has_a_card_the_tokenizer_and_a_snippet_giving_named_labels(
    tmp_path, tiny_bert_dir, capsys
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    ours = make_adapter(
        tiny_bert_dir,
        tmp_path / "a",
        base_model_name_or_path=HUB_ID,
        tokenizer=tokenizer,
        metrics=METRICS,
        local_base=str(tiny_bert_dir),
    )
    card = ModelCard.load(tmp_path / "a" / "README.md")
    assert card.data.base_model == HUB_ID and card.data.library_name == "peft"
    assert "0 = neg, 1 = pos" in card.text and "| validation | 0.8125 | 0.7000 | 0.5100 |" in card.text
    assert f"`{tiny_bert_dir}`" in card.text, "the offline advice names the local base"
    assert AutoTokenizer.from_pretrained(tmp_path / "a")("ok")["input_ids"] == tokenizer("ok")["input_ids"]

    namespace, printed = run_snippet(card_snippet(tmp_path / "a", tiny_bert_dir), capsys)
    assert namespace["model"].config.id2label == {0: "neg", 1: "pos"}
    expected = logits_of(ours, tiny_bert_dir)[:1]  # SENTENCES[0] is the snippet's sentence
    torch.testing.assert_close(namespace["logits"], expected, atol=1e-5, rtol=0)
    assert printed == ["neg", "pos"][int(expected.argmax())]
    assert read_adapter(tmp_path / "a").label_names == ["neg", "pos"], "our own reader still reads it"


def test_cut_adapter_records_its_cut_and_is_refused_on_an_uncut_base(tmp_path, tiny_bert_dir, capsys):
    ours = cut_adapter(tiny_bert_dir, tmp_path / "cut")
    config = json.loads((tmp_path / "cut" / CONFIG_NAME).read_text())
    assert config["lora_ft_num_layers"] == 1
    assert "the first 1 layers of `org/tiny-bert`" in (tmp_path / "cut" / "README.md").read_text()

    # Without our header's records too: adapter_config.json alone says it.
    adapter = read_adapter(tmp_path / "cut")
    adapter.model_settings = None
    full = base_model(tiny_bert_dir)
    with pytest.raises(
        LoraFtError, match="cut to 1 layers, but base org/tiny-bert has 2; load the base with num_layers=1"
    ):
        apply_adapter(full, adapter)
    assert not lora_layers(full), "a refused adapter touches nothing"

    # lora-ft rebuilds the cut itself, and the card's snippet cuts the base the same way in PEFT
    # (which reads the adapter_config.json, ignoring our key with a warning that names it).
    expected = logits_of(ours, tiny_bert_dir)
    artifact = load_artifact(tmp_path / "cut", base=str(tiny_bert_dir))
    assert artifact.model.config.num_hidden_layers == 1
    torch.testing.assert_close(logits_of(artifact.model, tiny_bert_dir), expected, atol=1e-5, rtol=0)
    namespace, _ = run_snippet(card_snippet(tmp_path / "cut", tiny_bert_dir), capsys)
    torch.testing.assert_close(namespace["logits"], expected[:1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cut", [0, 1.5, "1", True, float("nan"), float("inf")])
def test_a_bad_recorded_cut_is_a_one_line_error(tmp_path, tiny_bert_dir, cut):
    cut_adapter(tiny_bert_dir, tmp_path / "cut")
    path = tmp_path / "cut" / CONFIG_NAME
    config = json.loads(path.read_text())
    config["lora_ft_num_layers"] = cut
    path.write_text(json.dumps(config))  # NaN and Infinity as JSON's extension writes them
    with pytest.raises(LoraFtError, match="lora_ft_num_layers must be an integer >= 1") as err:
        read_adapter(tmp_path / "cut")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_adapter_weights_get_the_mode_open_gives(tmp_path, tiny_bert_dir, umask):
    old = os.umask(umask)
    try:
        make_adapter(tiny_bert_dir, tmp_path / "a")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    want = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert want == 0o666 & ~umask
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "a").iterdir()}
    assert modes[WEIGHTS_NAME] == want and set(modes.values()) == {want}, modes


def test_readme_peft_snippet_runs_offline_against_the_cached_base(tmp_path, minilm_dir, capsys, monkeypatch):
    from lora_ft.config import ModelConfig
    from lora_ft.data.task import Task
    from lora_ft.training.modeling import load_model

    loaded = load_model(ModelConfig(name="minilm-l6"), Task.legacy(["negative", "positive"]))
    inject_lora(loaded.model, ["query", "value"], r=2, alpha=4, head=["classifier"])
    with torch.no_grad():
        for layer in lora_layers(loaded.model).values():
            layer.lora_B.normal_(generator=torch.Generator().manual_seed(0))
    save_adapter(
        loaded.model.eval(),
        tmp_path / "runs" / "demo" / "adapter",
        head=["classifier"],
        base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2",
        label_names=["negative", "positive"],
        tokenizer=loaded.tokenizer,
    )
    section = README.read_text().split("### Adapter sharing", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'os.path.expanduser("~/.cache/lora-ft/models/minilm-l6")' in code
    code = code.replace('os.path.expanduser("~/.cache/lora-ft/models/minilm-l6")', repr(str(minilm_dir)))
    monkeypatch.chdir(tmp_path)  # the snippet names the adapter as runs/demo/adapter
    namespace, printed = run_snippet(code, capsys)
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    with torch.no_grad():
        expected = loaded.model(**tok(["a gorgeous, moving film"], return_tensors="pt")).logits
    torch.testing.assert_close(namespace["logits"], expected, atol=1e-5, rtol=0)
    assert printed == ["negative", "positive"][int(expected.argmax())]
