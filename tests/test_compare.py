"""`compare`: a row per method with every column, failed runs kept apart, mean ± std over seeds,
reuse vs --force, the rank sweep, the plots, and the CLI's parsing."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_ft.compare import runner as compare_mod
from lora_ft.compare.report import quality_table
from lora_ft.compare.results import COSTS, aggregate
from lora_ft.compare.runner import compare, parse_methods, parse_ranks, plan_runs
from lora_ft.compare.worker import train_one
from lora_ft.config import load_config
from lora_ft.errors import LoraFtError
from lora_ft.outputs import MARKER_NAME

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HIDDEN = 32  # tiny_bert_dir: hidden size 32, 2 layers, 2 labels


def _cfg(model_dir: Path, data_dir: Path, *extra: str):
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.name={data_dir}",
            "data.max_length=32",
            "lora.r=2",
            "lora.alpha=4",
            "lora.targets=[query,value]",  # what _lora_params counts
            # A rate of each method's own, so a row that used another method's shows.
            "train.learning_rates={lora: 5e-4, full: 5e-5, head: 2e-3}",
            "train.epochs=1",
            "train.batch_size=8",
            "train.logging_steps=2",
            "train.eval_strategy=steps",
            "train.eval_steps=2",
            "train.save_strategy=no",
            # A 32-wide model gains nothing from a second thread, and on a busy machine the threads wait
            # on each other: one thread is several times faster here.
            "train.threads=1",
            *extra,
        ],
    )


def in_process(calls: list[str]):
    """The worker's job without the process boundary (seconds instead of a Python start-up per run)."""

    def runner(config_path, run_dir, log_path, force, emit, trust_remote_code):
        calls.append(run_dir.name)
        try:
            train_one(config_path, run_dir, force=force, emit=emit, trust_remote_code=trust_remote_code)
        except LoraFtError as exc:
            return str(exc)
        return None

    return runner


def _lora_params(r: int, layers: int = 2, wrapped_per_layer: int = 2) -> int:
    head = HIDDEN * 2 + 2  # classifier (32 -> 2)
    return layers * wrapped_per_layer * r * (HIDDEN + HIDDEN) + head


def test_aggregate_mean_and_sample_std_with_known_numbers():
    assert aggregate([0.8, 0.9, 1.0]) == {"mean": pytest.approx(0.9), "std": pytest.approx(0.1), "n": 3}
    two = aggregate([2.0, 4.0])  # sample std (n - 1): sqrt(((2-3)^2 + (4-3)^2) / 1)
    assert two["mean"] == 3.0 and two["std"] == pytest.approx(math.sqrt(2))
    assert aggregate([0.7]) == {"mean": 0.7, "std": None, "n": 1}
    assert aggregate([None, 5.0]) == {"mean": 5.0, "std": None, "n": 1}  # a metric only some runs have
    assert aggregate([]) == {"mean": None, "std": None, "n": 0}


def test_quality_table_says_how_f1_was_averaged():
    stat = {"mean": 0.5, "std": None, "n": 1}
    row = {"label": "lora", "method": "lora", "status": "ok", "runs": ["lora-seed42"], "seeds": [42],
           "learning_rate": 5e-4, "validation": {k: stat for k in ("accuracy", "f1", "loss")}, "test": None}  # fmt: skip
    assert quality_table([{**row, "f1_average": "binary"}])[0][3:] == [
        "val acc",
        "val F1 (binary)",
        "val loss",
    ]
    assert quality_table([{**row, "f1_average": "macro"}])[0][4] == "val F1 (macro)"
    assert quality_table([row])[0][4] == "val F1"  # a record that does not say: no guess


def test_plan_and_parsing():
    specs = plan_runs(["lora", "full"], [1, 2], ranks=[4, 8])
    assert [s.name for s in specs] == [
        "lora-r4-seed1", "lora-r8-seed1", "full-seed1", "lora-r4-seed2", "lora-r8-seed2", "full-seed2",
    ]  # fmt: skip
    assert {s.label for s in specs} == {"lora r=4", "lora r=8", "full"}
    assert parse_methods("lora, full,lora") == ["lora", "full"]
    assert parse_ranks("1,2,4") == [1, 2, 4]
    with pytest.raises(LoraFtError, match="unknown"):
        parse_methods("lora,qlora")
    with pytest.raises(LoraFtError, match="integers"):
        parse_ranks("1,two")
    with pytest.raises(LoraFtError, match=">= 1"):
        parse_ranks("0,4")
    with pytest.raises(LoraFtError, match="add lora to --methods"):
        plan_runs(["full"], [1], ranks=[4])


def test_every_method_gets_a_row_with_every_column_and_valid_plots(tmp_path, tiny_bert_dir, toy_data_dir):
    import matplotlib.image
    from rich.console import Console

    from lora_ft.compare.display import print_comparison

    out = tmp_path / "cmp"
    result = compare(_cfg(tiny_bert_dir, toy_data_dir), out, runner=in_process([]))
    rows = {row["label"]: row for row in result.rows}
    assert list(rows) == ["lora", "full", "head"]
    total = rows["full"]["total_params"]
    expected_trainable = {"lora": _lora_params(2), "full": total, "head": HIDDEN * 2 + 2}
    rates = {"lora": 5e-4, "full": 5e-5, "head": 2e-3}  # _cfg's train.learning_rates
    for label, row in rows.items():
        assert row["status"] == "ok" and row["seeds"] == [42] and row["failed"] == []
        assert row["learning_rate"] == rates[label]
        for split in ("validation", "test"):
            for key in ("accuracy", "f1", "loss"):
                stat = row[split][key]
                assert stat["n"] == 1 and stat["std"] is None and stat["mean"] is not None
            assert 0.0 <= row[split]["accuracy"]["mean"] <= 1.0
        assert row["trainable_params"] == expected_trainable[label]
        assert row["trainable_percent"] == pytest.approx(100 * row["trainable_params"] / row["total_params"])
        assert row["optimizer_state_mb"] == 8 * row["trainable_params"] / 2**20
        ship = out / "runs" / f"{label}-seed42" / ("adapter" if label == "lora" else "model")
        assert row["ship_dir"] == ship.name
        assert row["ship_mb"]["mean"] == sum(f.stat().st_size for f in ship.rglob("*") if f.is_file()) / 2**20
        for key in ("train_seconds", "train_samples_per_second", "peak_memory_mb", "train_memory_mb"):
            assert row[key]["mean"] > 0, (label, key)
        assert row["inference_samples_per_second"]["mean"] > 0, label
        merged = row["merged_inference_samples_per_second"]
        assert merged["mean"] > 0 if label == "lora" else merged == {"mean": None, "std": None, "n": 0}, label
        assert row["vs_full"]["trainable_params"] == pytest.approx(row["trainable_params"] / total)
        assert row["vs_full"]["ship_mb"] == pytest.approx(
            row["ship_mb"]["mean"] / rows["full"]["ship_mb"]["mean"]
        )
    assert rows["full"]["vs_full"] == {key: 1.0 for key in COSTS}
    assert {row["majority_accuracy"] for row in rows.values()} == {0.5}  # toy validation: 8 of each label
    assert rows["lora"]["ship_mb"]["mean"] < rows["full"]["ship_mb"]["mean"]

    saved = json.loads((out / "results.json").read_text())
    assert [row["label"] for row in saved["rows"]] == ["lora", "full", "head"]
    assert [run["status"] for run in saved["runs"]] == ["ok", "ok", "ok"]
    report = (out / "report.md").read_text()
    for text in ("val acc", "test F1 (binary)", "learning rate", "trainable params", "samples/s", "peak RSS",
                 "| eval samples/s | merged eval samples/s |",
                 "train memory", "optimizer state", "shipped", "8 bytes × trainable params", "| head |"):  # fmt: skip
        assert text in report, text
    assert "| full | 1.00× | 1.00× | 1.00× | 1.00× | 1.00× | 1.00× | 1.00× |" in report
    assert "## Runs" in report and "| head-seed42 | ok |" in report
    assert "](curves.png)" in report and "](accuracy_vs_params.png)" in report
    assert not (out / "accuracy_vs_rank.png").exists()  # no rank sweep, no rank plot
    for name in ("curves.png", "accuracy_vs_params.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
        height, width, channels = matplotlib.image.imread(out / name).shape
        assert width > 500 and height > 300 and channels == 4
    assert not [p.name for p in out.rglob(".*") if p.name != MARKER_NAME], "temporary files left behind"
    marked = sorted(p.parent.name for p in out.rglob(MARKER_NAME))
    assert marked == ["cmp", "full-seed42", "head-seed42", "lora-seed42"]

    console = Console(file=io.StringIO(), width=250)
    print_comparison(result, console)
    text = console.file.getvalue()
    assert "Quality" in text and "Cost" in text and "optimizer state" in text


def _plot_row(label: str, method: str, params: int, accuracy: float, **extra) -> dict:
    return {
        "label": label, "method": method, "rank": None, "status": "ok", "trainable_params": params,
        "validation": {"accuracy": {"mean": accuracy, "std": None}}, **extra,
    }  # fmt: skip


def test_accuracy_vs_params_draws_the_majority_baseline_and_labels_every_point():
    from lora_ft.compare.plots import accuracy_vs_params_figure

    rows = [
        _plot_row("full", "full", 4_400_000, 0.85, majority_accuracy=0.6),
        # head-only and a LoRA run that learned nothing: both on the baseline, side by side
        _plot_row("head", "head", 770, 0.6, majority_accuracy=0.6),
        _plot_row("lora", "lora", 800, 0.6, majority_accuracy=0.6),
        {"label": "dora", "method": "dora", "rank": None, "status": "failed"},
    ]
    (ax,) = accuracy_vs_params_figure(rows).axes
    texts = {t.get_text(): t for t in ax.texts}
    assert texts.keys() == {"full", "head", "lora"}  # every point labelled, the failed run has none
    assert texts["head"].xy == (770, 0.6) and texts["lora"].xy == (800, 0.6)
    assert texts["head"].xyann != texts["lora"].xyann  # their labels do not cover each other
    baseline = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.6, 0.6]]
    assert len(baseline) == 1 and baseline[0].get_label() == "majority class (0.600)"
    assert "majority class (0.600)" in [t.get_text() for t in ax.get_legend().get_texts()]

    (old,) = accuracy_vs_params_figure([_plot_row("lora", "lora", 800, 0.6)]).axes  # runs without counts
    assert [line for line in old.get_lines() if len(line.get_ydata()) == 2] == []


def test_a_failing_method_is_a_failed_row_and_the_others_are_kept(tmp_path, tiny_bert_dir, toy_data_dir):
    """Real worker processes: LoRA cannot find its targets and exits with an error; head-only trains."""
    out = tmp_path / "cmp"
    cfg = _cfg(tiny_bert_dir, toy_data_dir, "lora.targets=[no_such_module]")
    result = compare(cfg, out, methods=["lora", "head"])
    rows = {row["label"]: row for row in result.rows}
    assert rows["lora"]["status"] == "failed" and "validation" not in rows["lora"]
    (failure,) = rows["lora"]["failed"]
    assert failure["run"] == "lora-seed42" and "no_such_module" in failure["error"]
    assert not (out / "runs" / "lora-seed42").exists()
    assert rows["head"]["status"] == "ok" and rows["head"]["validation"]["accuracy"]["n"] == 1
    assert (out / "runs" / "head-seed42" / "metrics.json").is_file()
    log_text = (out / "runs" / "lora-seed42.log").read_text()
    assert "-m lora_ft.compare.worker" in log_text and "error: " in log_text
    assert [r.spec.name for r in result.failed] == ["lora-seed42"]
    head = next(r for r in result.results if r.spec.method == "head")
    assert head.cpu_seconds > 0 and len(head.load_average) == 3  # the worker's own CPU time, measured
    report = (out / "report.md").read_text()
    assert "| lora | FAILED |" in report and "## Failed runs" in report and "no_such_module" in report
    assert "| head | ok |" in report
    assert "## Cost relative to full" not in report  # no full fine-tuning row to divide by


def test_finished_runs_are_reused_and_force_retrains(tmp_path, tiny_bert_dir, toy_data_dir):
    cfg = _cfg(tiny_bert_dir, toy_data_dir)
    out = tmp_path / "cmp"
    metrics = out / "runs" / "head-seed42" / "metrics.json"
    calls: list[str] = []
    first = compare(cfg, out, methods=["head"], runner=in_process(calls))
    assert calls == ["head-seed42"]
    stamp = metrics.stat().st_mtime_ns

    second = compare(cfg, out, methods=["head"], runner=in_process(calls))
    assert calls == ["head-seed42"], "a finished run was trained again"
    assert metrics.stat().st_mtime_ns == stamp and second.results[0].reused
    assert second.rows[0]["validation"] == first.rows[0]["validation"]

    with pytest.raises(LoraFtError, match=r"different config \(train\.epochs: 1\.0 -> 2\.0\).*--force"):
        compare(
            _cfg(tiny_bert_dir, toy_data_dir, "train.epochs=2"),
            out,
            methods=["head"],
            runner=in_process(calls),
        )
    assert calls == ["head-seed42"]

    third = compare(cfg, out, methods=["head"], force=True, runner=in_process(calls))
    assert calls == ["head-seed42", "head-seed42"]
    assert metrics.stat().st_mtime_ns != stamp and not third.results[0].reused


def test_an_unrelated_out_directory_is_refused(tmp_path, tiny_bert_dir, toy_data_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(LoraFtError, match="no comparison wrote"):
        compare(_cfg(tiny_bert_dir, toy_data_dir), out, methods=["head"], runner=in_process([]))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_seeds_aggregate_to_mean_and_std_of_the_runs(tmp_path, tiny_bert_dir, toy_data_dir):
    out = tmp_path / "cmp"
    result = compare(_cfg(tiny_bert_dir, toy_data_dir), out, methods=["head"], seeds=2, runner=in_process([]))
    (row,) = result.rows
    assert row["seeds"] == [42, 43]
    runs = [json.loads((out / "runs" / f"head-seed{s}" / "metrics.json").read_text()) for s in (42, 43)]
    losses = [m["validation"]["loss"] for m in runs]
    assert losses[0] != losses[1], "the seeds trained the same model"
    stat = row["validation"]["loss"]
    assert stat["n"] == 2
    assert stat["mean"] == pytest.approx(sum(losses) / 2)
    assert stat["std"] == pytest.approx(abs(losses[0] - losses[1]) / math.sqrt(2))
    assert " ± " in (out / "report.md").read_text()


def test_rank_sweep_rows_keep_the_scaling_and_plot_accuracy_vs_rank(tmp_path, tiny_bert_dir, toy_data_dir):
    import matplotlib.image

    out = tmp_path / "cmp"
    cfg = _cfg(tiny_bert_dir, toy_data_dir)
    result = compare(cfg, out, methods=["lora", "head"], ranks=[1, 4], runner=in_process([]))
    rows = {row["label"]: row for row in result.rows}
    assert list(rows) == ["lora r=1", "lora r=4", "head"]
    for r in (1, 4):
        assert rows[f"lora r={r}"]["trainable_params"] == _lora_params(r)
        assert rows[f"lora r={r}"]["lora"] == {
            "r": r,
            "alpha": 2.0 * r,
            "rslora": False,
            "use_dora": False,
        }  # alpha/r = 4/2
    assert matplotlib.image.imread(out / "accuracy_vs_rank.png").shape[2] == 4
    assert "](accuracy_vs_rank.png)" in (out / "report.md").read_text()


def test_cli_passes_the_parsed_options_and_prints_one_line_errors(monkeypatch, tmp_path):
    from lora_ft.cli.app import app

    seen = {}

    def fake_compare(cfg, out, **kwargs):
        seen.update(cfg=cfg, out=out, **kwargs)
        raise LoraFtError("stop here")

    monkeypatch.setattr(compare_mod, "compare", fake_compare)
    runner = CliRunner()
    config = Path(__file__).parent.parent / "lora_ft" / "configs" / "compare.yaml"
    result = runner.invoke(
        app,
        ["compare", str(config), "--methods", "lora,head", "--seeds", "3", "--ranks", "2,8",
         "--set", "train.epochs=2", "--out", str(tmp_path / "c")],
    )  # fmt: skip
    assert result.exit_code == 1 and result.output.strip().endswith("error: stop here")
    assert seen["methods"] == ["lora", "head"] and seen["seeds"] == 3 and seen["ranks"] == [2, 8]
    assert seen["cfg"].train.epochs == 2.0 and seen["out"] == tmp_path / "c" and seen["force"] is False
    assert seen["command"].startswith(f"lora-ft compare {config} --methods lora,head --seeds 3 --ranks 2,8")

    for args, message in (
        (["--methods", "lora,bogus"], "bogus unknown"),
        (["--ranks", "4,x"], "--ranks takes comma-separated integers"),
    ):
        result = runner.invoke(app, ["compare", *args])
        assert result.exit_code == 1, args
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize("name", ["compare.yaml", "compare-sst2-distilbert.yaml"])
def test_shipped_compare_configs_parse_with_a_rate_per_method(name):
    cfg = load_config(Path(__file__).parent.parent / "lora_ft" / "configs" / name)
    assert set(cfg.train.learning_rates) == {"lora", "full", "head"}
    assert cfg.train.lr_for("full") < cfg.train.lr_for("lora") < cfg.train.lr_for("head")
    assert cfg.train.eval_strategy == "steps"  # curves need several evaluations


def test_progress_shows_steps_loss_and_outcome():
    from rich.console import Console

    from lora_ft.compare.display import CompareProgress
    from lora_ft.compare.results import RunResult, RunSpec

    console = Console(file=io.StringIO(), width=150)
    ok, broken = RunSpec("lora", 42), RunSpec("full", 42)
    with CompareProgress(console) as progress:
        progress.run_started(ok, 0, 2, reused=False)
        progress.run_event({"step": 0, "max_steps": 4})
        progress.run_event({"step": 2, "max_steps": 4, "loss": 0.5})
        progress.run_event({"step": 2, "max_steps": 4, "eval_accuracy": 0.625})
        progress.run_finished(RunResult(ok, Path("x"), {"validation": {"accuracy": 0.75}, "global_steps": 4}))
        progress.run_started(broken, 1, 2, reused=False)
        progress.run_finished(RunResult(broken, Path("y"), None, error="boom"))
    text = console.file.getvalue()
    assert "[1/2] lora-seed42" in text and "done: val acc 0.7500" in text
    assert "[2/2] full-seed42" in text and "failed: boom" in text


def test_an_interrupted_comparison_stops_with_130_and_resumes_its_run(tmp_path, tiny_bert_dir, toy_data_dir):
    """Ctrl-C reaches the parent; the worker checkpoints at the next step; a rerun resumes, not restarts."""
    import signal
    import subprocess
    import sys
    import time

    from lora_ft.config import dump_config
    from lora_ft.training.checkpoint import checkpoint_step, last_checkpoint

    cfg = _cfg(tiny_bert_dir, toy_data_dir, "train.epochs=30", "train.eval_strategy=no")  # 180 steps
    config_path = tmp_path / "compare.yaml"
    config_path.write_text(dump_config(cfg))
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        "-m",
        "lora_ft",
        "compare",
        str(config_path),
        "--methods",
        "lora",
        "--out",
        str(out),
    ]
    partial = out / "runs" / ".lora-seed42.partial"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait for two logged steps however loaded the machine is (a SIGINT before the first step finds no
    # checkpoint to resume, which is not what this test is about); 180 steps outlast the wait.
    log = partial / "log.jsonl"
    deadline = time.monotonic() + 600
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(
                f"the worker logged no two steps (exit {proc.poll()}): {proc.communicate()[1][-2000:]}"
            )
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: compare interrupted by SIGINT during lora-seed42")
    assert "run the same compare command again to resume" in lines[-1] and "Traceback" not in err
    ckpt = last_checkpoint(partial / "checkpoints")
    assert ckpt is not None
    stopped_at = checkpoint_step(ckpt)
    assert 0 < stopped_at < 180
    assert not (out / "results.json").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    metrics = json.loads((out / "runs" / "lora-seed42" / "metrics.json").read_text())
    assert metrics["resumed_from_steps"] == [stopped_at]
    assert metrics["global_steps"] == 180
    assert not partial.exists()
    assert json.loads((out / "results.json").read_text())["rows"][0]["method"] == "lora"
