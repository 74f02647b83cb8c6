"""The public API and what documents it: ``lora_ft.__all__`` equals README "Python API"'s table, every
name imports, every README python block runs, and every script in ``examples/`` runs at a small size
and shows what it says it shows.

The scripts run in this process (``runpy``-style, through their ``main(argv)``), so torch is imported
once for all of them.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import lora_ft

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"


def _section(title: str) -> str:
    return README.read_text(encoding="utf-8").split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_api_table_is_all():
    table = re.findall(r"^\| `lora_ft\.(\w+)` \|", _section("Python API"), flags=re.M)
    assert len(table) == len(set(table))
    assert set(table) == set(lora_ft.__all__)


@pytest.mark.parametrize("name", lora_ft.__all__)
def test_every_public_name_imports_and_has_help(name):
    value = getattr(lora_ft, name)
    if callable(value):  # a class or function: help() has something to say
        assert (value.__doc__ or "").strip(), f"lora_ft.{name} has no docstring"


README_BLOCKS = re.findall(r"```python\n(.*?)```", _section("Python API"), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(README_BLOCKS) >= 4


@pytest.mark.parametrize("block", README_BLOCKS, ids=[f"block{i}" for i in range(len(README_BLOCKS))])
def test_readme_python_blocks_run(block, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the blocks name files relative to the repository, as a reader runs them
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    if "4,194,304" in block:
        assert "4,194,304" in out


def test_readme_examples_table_lists_every_script():
    listed = set(re.findall(r"^\| `(\w+\.py)` \|", _section("Examples"), flags=re.M))
    assert listed == {p.name for p in EXAMPLES.glob("*.py")}


def test_known_rank_knee_is_at_the_true_rank(tmp_path):
    result = _example("known_rank").main(["--fast", "--out", str(tmp_path / "plot.png")])
    k, losses = result["k"], result["losses"]
    assert result["knee"] == k
    assert losses[k - 1] > 10 * (losses[k] + 1e-3)  # one rank short of k misses a whole direction
    assert result["effective_rank"] == (k, k)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scratch_transformer_trains_lora_only_and_merges_exactly():
    result = _example("scratch_transformer").main(["--fast"])
    assert result["frozen_untouched"] and result["plain_after_merge"]
    assert result["moved"] > 1e-2  # training changed the outputs, so the merge check is not vacuous
    assert result["max_diff"] < 1e-5


def test_merge_unmerge_round_trips():
    result = _example("merge_unmerge").main(["--fast"])
    assert result["adapted_vs_base"] > 1e-2
    assert result["merged_vs_unmerged"] < 1e-5 and result["unloaded_vs_adapted"] < 1e-5
    assert result["unmerged_weight"] < 1e-6 and result["disabled_vs_base"] < 1e-6
    assert result["same_keys"]


def test_two_adapters_switch_on_one_base():
    result = _example("two_adapters").main(["--fast"])
    # r=8 on query and value of 2 layers of width 32, plus the 32 -> 2 classifier, in float32
    assert result["bytes"] == {"sentiment": 4 * (4 * 8 * 64 + 66), "long": 4 * (4 * 8 * 64 + 66)}
    assert result["disabled_vs_base"] == 0.0
    assert result["between"] > 1e-2
    scores = result["scores"]
    assert scores["long"]["long"] > scores["sentiment"]["long"] + 0.2


def test_savings_table_counts():
    result = _example("savings_table").main(["--ranks", "8,64"])
    assert result["7b"][8] == 32 * 2 * 8 * (4096 + 4096) == 4_194_304
    assert result["13b"][8] == 40 * 2 * 8 * (5120 + 5120)
    # 70B's grouped-query attention: v_proj maps 8192 to 8 key/value heads of 128
    assert result["70b"][8] == 80 * 8 * ((8192 + 8192) + (8192 + 1024))
    assert result["70b"][64] == 8 * result["70b"][8]


def test_examples_use_only_the_public_api():
    for path in EXAMPLES.glob("*.py"):
        used = set(re.findall(r"^\s*(?:from|import) (lora_ft[\w.]*)", path.read_text(), flags=re.M))
        assert used <= {"lora_ft", "lora_ft.data"}, (path.name, used)
        attrs = set(re.findall(r"\blora_ft\.(\w+)", path.read_text()))
        assert attrs <= set(lora_ft.__all__) | {"data"}, (path.name, attrs - set(lora_ft.__all__))
