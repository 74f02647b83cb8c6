"""Output outside a terminal and the help: piped ``train`` and ``compare`` print a plain line per log and
evaluation, piped tables keep every number whole, every word of every help text reaches ``--help``,
on/off flags show no value type, and ``--version`` is one fast line."""

from __future__ import annotations

import inspect
import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from types import SimpleNamespace

import pytest
import typer
from typer import rich_utils
from typer.testing import CliRunner

from lora_ft import __version__, fmt
from lora_ft.cli.app import app
from lora_ft.compare import runner as compare_mod
from lora_ft.compare.results import Comparison, RunResult, RunSpec, summarize

from .conftest import toy_rows, write_split
from .test_adapter_io import make_adapter

runner = CliRunner()
# Rich switches to a terminal's display when told to, whatever stdout is.
NOT_A_TERMINAL = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}


def test_piped_train_prints_a_line_per_logging_step_and_evaluation(tmp_path, tiny_bert_dir, toy_data_dir):
    out = tmp_path / "run"
    sets = [
        f"model.name={tiny_bert_dir}", f"data.name={toy_data_dir}", "data.max_length=16", "train.epochs=1",
        "train.batch_size=8", "train.logging_steps=2", "train.eval_strategy=steps", "train.eval_steps=3",
        "train.save_strategy=no", "train.threads=1",
    ]  # fmt: skip
    command = [
        sys.executable,
        "-m",
        "lora_ft",
        "train",
        *(w for s in sets for w in ("--set", s)),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=NOT_A_TERMINAL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # 48 rows / 8 = 6 steps: losses at 2, 4, 6; evaluations at 3 and 6 (the last is the final validation);
    # then the test split.
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    for r in (r for r in records if "loss" in r):
        where = f"step {r['step']}/6  epoch {r['epoch']:.2f}"
        known = re.escape(f"{where}  loss {r['loss']:.4f}  lr {r['learning_rate']:.2e}  ")
        pattern = known + r"[\d.]+ samples/s  eta \d+:\d\d:\d\d"
        assert sum(bool(re.fullmatch(pattern, line)) for line in lines) == 1, (pattern, lines)
    for split in ("eval", "test"):
        evaluations = [r for r in records if f"{split}_loss" in r]
        assert evaluations
        for r in evaluations:
            values = "  ".join(f"{k} {r[f'{split}_{k}']:.4f}" for k in ("loss", "accuracy", "f1"))
            assert f"step {r['step']}/6  epoch {r['epoch']:.2f}  {split}  {values}" in lines
    assert any(re.fullmatch(r"step 6/6  epoch 1\.00  done in \d+:\d\d:\d\d", line) for line in lines), lines
    # A line per log.jsonl record, then the summary; no progress bar drawn at the end ("lora ━━━ 6/6 ...").
    assert lines[0].startswith("global batch 8 = ")
    assert all(line.startswith("step ") for line in lines[1 : 1 + len(records)])
    rest = lines[1 + len(records) :]
    assert not any("6/6" in line for line in rest) and "trainable params" in result.stdout


def test_durations_read_as_hours_minutes_seconds():
    assert [fmt.duration(s) for s in (0, 41.4, 41.6, 3599.5, 43389.6, -3)] == [
        "0:00:00",
        "0:00:41",
        "0:00:42",
        "1:00:00",
        "12:03:10",
        "0:00:00",
    ]


def _metrics(acc: float, lr: float, trainable: int) -> dict:
    split = {"accuracy": acc, "f1": acc - 0.0123, "loss": 0.4567 + acc / 10}
    return {
        "learning_rate": lr, "lora": None, "trainable_params": trainable, "total_params": 22_713_216,
        "trainable_percent": 100 * trainable / 22_713_216, "validation": split, "test": split,
        "train_seconds": 104.56, "train_samples_per_second": 77.21, "peak_memory_mb": 1234.4,
        "train_memory_mb": 345.6, "global_steps": 4,
    }  # fmt: skip


def test_piped_compare_prints_progress_lines_and_whole_numbers(monkeypatch, tmp_path):
    results = []
    for method, lr, trainable, ship in (
        ("lora", 5e-4, 338_690, "adapter"),
        ("full", 2e-5, 22_713_216, "model"),
    ):
        for seed, acc in ((1, 0.8125), (2, 0.8375)):
            run_dir = tmp_path / f"{method}-seed{seed}"
            (run_dir / ship).mkdir(parents=True)
            (run_dir / ship / "weights").write_bytes(b"\0" * 1000)
            metrics = _metrics(acc if method == "lora" else acc + 0.01, lr, trainable)
            results.append(RunResult(RunSpec(method, seed), run_dir, metrics))

    def fake_compare(cfg, out, *, progress, **kwargs):
        for i, r in enumerate(results):
            progress.run_started(r.spec, i, len(results), reused=False)
            progress.run_event({"step": 0, "max_steps": 4})
            progress.run_event({"step": 1, "max_steps": 4})
            progress.run_event({"step": 2, "max_steps": 4, "loss": 0.69314})
            progress.run_event({"step": 2, "max_steps": 4, "eval_metric": 0.5, "metric": "accuracy"})
            progress.run_finished(r)
        return Comparison(out, cfg, [r.spec for r in results], results, summarize(results))

    monkeypatch.setattr(compare_mod, "compare", fake_compare)
    result = runner.invoke(app, ["compare", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "[1/4] lora-seed1: starting",
        "[1/4] lora-seed1: step 2/4  loss 0.6931",
        "[1/4] lora-seed1: step 2/4  val acc 0.5000",
        "[1/4] lora-seed1: done: val acc 0.8125",
        "[2/4] lora-seed2: starting",
    ]
    assert "[4/4] full-seed2: done: val acc 0.8475" in lines
    # Whole in the tables: the learning rates, mean ± std over the seeds, and the cost columns.
    for text in ("5.0e-04", "2.0e-05", "0.8250 ± 0.0177", "0.8127 ± 0.0177", "0.5392 ± 0.0018", "0.8350 ± 0.0177",
                 "104.6 ± 0.0 s", "77.2 ± 0.0", "1234 ± 0 MB", "346 ± 0 MB", "338.7K", "22.71M", "0.01×"):  # fmt: skip
        assert text in result.stdout, text
    assert "…" not in result.stdout


def test_piped_eval_table_keeps_long_adapter_names_and_numbers_whole(tmp_path, tiny_bert_dir):
    make_adapter(tiny_bert_dir, tmp_path / "adapter")
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        write_split(data / f"{split}.csv", toy_rows(16))
    name = "r2-alpha4-query-value-seed0-lr2e-3-max-train-samples-256"
    args = [
        "eval",
        str(tiny_bert_dir),
        "--adapter",
        f"{name}={tmp_path / 'adapter'}",
        "--data",
        str(data),
        "--device",
        "cpu",
    ]
    table, as_json = runner.invoke(app, args), runner.invoke(app, [*args, "--json"])
    assert table.exit_code == 0 and as_json.exit_code == 0, table.output + as_json.output
    metrics = json.loads(as_json.stdout)[name]
    row = next(line for line in table.stdout.splitlines() if name in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == [
        name,
        "16",
        *(f"{metrics[k]:.4f}" for k in ("accuracy", "f1", "macro_f1", "matthews_correlation", "loss")),
    ]
    assert "…" not in table.stdout


def _commands():
    group = typer.main.get_command(app)
    return [(None, group), *((name, group.commands[name]) for name in group.commands)]


def _help(monkeypatch, name: str | None) -> str:
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", 1000)  # one line per help text: words are not folded
    result = runner.invoke(app, [*([name] if name else []), "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("name", [name for name, _ in _commands()])
def test_every_word_of_the_help_texts_reaches_help(monkeypatch, name):
    command = dict(_commands())[name]
    shown = _help(monkeypatch, name)
    texts = [inspect.cleandoc(command.help or ""), *(p.help or "" for p in command.params)]
    # Markdown's inline code marks are the only characters the rendering may drop.
    missing = sorted({word for text in texts for word in text.replace("`", "").split() if word not in shown})
    assert not missing, f"lora-ft {name or ''} --help lost {missing}"


def test_out_default_of_train_is_spelled_out(monkeypatch):
    assert "runs/CONFIG-METHOD-TIME" in _help(monkeypatch, "train")


@pytest.mark.parametrize("name", [name for name, _ in _commands()])
def test_on_off_flags_show_no_value_type(monkeypatch, name):
    shown = _help(monkeypatch, name)
    assert "<bool>" not in shown
    flags = [p for p in dict(_commands())[name].params if getattr(p, "is_flag", False)]
    for p in flags:  # still listed, each with its help
        assert p.opts[0] in shown and p.help.split()[0] in shown


def test_version_is_one_line_naming_the_libraries(monkeypatch):
    libs = ", ".join(
        f"{n} {metadata.version(n)}" for n in ("torch", "transformers", "datasets", "accelerate")
    )
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert (
        result.stdout
        == f"lora-ft {__version__} (Python {platform.python_version()}; {libs}, peft {metadata.version('peft')})\n"
    )

    real = metadata.version

    def without_peft(name):
        if name == "peft":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", without_peft)
    result = runner.invoke(app, ["--version"])
    assert result.stdout == f"lora-ft {__version__} (Python {platform.python_version()}; {libs})\n"


def test_version_imports_no_library():
    probe = (
        "import sys\nfrom lora_ft.cli.app import main\nsys.argv = ['lora-ft', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    first, last = out.stdout.splitlines()
    assert first.startswith(f"lora-ft {__version__} (") and last == "[]"


@pytest.mark.parametrize(
    "metrics, shown",
    [
        (
            {"accuracy": 0.5, "f1": 0.4, "macro_f1": 0.3, "matthews_correlation": 0.1},
            ["loss", "accuracy", "f1"],
        ),
        ({"micro_f1": 0.36, "macro_f1": 0.03, "subset_accuracy": 0.2}, ["loss", "micro_f1", "macro_f1"]),
        ({"pearson": 0.75, "spearman": 0.74, "mse": 1.7, "mae": 0.9}, ["loss", "pearson", "spearman"]),
        ({"entity_f1": 0.15, "entity_precision": 0.2, "token_accuracy": 0.9}, ["loss", "entity_f1"]),
    ],
)
def test_progress_lines_show_each_problem_types_own_metrics(metrics, shown):
    from lora_ft.training.callbacks import LineProgressCallback, shown_keys

    logs = {"eval_loss": 0.25, "eval_runtime": 1.0, **{f"eval_{k}": v for k, v in metrics.items()}}
    assert shown_keys(logs, "eval") == shown
    written = []
    callback = LineProgressCallback(written.append)
    callback.begin = callback.last = (0.0, 0)
    state = SimpleNamespace(is_world_process_zero=True, global_step=4, max_steps=8, epoch=0.5)
    callback.on_log(None, state, None, logs=logs)
    values = "  ".join(f"{k} {logs[f'eval_{k}']:.4f}" for k in shown)
    assert written == [f"step 4/8  epoch 0.50  eval  {values}"]
