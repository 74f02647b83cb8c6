"""A run, config or adapter someone sent cannot run code, clobber files or exhaust memory.

- ``model.trust_remote_code`` comes from the current command line only: a saved run whose config.yaml
  says true is loaded (predict, eval, merge, inspect, resume) without importing the model folder's
  Python, which a real ``auto_map`` module proves by writing a marker file when imported;
- symbolic links planted in an interrupted run are refused before anything is written, and our own
  files are opened with ``O_NOFOLLOW`` / ``O_EXCL``; a model directory made of links still loads;
- YAML aliases (the "billion laughs" bomb) are refused at parse time; JSON records are size-bounded.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.config import config_from_dict, dump_config, load_config, read_yaml
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import MAX_RECORD_BYTES, open_own, write_atomic
from lora_ft.training.signals import TrainingInterrupted
from lora_ft.training.train import train

from .conftest import SignalAt, assert_one_line_error, small_data, toy_rows, write_split

runner = CliRunner()

# Imported only if transformers is told to trust the directory's code: then it leaves a marker.
MARKER_MODULE = """\
import pathlib
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import BertConfig, BertForSequenceClassification
class MarkerConfig(BertConfig):
    model_type = {model_type!r}
class MarkerModel(BertForSequenceClassification):
    config_class = MarkerConfig
"""


@dataclass
class Ws:
    root: Path
    model: Path  # a BERT whose config.json maps the Auto classes to its own marker_model.py
    marker: Path
    data: Path

    def settings(self, *extra: str) -> list[str]:
        return [
            f"model.name={self.model}", f"data.name={self.data}", "data.max_length=16", "lora.r=2",
            "train.batch_size=8", "train.threads=1", "train.save_strategy=no", *extra,
        ]  # fmt: skip


def remote_code_model(root: Path, source: Path, model_type: str = "bert") -> tuple[Path, Path]:
    """A copy of ``source`` with an ``auto_map`` to its own module, and the marker that module writes."""
    model, marker = root / f"remote-{model_type}", root / f"MARKER-{model_type}"
    shutil.copytree(source, model)
    (model / "marker_model.py").write_text(MARKER_MODULE.format(marker=str(marker), model_type=model_type))
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "marker_model.MarkerConfig",
        "AutoModelForSequenceClassification": "marker_model.MarkerModel",
    }
    (model / "config.json").write_text(json.dumps(config))
    return model, marker


@pytest.fixture()
def ws(tmp_path, tiny_bert_dir) -> Ws:
    data = small_data(tmp_path)
    model, marker = remote_code_model(tmp_path, tiny_bert_dir)
    return Ws(tmp_path, model, marker, data)


def grant_in_saved_config(config_yaml: Path) -> None:
    """What a sender can do to a run directory: switch remote code on in its saved config."""
    text = config_yaml.read_text()
    assert "trust_remote_code: false" in text
    config_yaml.write_text(text.replace("trust_remote_code: false", "trust_remote_code: true"))


@pytest.fixture()
def received_run(ws) -> Path:
    """A finished LoRA run on the remote-code model whose config.yaml says trust_remote_code: true."""
    run = ws.root / "run"
    train(load_config(None, ws.settings("train.max_steps=2")), run)
    grant_in_saved_config(run / "config.yaml")
    assert not ws.marker.exists()  # a BERT: transformers' own code loads it without the module
    return run


def _ok(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + result.stderr


def test_a_saved_trust_remote_code_is_never_followed(ws, received_run):
    run, merged = str(received_run), str(ws.root / "merged")
    for command in (
        ["predict", run, "a gorgeous film"],
        ["eval", run, "--split", "validation"],
        ["merge", run, "--out", merged],
        ["predict", merged, "a gorgeous film"],
        ["inspect", run, "--out", str(ws.root / "inspect")],
        ["predict", str(ws.model), "--adapter", f"a={run}", "a gorgeous film"],
    ):
        _ok(command)
        assert not ws.marker.exists(), command
    _ok(["predict", str(run), "a gorgeous film", "--trust-remote-code"])  # the command line grants it
    assert ws.marker.read_text() == "the model folder's code ran"


def test_resuming_a_received_run_does_not_follow_its_saved_trust_remote_code(ws):
    out = ws.root / "runs" / "r"
    with pytest.raises(TrainingInterrupted):
        train(load_config(None, ws.settings("train.max_steps=3")), out, callbacks=[SignalAt(1)])
    grant_in_saved_config(out.parent / ".r.partial" / "config.yaml")
    _ok(["train", "--resume", str(out)])
    assert not ws.marker.exists()
    assert json.loads((out / "metrics.json").read_text())["resumed_from_steps"] == [1]
    assert "trust_remote_code: false" in (out / "config.yaml").read_text()


def test_a_model_that_needs_its_code_says_to_pass_the_flag(ws, tiny_bert_dir):
    model, marker = remote_code_model(ws.root, tiny_bert_dir, model_type="marker-bert")
    result = runner.invoke(app, ["predict", str(model), "a gorgeous film"])
    assert_one_line_error(result, "add --trust-remote-code if you trust that code")
    assert not marker.exists()


def test_a_config_file_cannot_grant_trust_remote_code(ws):
    path = ws.root / "c.yaml"
    path.write_text("model:\n  trust_remote_code: true\n")
    with pytest.raises(LoraFtError, match="a file cannot grant that: add --trust-remote-code"):
        load_config(path)
    assert load_config(path, trust_remote_code=True).model.trust_remote_code is True
    assert load_config(path, ["model.trust_remote_code=true"]).model.trust_remote_code is True
    assert load_config(path, ["model.trust_remote_code=false"]).model.trust_remote_code is False
    assert load_config(None, trust_remote_code=True).model.trust_remote_code is True
    assert load_config(None).model.trust_remote_code is False
    # What a saved run says is not read: only the caller's argument.
    assert config_from_dict(read_yaml(path)).model.trust_remote_code is False
    result = runner.invoke(app, ["train", str(path), "--out", str(ws.root / "runs" / "x")])
    assert_one_line_error(result, "add --trust-remote-code")
    assert not (ws.root / "runs").exists()


# --- planted symbolic links


def _interrupted(ws: Ws, out: Path) -> Path:
    """An interrupted run of ``out`` as a Ctrl-C leaves it (a checkpoint at step 3), to be resumed."""
    partial = out.parent / f".{out.name}.partial"
    (partial / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (partial / "checkpoints" / "checkpoint-3" / "resume.json").write_text("{}")
    (partial / "config.yaml").write_text(dump_config(load_config(None, ws.settings())))
    (partial / "log.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    return partial


def _victims(root: Path) -> tuple[Path, Path]:
    victim = root / "victim.txt"
    victim.write_text("precious\n")
    victim_dir = root / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / ".precious").write_text("precious\n")  # a tidy of checkpoints/ would delete dot-entries
    return victim, victim_dir


@pytest.mark.parametrize(
    "name",
    [".lock", ".config.yaml.tmp", "log.jsonl", "config.yaml", "metrics.json", "checkpoints", "partial"],
)
def test_resume_refuses_planted_symlinks_and_leaves_their_targets(ws, name):
    out = ws.root / "runs" / "r"
    partial = _interrupted(ws, out)
    victim, victim_dir = _victims(ws.root)
    if name == "partial":  # the in-progress directory itself is a link to someone's directory
        shutil.copytree(partial, victim_dir, dirs_exist_ok=True)
        shutil.rmtree(partial)
        partial.symlink_to(victim_dir)
    else:
        link = partial / name
        target = victim_dir if name == "checkpoints" else victim
        if link.is_dir():
            shutil.rmtree(link)
        else:
            link.unlink(missing_ok=True)
        link.symlink_to(target)
    before = {p.name: p.read_text() for p in [victim, *victim_dir.rglob("*")] if p.is_file()}
    result = runner.invoke(app, ["train", "--resume", str(out)])
    assert_one_line_error(result, "never through a link it did not make")
    assert {p.name: p.read_text() for p in [victim, *victim_dir.rglob("*")] if p.is_file()} == before
    assert not out.exists()


@pytest.mark.parametrize("name", [".lock", "log.jsonl"])
def test_a_planted_fifo_is_refused_not_waited_on(ws, name):
    """Opening a FIFO waits for its other end: a received run with one at .lock hung resume forever."""
    out = ws.root / "runs" / "r"
    partial = _interrupted(ws, out)
    fifo = partial / name
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    # Both ends held here, so that no open of it can wait, even in a lora-ft without the check.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        resumed = runner.invoke(app, ["train", "--resume", str(out)])
        settings = [w for s in ws.settings() for w in ("--set", s)]
        fresh = runner.invoke(app, ["train", *settings, "--out", str(out), "--force"])
    finally:
        os.close(fd)
    assert_one_line_error(resumed, f"{fifo} is not a regular file (a FIFO, socket or device)")
    if name == ".lock":  # the only one a fresh run opens before it discards the directory
        assert_one_line_error(fresh, f"{fifo} is not a regular file (a FIFO, socket or device)")
        assert not out.exists()
    else:
        assert fresh.exit_code == 0, fresh.output


def test_a_fresh_run_does_not_discard_a_linked_in_progress_directory(ws):
    out = ws.root / "runs" / "r"
    _, victim_dir = _victims(ws.root)
    out.parent.mkdir(parents=True)
    (out.parent / ".r.partial").symlink_to(victim_dir)
    result = runner.invoke(
        app, ["train", *[w for s in ws.settings() for w in ("--set", s)], "--out", str(out), "--force"]
    )
    assert_one_line_error(result, "never through a link it did not make")
    assert (victim_dir / ".precious").read_text() == "precious\n"


def test_our_own_files_are_never_opened_through_a_link(ws, tmp_path):
    from lora_ft.training.callbacks import JsonlLogCallback
    from lora_ft.training.rundir import RunDir

    victim, _ = _victims(tmp_path)
    # The lock, even with the directory scan bypassed: O_NOFOLLOW, not a truncated victim.
    run = RunDir(tmp_path / "r")
    run.partial.mkdir()
    (run.partial / ".lock").symlink_to(victim)
    with pytest.raises(LoraFtError, match="is a symbolic link"):
        run.claim(fresh=False)
    # A temporary's name taken by a link: O_EXCL refuses it; the rename target may be a link (replaced).
    (tmp_path / f".config.yaml.tmp-{os.getpid()}").symlink_to(victim)
    with pytest.raises(LoraFtError, match="is a symbolic link"):
        write_atomic(tmp_path / "config.yaml", "x: 1\n")
    (tmp_path / "metrics.json").symlink_to(victim)
    write_atomic(tmp_path / "metrics.json", "{}\n")
    assert not (tmp_path / "metrics.json").is_symlink() and (tmp_path / "metrics.json").read_text() == "{}\n"
    # log.jsonl dangling to a file that does not exist yet: appending must not create it.
    (tmp_path / "log.jsonl").symlink_to(tmp_path / "created-elsewhere")
    log = JsonlLogCallback(tmp_path / "log.jsonl")

    class State:
        is_world_process_zero, global_step, epoch = True, 1, 0.5

    with pytest.raises(LoraFtError, match="is a symbolic link"):
        log.on_log(None, State(), None, logs={"loss": 0.5})
    assert not (tmp_path / "created-elsewhere").exists()
    assert victim.read_text() == "precious\n"
    with pytest.raises(LoraFtError, match="is a symbolic link"):  # reading the lock's pid, too
        open_own(run.partial / ".lock", os.O_RDONLY)


def test_a_model_directory_made_of_links_still_loads(tmp_path, tiny_bert_dir):
    """The Hugging Face hub cache keeps every file of a snapshot as a link into blobs/."""
    from lora_ft.config import ModelConfig
    from lora_ft.data.task import Task
    from lora_ft.training.modeling import load_model

    linked = tmp_path / "snapshot"
    linked.mkdir()
    for f in tiny_bert_dir.iterdir():
        (linked / f.name).symlink_to(f)
    loaded = load_model(ModelConfig(name=str(linked)), Task.legacy(["negative", "positive"]))
    assert loaded.model.config.num_hidden_layers == 2


# --- YAML aliases, oversized and over-nested records

# Nine anchors of nine aliases each: 9**9 (387 million) "lol"s once expanded; under 450 bytes of text.
BOMB = 'train:\n  trainer:\n    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"    {chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def test_yaml_aliases_are_refused_and_plain_yaml_loads(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text("lora: &l {r: 4}\ntrain: {trainer: {x: *l}}\n")
    with pytest.raises(LoraFtError, match=r"found the alias \*l; lora-ft configs do not expand YAML aliases"):
        load_config(small)
    with pytest.raises(LoraFtError, match=r"--set train.trainer: cannot parse value .*found the alias \*x"):
        load_config(None, ["train.trainer={a: &x [1], b: *x}"])
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB.encode()) < 450
    result = runner.invoke(app, ["train", str(bomb)])
    assert_one_line_error(result, "found the alias *a")
    anchored = tmp_path / "anchored.yaml"  # an anchor nobody refers to is harmless
    anchored.write_text("lora: &l {r: 4, alpha: 8}\ntrain: {trainer: {seed: 3}}\n")
    cfg = load_config(anchored)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.train.trainer) == (4, 8.0, {"seed": 3})
    for shipped in sorted(Path(__file__).parents[1].glob("lora_ft/configs/*.yaml")):
        load_config(shipped)


def test_a_saved_config_is_written_without_aliases(tmp_path):
    shared = ["query", "value"]
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(load_config(None), {"versions": {"a": shared, "b": shared}}))
    assert "&" not in path.read_text()
    assert read_yaml(path)["versions"] == {"a": shared, "b": shared}


@pytest.mark.parametrize("content", [b"[" * 100_000, b" " * (MAX_RECORD_BYTES + 1)], ids=["deep", "huge"])
def test_an_adapter_config_too_deep_or_too_large_is_one_line(tmp_path, content):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes(content)
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    result = runner.invoke(app, ["predict", str(adapter), "a gorgeous film"])
    assert_one_line_error(result, "nested too deeply" if content[:1] == b"[" else "is larger than 8 MiB")


def test_a_labels_file_too_deep_is_one_line(tmp_path):
    from lora_ft.config import DataConfig
    from lora_ft.data.loading import load_data

    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", toy_rows(8))
    write_split(data / "validation.csv", toy_rows(4, 100))
    (data / "labels.json").write_text("[" * 100_000)
    with pytest.raises(LoraFtError, match="label list .* is nested too deeply"):
        load_data(DataConfig(name=str(data)))


def test_compare_passes_its_command_lines_grant_to_each_run(ws):
    from lora_ft.compare.runner import compare
    from lora_ft.compare.worker import train_one

    granted = []

    def runner(config_path, run_dir, log_path, force, emit, trust_remote_code):
        granted.append(trust_remote_code)
        if trust_remote_code:  # the run's config file says true; the worker needs the grant beside it
            with pytest.raises(LoraFtError, match="a file cannot grant that"):
                train_one(config_path, run_dir)
        return "not trained in this test"

    trusted = load_config(None, ws.settings(), trust_remote_code=True)
    compare(trusted, ws.root / "c1", methods=["head"], runner=runner)
    compare(load_config(None, ws.settings()), ws.root / "c2", methods=["head"], runner=runner)
    assert granted == [True, False]
