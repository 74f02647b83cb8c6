"""The shipped configs: ``lora-ft configs`` (list, show, cp), a config named by name or by the README's
``configs/NAME.yaml`` path from any directory, and ``lora-ft train --print-config``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import RunConfig, config_from_dict, dump_config, load_config
from lora_ft.errors import LoraFtError

from .conftest import assert_one_line_error

SHIPPED = Path(__file__).resolve().parents[1] / "lora_ft" / "configs"
NAMES = [
    "compare",
    "compare-sst2-distilbert",
    "default",
    *(f"glue-{t}" for t in ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")),
    "smoke",
    "smollm2-lora",
    "sst2-distilbert",
]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch) -> Path:
    """An empty current directory: no configs/ folder, as after a pip install."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_configs_lists_each_shipped_config_with_its_first_comment_line():
    result = invoke("configs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    for name, line in zip(NAMES, lines, strict=True):
        first = (SHIPPED / f"{name}.yaml").read_text().splitlines()[0]
        assert line.split(None, 1)[1] == first.removeprefix("# "), line
    smoke = lines[NAMES.index("smoke")]
    assert smoke.startswith(f"{'smoke':<23}  Tiny and fast (seconds): the built-in model cut to 2 layers")


def test_configs_help_names_its_subcommands_with_examples():
    result = invoke("configs", "--help")
    assert result.exit_code == 0, result.output
    assert "Examples" in result.stdout and "show" in result.stdout and "cp" in result.stdout
    assert "configs" in invoke("--help").stdout


def test_configs_show_prints_the_file_as_shipped():
    result = invoke("configs", "show", "smoke")
    assert result.exit_code == 0, result.output
    assert result.stdout == (SHIPPED / "smoke.yaml").read_text()
    assert invoke("configs", "show", "smoke.yaml").stdout == result.stdout
    assert_one_line_error(
        invoke("configs", "show", "defualt"), "no shipped config is named 'defualt'; did you mean 'default'?"
    )


def test_configs_cp_writes_a_copy_that_trains_the_same(elsewhere):
    result = invoke("configs", "cp", "default", "my.yaml")
    assert result.exit_code == 0, result.output
    mine = elsewhere / "my.yaml"
    assert mine.read_bytes() == (SHIPPED / "default.yaml").read_bytes()
    assert load_config(mine) == RunConfig()
    assert "lora-ft train my.yaml" in result.stdout
    (elsewhere / "exp").mkdir()
    assert invoke("configs", "cp", "smoke", "exp").exit_code == 0
    assert (elsewhere / "exp" / "smoke.yaml").read_bytes() == (SHIPPED / "smoke.yaml").read_bytes()
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["exp", "my.yaml", "smoke.yaml"]  # no temporaries


def test_configs_cp_never_replaces_what_is_there(elsewhere):
    mine = elsewhere / "my.yaml"
    mine.write_text("lora:\n  r: 64\n")
    assert_one_line_error(invoke("configs", "cp", "default", "my.yaml"), "my.yaml exists")
    assert mine.read_text() == "lora:\n  r: 64\n"
    (elsewhere / "exp").mkdir()
    (elsewhere / "exp" / "smoke.yaml").write_text("mine\n")
    assert_one_line_error(invoke("configs", "cp", "smoke", "exp"), "smoke.yaml exists")
    assert (elsewhere / "exp" / "smoke.yaml").read_text() == "mine\n"
    victim = elsewhere / "victim.txt"
    victim.write_text("precious\n")
    (elsewhere / "link.yaml").symlink_to(victim)
    assert_one_line_error(invoke("configs", "cp", "default", "link.yaml"), "link.yaml exists")
    assert victim.read_text() == "precious\n"
    assert_one_line_error(
        invoke("configs", "cp", "default", "no/such/dir.yaml"), "the folder no/such does not exist"
    )
    assert_one_line_error(invoke("configs", "cp", "nope", "new.yaml"), "no shipped config is named 'nope'")
    assert not (elsewhere / "new.yaml").exists()


def test_a_shipped_config_is_found_by_name_or_readme_path_from_any_directory(elsewhere):
    shipped = load_config(SHIPPED / "smoke.yaml")
    assert shipped.model.num_layers == 2 and shipped.lora.r == 4  # the smoke config, not the defaults
    assert load_config("smoke") == load_config("smoke.yaml") == load_config("configs/smoke.yaml") == shipped
    (elsewhere / "configs").mkdir()
    (elsewhere / "configs" / "smoke.yaml").write_text("lora:\n  r: 16\n")
    assert load_config("configs/smoke.yaml").lora.r == 16  # a file of the user's wins
    assert load_config("smoke").lora.r == 4
    for missing in ("nope", "configs/nope.yaml", "other/smoke.yaml", "smoke.yml"):
        with pytest.raises(LoraFtError, match="config file not found"):
            load_config(missing)


def _print_config(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``lora-ft train ... --print-config`` in a fresh interpreter, which then says whether torch loaded."""
    code = (
        "import sys\nfrom lora_ft.cli.app import app\n"
        f"try:\n    app({[*args, '--print-config']!r}, prog_name='lora-ft')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\nsys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_print_config_prints_defaults_then_yaml_then_set_and_loads_nothing(elsewhere):
    result = _print_config(
        elsewhere, "train", "configs/smoke.yaml", "--set", "model.name=no-such-org/no-such-model",
        "--set", "lora.r=16", "--method", "full",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "no torch"
    printed = yaml.safe_load(result.stdout)
    assert printed["model"] == {
        "name": "no-such-org/no-such-model", "revision": None, "trust_remote_code": False, "num_layers": 2,
        "allow_pickle": False,
    }  # fmt: skip
    assert printed["lora"]["r"] == 16 and printed["lora"]["alpha"] == 8.0  # --set over YAML over defaults
    assert printed["data"]["max_train_samples"] == 256 and printed["train"]["method"] == "full"
    assert printed["train"]["learning_rates"] == {"lora": 2e-3, "full": 5e-5, "head": 2e-3}
    expected = load_config(
        SHIPPED / "smoke.yaml", ["model.name=no-such-org/no-such-model", "lora.r=16", "train.method=full"]
    )
    assert config_from_dict(printed) == expected
    assert list(elsewhere.iterdir()) == []  # no run directory, no runs/


def test_train_without_a_config_runs_the_default_yaml_recipe():
    bare, named = invoke("train", "--print-config"), invoke("train", "default", "--print-config")
    assert bare.exit_code == named.exit_code == 0, bare.output + named.output
    assert bare.stdout == named.stdout == dump_config(load_config(SHIPPED / "default.yaml"))
    assert yaml.safe_load(bare.stdout)["lora"]["targets"] == "all-linear"


def test_print_config_of_a_resume_is_the_saved_config_with_the_new_budget(elsewhere):
    partial = elsewhere / "runs" / ".r.partial"
    partial.mkdir(parents=True)
    saved = load_config(None, ["model.name=./gone", "lora.r=4", "train.epochs=2"])
    (partial / "config.yaml").write_text(dump_config(saved))
    result = invoke("train", "--resume", "runs/r", "--set", "train.epochs=5", "--print-config")
    assert result.exit_code == 0, result.output
    printed = config_from_dict(yaml.safe_load(result.stdout))
    assert (printed.model.name, printed.lora.r, printed.train.epochs) == ("./gone", 4, 5.0)
    assert sorted(p.name for p in partial.iterdir()) == ["config.yaml"]
