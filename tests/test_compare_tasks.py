"""`compare --data a,b,c`: every method on every task, each task's comparison in its own directory, and
one table of the tasks' primary metrics (tasks as columns, methods as rows) whose cells are the per-task
reports' own figures."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lora_ft.compare import runner as compare_mod
from lora_ft.compare.tasks import compare_tasks, parse_tasks, task_dir_name
from lora_ft.errors import LoraFtError
from tests.test_compare import _cfg, in_process

# Real built-in data, one of each problem type the table mixes: binary accuracy, regression (Pearson),
# 3-class macro-F1 and multi-label micro-F1.
TASKS = ["rt-sentences", "rt-ratings", "disaster-response-genre", "disaster-response"]
PRIMARY = {
    "rt-sentences": "accuracy",
    "rt-ratings": "pearson",
    "disaster-response-genre": "macro_f1",
    "disaster-response": "micro_f1",
}


def test_parse_tasks_and_directory_names(tmp_path):
    assert parse_tasks("rt-sentences, rt-ratings,rt-sentences") == ["rt-sentences", "rt-ratings"]
    odd = tmp_path / "a,b.csv"
    odd.write_text("sentence,label\n")
    assert parse_tasks(str(odd)) == [str(odd)]  # an existing path is one task, comma or not
    with pytest.raises(LoraFtError, match="comma-separated list of data names"):
        parse_tasks(" , ")
    assert task_dir_name("glue/cola") == "glue-cola"
    assert task_dir_name(str(odd)) == "a-b"
    assert task_dir_name("rt-ratings") == "rt-ratings"


def test_two_tasks_with_one_directory_are_refused_before_training(tmp_path, tiny_bert_dir, toy_data_dir):
    calls: list[str] = []
    with pytest.raises(LoraFtError, match="would share the directory"):
        compare_tasks(
            _cfg(tiny_bert_dir, toy_data_dir),
            tmp_path / "c",
            ["glue/cola", "glue-cola"],
            runner=in_process(calls),
        )
    assert calls == [] and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_every_method_on_every_task_gives_one_table_of_primary_metrics(tmp_path, tiny_bert_dir, toy_data_dir):
    cfg = _cfg(tiny_bert_dir, toy_data_dir, "data.max_train_samples=32", "data.max_eval_samples=24")
    out = tmp_path / "cmp"
    calls: list[str] = []
    result = compare_tasks(
        cfg,
        out,
        TASKS,
        methods=["lora", "head"],
        runner=in_process(calls),
        command="lora-ft compare --data x",
    )
    assert calls == ["lora-seed42", "head-seed42"] * len(TASKS)
    assert result.failed == []
    for task in TASKS:
        per_task = json.loads((out / task / "results.json").read_text())
        assert per_task["command"] == "lora-ft compare --data x"
        assert [row["label"] for row in per_task["rows"]] == ["lora", "head"]
        record = per_task["runs"][0]["metrics"]["task"]
        assert record["primary_metric"] == PRIMARY[task] and record["name"] == task
        assert (out / task / "report.md").is_file()

    saved = json.loads((out / "results.json").read_text())
    assert saved["command"] == "lora-ft compare --data x" and saved["split"] == "validation"
    assert [t["name"] for t in saved["tasks"]] == TASKS
    assert {t["name"]: t["primary_metric"] for t in saved["tasks"]} == PRIMARY
    assert [t["problem_type"] for t in saved["tasks"]] == [
        "single_label_classification",
        "regression",
        "single_label_classification",
        "multi_label_classification",
    ]
    assert [row["label"] for row in saved["rows"]] == ["lora", "head"]
    for row in saved["rows"]:
        means = []
        for task in TASKS:
            per_task = json.loads((out / task / "results.json").read_text())
            own = next(r for r in per_task["rows"] if r["label"] == row["label"])
            cell = row["tasks"][task]
            assert cell["status"] == "ok"
            assert cell["value"] == own["validation"][PRIMARY[task]]
            # ... which is the run's own metrics.json figure (one seed: the mean, no std)
            metrics = json.loads(
                (out / task / "runs" / f"{row['label']}-seed42" / "metrics.json").read_text()
            )
            assert cell["value"] == {"mean": metrics["validation"][PRIMARY[task]], "std": None, "n": 1}
            means.append(cell["value"]["mean"])
        assert row["average"] == pytest.approx(sum(means) / len(means))

    report = (out / "report.md").read_text()
    lines = report.splitlines()
    header = lines.index(
        "| method | rt-sentences | rt-ratings | disaster-response-genre | disaster-response | Avg. |"
    )
    assert lines[header + 2] == (
        "| metric | validation accuracy | validation pearson | validation macro_f1 | validation micro_f1 "
        "| mean of the tasks |"
    )
    for offset, row in enumerate(saved["rows"], start=3):
        values = [f"{row['tasks'][t]['value']['mean']:.4f}" for t in TASKS]
        assert lines[header + offset] == f"| {row['label']} | {' | '.join(values)} | {row['average']:.4f} |"
    assert "lora-ft compare --data x" in report
    for task in TASKS:
        assert f"[{task}/report.md]({task}/report.md)" in report
    # Each task's own quality table, with the task's metrics as columns.
    assert (
        "| method | status | learning rate | val pearson | val spearman | val pearson spearman mean |"
        in report
    )
    assert "| method | status | learning rate | val micro f1 | val macro f1 | val subset accuracy |" in report
    per_task_report = (out / "rt-ratings" / "report.md").read_text()
    assert "val pearson" in per_task_report and "](curves.png)" in per_task_report
    assert not (out / "rt-ratings" / "accuracy_vs_params.png").exists()  # no accuracy to plot

    calls.clear()  # a rerun reuses every finished run
    again = compare_tasks(cfg, out, TASKS, methods=["lora", "head"], runner=in_process(calls))
    assert calls == [] and all(r.reused for c in again.comparisons.values() for r in c.results)


def test_cli_runs_each_task_and_a_single_task_stays_a_plain_comparison(monkeypatch, tmp_path):
    from lora_ft.cli.app import app

    seen = []

    def fake_compare(cfg, out, **kwargs):
        seen.append((cfg.data.name, out, kwargs["command"]))
        raise LoraFtError("stop here")

    monkeypatch.setattr(compare_mod, "compare", fake_compare)
    runner = CliRunner()
    result = runner.invoke(app, ["compare", "--data", "rt-sentences,glue/cola", "--out", str(tmp_path / "c")])
    assert result.exit_code == 1 and result.output.strip().endswith("error: stop here")
    command = f"lora-ft compare --data rt-sentences,glue/cola --methods lora,full,head --seeds 1 --out {tmp_path / 'c'}"
    assert seen == [("rt-sentences", tmp_path / "c" / "rt-sentences", command)]

    seen.clear()  # one name: today's comparison in --out itself
    result = runner.invoke(app, ["compare", "--data", "glue/cola", "--out", str(tmp_path / "d")])
    assert seen == [("glue/cola", tmp_path / "d", seen[0][2])] and "--data glue/cola" in seen[0][2]

    seen.clear()  # data.name listing several is the same as --data
    result = runner.invoke(
        app, ["compare", "--set", "data.name=rt-sentences,rt-ratings", "--out", str(tmp_path / "e")]
    )
    assert seen == [("rt-sentences", tmp_path / "e" / "rt-sentences", seen[0][2])]

    seen.clear()  # no --data, one data.name: unchanged, and the command line has no --data
    result = runner.invoke(app, ["compare", "--out", str(tmp_path / "f")])
    assert seen == [
        (
            "rt-sentences",
            tmp_path / "f",
            f"lora-ft compare --methods lora,full,head --seeds 1 --out {tmp_path / 'f'}",
        )
    ]


def _row(f1_average: str | None, **stats: float) -> dict:
    s = {k: {"mean": v, "std": None, "n": 1} for k, v in stats.items()}
    return {"label": "lora", "method": "lora", "status": "ok", "runs": ["lora-seed42"], "seeds": [42],
            "learning_rate": 5e-4, "f1_average": f1_average, "validation": s, "test": None}  # fmt: skip


def test_quality_table_shows_each_task_its_own_metrics():
    from lora_ft.compare.report import quality_table

    # CoLA: the primary metric (MCC) beside accuracy, F1 and loss
    headers, cells = quality_table(
        [_row("binary", accuracy=0.8, f1=0.85, loss=0.4, matthews_correlation=0.5)]
    )
    assert headers[3:] == ["val acc", "val F1 (binary)", "val loss", "val matthews correlation"]
    assert cells[0][3:] == ["0.8000", "0.8500", "0.4000", "0.5000"]
    # Three classes ranked by macro-F1: F1 is macro-F1 already, so one column
    headers, cells = quality_table([_row("macro", accuracy=0.6, f1=0.5, loss=0.9, macro_f1=0.5)])
    assert headers[3:] == ["val acc", "val F1 (macro)", "val loss"]
    # Multi-label keeps its macro-F1 (there is no "f1")
    headers, _ = quality_table([_row(None, micro_f1=0.4, macro_f1=0.2, subset_accuracy=0.1, loss=0.6)])
    assert headers[3:] == ["val micro f1", "val macro f1", "val subset accuracy", "val loss"]


def test_progress_outcome_names_the_primary_metric():
    import io
    from pathlib import Path

    from rich.console import Console

    from lora_ft.compare.display import CompareLines
    from lora_ft.compare.results import RunResult, RunSpec

    console = Console(file=io.StringIO(), width=150)
    task = {"problem_type": "regression", "label_names": ["score"], "primary_metric": "pearson"}
    metrics = {"validation": {"pearson": 0.8125, "mse": 1.5}, "task": task}
    progress = CompareLines(console)
    progress.task = "rt-ratings"
    progress.run_started(RunSpec("lora", 42), 0, 2, reused=False)
    progress.run_finished(RunResult(RunSpec("lora", 42), Path("x"), metrics))
    assert console.file.getvalue().splitlines() == [
        "[1/2] rt-ratings lora-seed42: starting",
        "[1/2] rt-ratings lora-seed42: done: val pearson 0.8125",
    ]


def test_train_refuses_a_data_name_that_lists_several(tmp_path):
    from lora_ft.config import DataConfig
    from lora_ft.data.loading import load_data

    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name="rt-sentences,rt-ratings"))
    assert str(info.value) == (
        "data.name 'rt-sentences,rt-ratings' lists several data sets; this command takes one "
        "(lora-ft compare --data rt-sentences,rt-ratings runs every method on each)"
    )


def test_the_table_marks_failed_cells_leaves_their_average_out_and_shows_mean_and_std(tmp_path):
    from lora_ft.compare.results import Comparison, RunResult, RunSpec, aggregate
    from lora_ft.compare.tasks import MultiTaskComparison, render_markdown, summary_rows, tasks_table
    from lora_ft.config import RunConfig

    def comparison(name: str, task: dict, rows: list[dict]) -> Comparison:
        metrics = {"task": task, "validation": {}}
        done = RunResult(RunSpec("lora", 1), tmp_path / name, metrics)
        failed = RunResult(RunSpec("full", 1), tmp_path / name, None, error="out of memory")
        return Comparison(tmp_path / name, RunConfig(), [done.spec, failed.spec], [done, failed], rows)

    single = {
        "problem_type": "single_label_classification",
        "label_names": ["a", "b"],
        "primary_metric": "accuracy",
    }
    score = {"problem_type": "regression", "label_names": ["score"], "primary_metric": "pearson"}
    two_seeds = {"method": "lora", "seeds": [1, 2], "runs": ["lora-seed1", "lora-seed2"]}
    failed_row = {"label": "full", "method": "full", "status": "failed", "seeds": [], "runs": ["full-seed1"]}
    c = MultiTaskComparison(
        tmp_path,
        RunConfig(),
        ["t1", "t2"],
        {
            "t1": comparison("t1", single, [
                {"label": "lora", "status": "ok", "primary_metric": "accuracy", **two_seeds,
                 "validation": {"accuracy": aggregate([0.8, 0.9])}},
                {**failed_row, "label": "full"},
            ]),
            "t2": comparison("t2", score, [
                {"label": "lora", "status": "ok", "primary_metric": "pearson", **two_seeds,
                 "validation": {"pearson": aggregate([0.5, 0.7])}},
                {"label": "full", "status": "partial", "primary_metric": "pearson", **two_seeds, "method": "full",
                 "validation": {"pearson": aggregate([0.6])}},
            ]),
        },
        "lora-ft compare --data t1,t2",
    )  # fmt: skip
    assert [row["average"] for row in summary_rows(c)] == [pytest.approx(0.725), None]
    headers, cells = tasks_table(c)
    assert headers == ["method", "t1", "t2", "Avg."]
    assert cells == [
        ["metric", "validation accuracy", "validation pearson", "mean of the tasks"],
        ["lora", "0.8500 ± 0.0707", "0.6000 ± 0.1414", "0.7250"],
        ["full", "FAILED", "0.6000 (partial)", "—"],
    ]
    report = render_markdown(c)
    assert "- t1 `full-seed1`: out of memory" in report and "- t2 `full-seed1`: out of memory" in report
