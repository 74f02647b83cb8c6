"""`--out` for every writer (train, merge, inspect, compare): nothing lora-ft did not write is ever
replaced, `--force` or not; the current, home and root directories, an ancestor of the current one and
a symbolic link are refused; all of it before any model, data or training is touched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.errors import LoraFtError
from lora_ft.outputs import MARKER_NAME, check_comparison_dir, check_output_dir, publish_dir

from .conftest import assert_one_line_error, toy_rows, write_split

WRITERS = ("train", "merge", "inspect", "compare")
FOREIGN = {
    "train": "holds .git, which lora-ft did not write",
    "merge": "holds .git, which lora-ft did not write",
    "inspect": "holds .git, which lora-ft did not write",
    "compare": "no comparison wrote (it holds .git)",
}
DOCS = Path(__file__).parent.parent / "docs"

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("toy-data")
    write_split(d / "train.csv", toy_rows(16))
    write_split(d / "validation.csv", toy_rows(8, 100))
    return d


def _train_args(model: Path, data: Path) -> list[str]:
    return [
        "--set", f"model.name={model}", "--set", f"data.name={data}", "--set", "data.max_length=16",
        "--set", "train.threads=1", "--set", "train.save_strategy=no", "--set", "train.batch_size=8",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert_dir, data_dir) -> Path:
    """A LoRA run as `lora-ft train` writes it: the source of the merge and inspect cases."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = runner.invoke(app, ["train", *_train_args(tiny_bert_dir, data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _argv(writer: str, run: Path, model: Path, data: Path, out: str) -> list[str]:
    return {
        "train": ["train", *_train_args(model, data), "--out", out, "--force"],
        "merge": ["merge", str(run), "--out", out, "--force"],
        "inspect": ["inspect", str(run), "--out", out, "--force"],
        "compare": ["compare", *_train_args(model, data), "--methods", "head", "--out", out, "--force"],
    }[writer]


@pytest.fixture()
def no_work(monkeypatch):
    """The first heavy step of every writer fails the test: the refusal must come before it."""

    def started(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr("lora_ft.training.train.prepare", started)
    monkeypatch.setattr("lora_ft.serving.export.load_artifact", started)
    monkeypatch.setattr("lora_ft.serving.inspect.inspect", started)
    monkeypatch.setattr(subprocess, "Popen", started)  # compare trains each run in a subprocess


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }  # fmt: skip


def _users_project(root: Path) -> Path:
    project = root / "project"
    (project / ".git" / "objects").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "src").mkdir()
    (project / "src" / "main.py").write_text("print('mine')\n")
    return project


@pytest.mark.parametrize("writer", WRITERS)
def test_force_never_replaces_a_users_directory(writer, run, tiny_bert_dir, data_dir, tmp_path, no_work):
    project = _users_project(tmp_path / "home")
    before = _snapshot(tmp_path)
    result = runner.invoke(app, _argv(writer, run, tiny_bert_dir, data_dir, str(project)))
    assert_one_line_error(result, FOREIGN[writer])
    assert _snapshot(tmp_path) == before  # the project, .git included, and no temporary beside it


def _cwd(root: Path, monkeypatch) -> str:
    (root / "work").mkdir()
    monkeypatch.chdir(root / "work")
    return "."


def _cwd_absolute(root: Path, monkeypatch) -> str:
    (root / "work").mkdir()
    monkeypatch.chdir(root / "work")
    return str(root / "work")


def _home(root: Path, monkeypatch) -> str:
    (root / "home").mkdir()
    monkeypatch.setenv("HOME", str(root / "home"))
    return str(root / "home")


def _ancestor(root: Path, monkeypatch) -> str:
    (root / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(root / "a" / "b")
    return str(root / "a")


def _dotdot(root: Path, monkeypatch) -> str:
    (root / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(root / "a" / "b")
    return ".."


def _root(root: Path, monkeypatch) -> str:
    return "/"


PLACES = {
    "dot": (_cwd, "is the current directory"),
    "cwd-absolute": (_cwd_absolute, "is the current directory"),
    "home": (_home, "is the home directory"),
    "ancestor": (_ancestor, "is an ancestor of the current directory"),
    "dotdot": (_dotdot, "is an ancestor of the current directory"),
    "root": (_root, "is a file system root"),
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("writer", WRITERS)
def test_places_that_are_never_an_output(
    writer, place, run, tiny_bert_dir, data_dir, tmp_path, monkeypatch, no_work
):
    make, phrase = PLACES[place]
    out = make(tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, _argv(writer, run, tiny_bert_dir, data_dir, out))
    assert_one_line_error(result, phrase)
    assert "give a new one, e.g. --out runs/NAME" in result.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["directory", "missing"])
@pytest.mark.parametrize("writer", WRITERS)
def test_a_symlink_out_is_refused(writer, target, run, tiny_bert_dir, data_dir, tmp_path, no_work):
    real = tmp_path / "real"
    if target == "directory":
        real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, _argv(writer, run, tiny_bert_dir, data_dir, str(link)))
    assert_one_line_error(result, "is a symbolic link, and lora-ft does not write through a link")
    assert _snapshot(tmp_path) == before and link.is_symlink()  # no .link.old-PID, no temporary


@pytest.mark.parametrize("writer", WRITERS)
def test_an_out_ending_in_dotdot_is_refused_before_any_work(
    writer, run, tiny_bert_dir, data_dir, tmp_path, no_work
):
    """``--out elsewhere/new/..`` names no directory to rename into place: it was found only after training."""
    (tmp_path / "elsewhere").mkdir()
    before = _snapshot(tmp_path)
    out = str(tmp_path / "elsewhere" / "new" / "..")
    result = runner.invoke(app, _argv(writer, run, tiny_bert_dir, data_dir, out))
    assert_one_line_error(result, f"ends in '..'; name the directory itself ({tmp_path / 'elsewhere'})")
    assert _snapshot(tmp_path) == before  # no elsewhere/new, no partial


@pytest.mark.parametrize("writer", ["merge", "inspect"])
@pytest.mark.parametrize("source", ["run", "adapter"])
def test_force_never_replaces_the_output_the_command_reads(writer, source, run, tmp_path, no_work):
    """The run is lora-ft's, so --force could replace it, but not with a report or export made from it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    before = _snapshot(tmp_path)
    src = copy if source == "run" else copy / "adapter"
    result = runner.invoke(app, [writer, str(src), "--out", str(copy), "--force"])
    assert_one_line_error(result, f"--out {copy} would replace the source {src}")
    assert _snapshot(tmp_path) == before


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_train_replaces_a_run_it_wrote_with_force(run, tiny_bert_dir, data_dir, tmp_path):
    out = tmp_path / "runs" / "again"
    shutil.copytree(run, out, symlinks=True)
    (out / "metrics.json").write_text("{}")
    result = runner.invoke(
        app, ["train", *_train_args(tiny_bert_dir, data_dir), "--out", str(out), "--force"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["method"] == "lora"
    assert sorted(p.name for p in out.parent.iterdir()) == ["again"]  # no .again.old-PID, no partial
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["kind"] == "run" and sorted(marker["entries"]) == [
        e for e in _tree(out) if e != MARKER_NAME
    ]


def test_merge_replaces_an_export_it_wrote_even_one_from_before_the_marker(run, tmp_path):
    out = tmp_path / "merged"
    args = ["merge", str(run), "--out", str(out), "--probe", "4"]
    assert runner.invoke(app, args).exit_code == 0
    assert "already exists; pass --force" in runner.invoke(app, args).stderr
    for legacy in (False, True):
        (out / "config.json").write_text("{}")  # so the replacement shows
        if legacy:
            (out / MARKER_NAME).unlink()
        result = runner.invoke(app, [*args, "--force"])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "config.json").read_text())["architectures"]
        assert (out / MARKER_NAME).is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_inspect_replaces_a_report_it_wrote_and_train_a_run_holding_one(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out, symlinks=True)
    assert runner.invoke(app, ["inspect", str(out)]).exit_code == 0  # writes run/inspect
    (out / "inspect" / "inspect.json").write_text("{}")
    assert runner.invoke(app, ["inspect", str(out), "--force"]).exit_code == 0
    assert json.loads((out / "inspect" / "inspect.json").read_text())["modules"]
    # The run with its report inside is still all ours; one file of the user's in either is not.
    check_output_dir(out, force=True)
    (out / "inspect" / "notes.txt").write_text("mine")
    with pytest.raises(LoraFtError, match=r"holds inspect/notes\.txt, which lora-ft did not write"):
        check_output_dir(out, force=True)


def as_legacy_run(run: Path, dest: Path) -> None:
    """A copy of ``run`` as lora-ft wrote runs before the marker: no marker, and adapter/ holding only
    the config and the weights (no model card, no tokenizer files)."""
    shutil.copytree(run, dest, symlinks=True)
    (dest / MARKER_NAME).unlink()
    for path in (dest / "adapter").iterdir():
        if path.name not in ("adapter_config.json", "adapter_model.safetensors"):
            path.unlink()


def test_outputs_from_before_the_marker_are_recognised_by_their_exact_layout(run, tmp_path):
    legacy_run = tmp_path / "run"
    as_legacy_run(run, legacy_run)
    shutil.copytree(DOCS / "inspect-demo", legacy_run / "inspect")
    report = tmp_path / "report"
    shutil.copytree(DOCS / "inspect-demo", report)
    for out in (legacy_run, report):
        check_output_dir(out, force=True)
    check_comparison_dir(DOCS / "compare-ranks")
    (legacy_run / "adapter.bak").mkdir()
    (legacy_run / "adapter.bak" / "x").write_text("mine")
    (report / "notes.md").write_text("mine")
    with pytest.raises(LoraFtError, match=r"holds adapter\.bak/x, which"):
        check_output_dir(legacy_run, force=True)
    with pytest.raises(LoraFtError, match=r"holds notes\.md, which"):
        check_output_dir(report, force=True)


def test_a_directory_borrowing_a_legacy_runs_names_is_not_replaced(run, tmp_path):
    """The legacy layout goes down to every file: a run's names at the top (config.yaml, metrics.json,
    model/) with someone else's files below them are not a run, and --force deletes none of it."""
    legacy_run = tmp_path / "run"
    as_legacy_run(run, legacy_run)
    ckpt = legacy_run / "checkpoints" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    for name in ("trainable.safetensors", "optimizer.pt", "rng_state.pth", "resume.json"):
        (ckpt / name).write_text("x")
    check_output_dir(legacy_run, force=True)  # the whole run, checkpoints included, is ours
    for mine in (legacy_run / "adapter" / "notes.txt", ckpt / "notes.txt"):
        mine.write_text("mine")
        rel = mine.relative_to(legacy_run).as_posix()
        with pytest.raises(LoraFtError, match=rf"holds {rel}, which lora-ft did not write"):
            check_output_dir(legacy_run, force=True)
        mine.unlink()
    (legacy_run / "checkpoints" / "archive").mkdir()
    with pytest.raises(LoraFtError, match=r"holds checkpoints/archive, which lora-ft did not write"):
        check_output_dir(legacy_run, force=True)

    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    (project / "config.yaml").write_text("lr: 1\n")
    (project / "metrics.json").write_text("{}")
    (project / "model" / "weights.bin").write_text("mine")
    result = runner.invoke(app, ["train", "--out", str(project), "--force"])
    assert_one_line_error(result, "holds model/weights.bin, which lora-ft did not write")
    assert (project / "model" / "weights.bin").read_text() == "mine"


def test_a_marker_listing_other_paths_or_a_linked_marker_proves_nothing(tmp_path):
    out = tmp_path / "out"
    tmp = tmp_path / ".out.tmp"
    tmp.mkdir()
    (tmp / "inspect.json").write_text("{}")
    publish_dir(tmp, out, "inspect", force=False)
    (out / "mine.txt").write_text("mine")
    with pytest.raises(LoraFtError, match=r"holds mine\.txt, which"):
        check_output_dir(out, force=True)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "notes.txt").write_text("mine")
    (fake / MARKER_NAME).symlink_to(out / MARKER_NAME)
    with pytest.raises(LoraFtError, match="which lora-ft did not write"):
        check_output_dir(fake, force=True)


def test_an_out_that_appears_while_working_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    tmp = tmp_path / ".out.tmp"
    tmp.mkdir()
    (tmp / "inspect.json").write_text("{}")
    check_output_dir(out, force=False)  # the check before the work passes ...
    _users_project(tmp_path)
    (tmp_path / "project").rename(out)  # ... and the user's directory lands there meanwhile
    before = _snapshot(tmp_path)
    for force in (False, True):
        with pytest.raises(LoraFtError, match=r"holds \.git|already exists"):
            publish_dir(tmp, out, "inspect", force=force)
        assert _snapshot(tmp_path) == before


def test_a_failed_rename_puts_the_replaced_output_back(tmp_path, monkeypatch):
    out, tmp = tmp_path / "out", tmp_path / ".out.tmp"
    for d in (out, tmp):
        d.mkdir()
        (d / "inspect.json").write_text(d.name)
    (out / MARKER_NAME).write_text(
        json.dumps({"written_by": "lora-ft", "kind": "inspect", "entries": ["inspect.json"]})
    )
    real_replace = os.replace

    def replace(src, dst):
        if Path(src) == tmp:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        publish_dir(tmp, out, "inspect", force=True)
    assert (out / "inspect.json").read_text() == "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp", "out"]  # no .out.old-PID


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_publishing_removes_what_a_killed_publish_left_only_if_it_is_ours(tmp_path):
    out = tmp_path / "out"
    pid = _dead_pid()
    for name, owned in ((f".out.old-{pid}", True), (f".out.old-{pid + 1}", False)):
        d = tmp_path / name
        d.mkdir()
        (d / "inspect.json").write_text("{}")
        if not owned:
            (d / "thesis.tex").write_text("mine")
    tmp = tmp_path / ".out.tmp"
    tmp.mkdir()
    (tmp / "inspect.json").write_text("{}")
    publish_dir(tmp, out, "inspect", force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.old-{pid + 1}", "out"]


def test_compare_writes_into_a_comparison_only(tmp_path):
    out = tmp_path / "cmp"
    check_comparison_dir(out)
    out.mkdir()
    check_comparison_dir(out)  # empty
    (out / "report.md").write_text("mine")
    with pytest.raises(LoraFtError, match="no comparison wrote"):
        check_comparison_dir(out)  # a report.md alone is not a comparison
