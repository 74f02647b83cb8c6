"""Interrupt and resume: signals at a known step, kills, atomic checkpoints, and exactness.

What is bit-exact (same machine, same seed, CPU): the adapter tensors, validation/test metrics,
train_loss, global_steps and every logged loss/grad_norm/learning-rate/eval line. Only wall-clock
figures (runtimes, samples per second) differ.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from typer.testing import CliRunner

from lora_ft.config import load_config
from lora_ft.errors import LoraFtError
from lora_ft.training.checkpoint import install, last_checkpoint, rotate, tidy_checkpoints
from lora_ft.training.signals import TrainingInterrupted
from lora_ft.training.train import train

from .conftest import CrashAt, SignalAt, toy_rows, write_split


def _timing(key: str) -> bool:
    """Wall-clock figures: the only things a resumed run may report differently."""
    return key.endswith(("_runtime", "_per_second"))


# 48 rows, batch 8: 6 steps per epoch, 12 in all; dropout on, so the RNG state matters.
RUN_SETTINGS = [
    "data.max_length=32", "lora.r=2", "lora.alpha=4", "lora.dropout=0.1", "train.epochs=2",
    "train.batch_size=8", "train.logging_steps=1", "train.save_strategy=no", "train.threads=1",
]  # fmt: skip


def _cfg(model_dir: Path, data_dir: Path, *extra: str):
    return load_config(None, [f"model.name={model_dir}", f"data.name={data_dir}", *RUN_SETTINGS, *extra])


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _log(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not _timing(k)} for line in lines]


def _assert_same_run(ref: Path, run: Path, ref_metrics: dict, metrics: dict) -> None:
    for key in ("validation", "test", "train_loss", "global_steps"):
        assert metrics[key] == ref_metrics[key], key
    a, b = _adapter(ref), _adapter(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _log(run) == _log(ref)


@dataclass
class Toy:
    model: Path
    data: Path
    ref: Path  # the uninterrupted run every resumed one is compared with
    ref_metrics: dict

    def cfg(self, *extra: str):
        return _cfg(self.model, self.data, *extra)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_bert_dir) -> Toy:
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    data.mkdir()
    write_split(data / "train.csv", toy_rows(48))
    write_split(data / "validation.csv", toy_rows(16, 100))
    write_split(data / "test.csv", toy_rows(16, 200))
    ref = root / "ref"
    return Toy(tiny_bert_dir, data, ref, train(_cfg(tiny_bert_dir, data), ref))


def test_interrupted_three_times_and_resumed_equals_the_uninterrupted_run(tmp_path, toy):
    cfg, ref, ref_metrics = toy.cfg(), toy.ref, toy.ref_metrics
    out = tmp_path / "run"
    partial = tmp_path / ".run.partial"
    # Mid-epoch 0, the end of epoch 0, mid-epoch 1 (where the Trainer alone would draw a new data order).
    for step in (3, 6, 8):
        with pytest.raises(TrainingInterrupted) as info:
            train(cfg, out, callbacks=[SignalAt(step)], resume=step != 3)
        assert info.value.exit_code == 130
        message = str(info.value)
        assert f"interrupted by SIGINT at step {step} of 12" in message
        assert message.endswith(f"resume with: lora-ft train --resume {out}")
        assert last_checkpoint(partial / "checkpoints").name == f"checkpoint-{step}"
        assert not out.exists()
    metrics = train(cfg, out, resume=True)
    assert metrics["resumed_from_steps"] == [3, 6, 8]
    assert ref_metrics["resumed_from_steps"] == []
    _assert_same_run(ref, out, ref_metrics, metrics)
    # save_strategy "no": the interrupt checkpoints were insurance, not outputs; nothing hidden is left.
    assert not (out / "checkpoints").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


class Snapshot(TrainerCallback):
    """The trainable tensors as the training loop first sees them."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.tensors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class FailSavingAt(TrainerCallback):
    """Make the checkpoint of step ``step`` die half-written, as a second Ctrl-C or a kill would."""

    def __init__(self, monkeypatch, step: int):
        self.monkeypatch, self.step = monkeypatch, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:

            def die(path):
                assert any(path.iterdir()), "the checkpoint was not being written"
                raise KeyboardInterrupt

            self.monkeypatch.setattr("lora_ft.training.checkpoint.fsync_tree", die)


def test_second_signal_and_death_mid_save_keep_the_last_good_checkpoint(tmp_path, toy, monkeypatch):
    ref, ref_metrics = toy.ref, toy.ref_metrics
    cfg = toy.cfg("train.save_strategy=steps", "train.save_steps=2")
    out, checkpoints = tmp_path / "run", tmp_path / ".run.partial" / "checkpoints"

    with pytest.raises(TrainingInterrupted) as info:  # Ctrl-C twice during step 5: abort at once
        train(cfg, out, callbacks=[SignalAt(5, times=2)])
    assert info.value.exit_code == 130
    assert (
        str(info.value)
        == f"aborted by SIGINT; kept the last checkpoint (step 4): resume with: lora-ft train --resume {out}"
    )

    with pytest.raises(TrainingInterrupted, match=r"kept the last checkpoint \(step 6\)"):
        train(cfg, out, resume=True, callbacks=[FailSavingAt(monkeypatch, 8)])
    monkeypatch.undo()
    # save_total_limit=1 (the default): checkpoint-4 went when checkpoint-6 was complete.
    assert sorted(p.name for p in checkpoints.iterdir()) == [".checkpoint-8.partial", "checkpoint-6"]

    saved = load_file(str(checkpoints / "checkpoint-6" / "trainable.safetensors"))
    snapshot = Snapshot()
    metrics = train(cfg, out, resume=True, callbacks=[snapshot])
    assert snapshot.tensors.keys() == saved.keys()
    for name, tensor in saved.items():  # loaded exactly; a re-initialised adapter would have B == 0
        assert torch.equal(snapshot.tensors[name], tensor), name
    assert any("lora_B" in n and t.abs().sum() > 0 for n, t in saved.items())
    assert metrics["resumed_from_steps"] == [4, 6]
    _assert_same_run(ref, out, ref_metrics, metrics)  # the checkpoint cadence does not change the result
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12"]


def test_a_crash_keeps_the_last_checkpoint_and_says_so(tmp_path, toy, caplog):
    cfg = toy.cfg("train.save_strategy=steps", "train.save_steps=2")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="a bug in someone's callback"):
        train(cfg, out, callbacks=[CrashAt(5)])
    assert f"kept the last checkpoint (step 4): resume with: lora-ft train --resume {out}" in caplog.text
    metrics = train(cfg, out, resume=True)
    assert metrics["resumed_from_steps"] == [4]
    _assert_same_run(toy.ref, out, toy.ref_metrics, metrics)


def test_resume_refuses_a_changed_model_and_allows_a_longer_budget(tmp_path, toy):
    cfg = toy.cfg()
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(cfg, out, callbacks=[SignalAt(2, signal.SIGTERM)])
    for change, phrase in [
        ("lora.r=4", "lora.r (2 -> 4)"),
        ("lora.targets=[query]", "lora.targets ('all-linear' -> ['query'])"),
        ("train.method=full", "train.method ('lora' -> 'full')"),
        ("train.seed=1", "train.seed (42 -> 1)"),
    ]:
        with pytest.raises(LoraFtError, match="cannot resume") as info:
            train(toy.cfg(change), out, resume=True)
        assert phrase in str(info.value)
    longer = toy.cfg("train.epochs=3")
    metrics = train(longer, out, resume=True)
    assert metrics["global_steps"] == 18 and metrics["resumed_from_steps"] == [2]
    assert "epochs: 3.0" in (out / "config.yaml").read_text()


def test_signal_before_training_aborts_and_leaves_nothing(tmp_path, toy, monkeypatch):
    import lora_ft.training.train as train_module

    real = train_module.prepare

    def prepare_then_sigterm(*args, **kwargs):
        prepared = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return prepared

    monkeypatch.setattr(train_module, "prepare", prepare_then_sigterm)
    with pytest.raises(TrainingInterrupted, match="aborted by SIGTERM; nothing to resume") as info:
        train(toy.cfg(), tmp_path / "run")
    assert info.value.exit_code == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_cli_sigterm_exits_143_with_the_resume_command(tmp_path, toy, monkeypatch):
    import lora_ft.training.train as train_module
    from lora_ft.cli.app import app

    ref, ref_metrics = toy.ref, toy.ref_metrics
    real = train_module.train

    def with_sigterm_at_3(*args, callbacks=(), **kwargs):
        return real(*args, callbacks=[*callbacks, SignalAt(3, signal.SIGTERM)], **kwargs)

    out = tmp_path / "run"
    sets = [f"model.name={toy.model}", f"data.name={toy.data}", *RUN_SETTINGS]
    monkeypatch.setattr(train_module, "train", with_sigterm_at_3)
    result = CliRunner().invoke(app, ["train", *[a for s in sets for a in ("--set", s)], "--out", str(out)])
    assert result.exit_code == 143, result.output
    assert "Traceback" not in result.output + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: interrupted by SIGTERM at step 3 of 12; saved {tmp_path / '.run.partial/checkpoints/checkpoint-3'}; "
        f"resume with: lora-ft train --resume {out}"
    )
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["train", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    _assert_same_run(ref, out, ref_metrics, json.loads((out / "metrics.json").read_text()))


KILLABLE = """
import sys, time
from transformers import TrainerCallback
from typer.testing import CliRunner
from lora_ft.config import load_config
from lora_ft.training.train import train

class Slow(TrainerCallback):  # slow steps let the test kill mid-run; the numerics are untouched
    def on_step_end(self, *args, **kwargs):
        time.sleep(0.3)

train(load_config(None, sys.argv[2:]), sys.argv[1], callbacks=[Slow()])
"""


def test_kill_9_mid_run_then_resume(tmp_path, toy):
    ref, ref_metrics = toy.ref, toy.ref_metrics
    sets = [f"model.name={toy.model}", f"data.name={toy.data}", *RUN_SETTINGS]
    sets += ["train.save_strategy=steps", "train.save_steps=1", "train.save_total_limit=2"]
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(out), *sets], stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not (partial / "checkpoints" / "checkpoint-3").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler runs; whatever was being written stays as it was
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (partial / ".lock").is_file()  # left behind, but no process holds it any more

    metrics = train(load_config(partial / "config.yaml"), out, resume=True)
    assert metrics["resumed_from_steps"][0] >= 3
    _assert_same_run(ref, out, ref_metrics, metrics)
    # A kill between a checkpoint's rename and the rotation may leave one extra; the next save trims it.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-11", "checkpoint-12"]


def _fake_checkpoint(directory: Path, step: int) -> Path:
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "resume.json").write_text(json.dumps({"step": step}))
    return path


def test_install_rotate_and_tidy_leave_only_complete_checkpoints(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step, age in ((2, 0), (10, 200), (9, 100)):  # mtimes in the opposite order to the steps
        path = _fake_checkpoint(ckpts, step)
        os.utime(path, (time.time() - age, time.time() - age))
    rotate(ckpts, 2)
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-10", "checkpoint-9"]

    # A kill between install's two renames: checkpoint-10 exists only as .checkpoint-10.old.
    new = _fake_checkpoint(ckpts / "staging", 10)
    (new / "marker").write_text("new")
    os.replace(ckpts / "checkpoint-10", ckpts / ".checkpoint-10.old")
    (ckpts / ".checkpoint-11.partial").mkdir()  # a save killed half-way
    (ckpts / ".checkpoint-8.deleting").mkdir()  # a rotation killed half-way
    assert last_checkpoint(ckpts).name == "checkpoint-9"
    tidy_checkpoints(ckpts)
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-10", "checkpoint-9", "staging"]
    install(new, ckpts / "checkpoint-10")  # the same step saved twice: replaced whole
    assert (ckpts / "checkpoint-10" / "marker").read_text() == "new"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-10", "checkpoint-9", "staging"]

    (ckpts / "checkpoint-12").mkdir()  # not written by lora-ft: no resume.json
    assert last_checkpoint(ckpts).name == "checkpoint-10"


# 9 steps: off the 6-step epoch, so a resume there lands mid-epoch 1 (where the Trainer trains on).
OFF_EPOCH = "train.max_steps=9"


@pytest.fixture(scope="module")
def off_epoch_ref(toy, tmp_path_factory) -> tuple[Path, dict]:
    ref = tmp_path_factory.mktemp("off-epoch") / "ref"
    return ref, train(toy.cfg(OFF_EPOCH), ref)


class CrashInEvaluation(TrainerCallback):
    """A crash (or kill) in the evaluation at ``step`` whose metrics carry ``prefix``."""

    def __init__(self, prefix: str, step: int = 9):
        self.prefix, self.step = prefix, step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step == self.step and f"{self.prefix}_loss" in metrics:
            raise ValueError(f"killed in the {self.prefix} evaluation")


@pytest.mark.parametrize("where", ["eval", "test", "adapter"])
def test_killed_after_the_final_checkpoint_resumes_without_training_past_the_budget(
    tmp_path, toy, off_epoch_ref, monkeypatch, where
):
    """Killed in the last epoch-end validation, in the test evaluation, or after adapter/ was written."""
    import lora_ft.training.train as train_module

    ref, ref_metrics = off_epoch_ref
    cfg, out = toy.cfg(OFF_EPOCH), tmp_path / "run"
    callbacks = []
    if where == "adapter":
        real = train_module._save_outputs

        def save_then_die(*args):
            real(*args)
            raise ValueError("killed before metrics.json")

        monkeypatch.setattr(train_module, "_save_outputs", save_then_die)
    else:
        callbacks = [CrashInEvaluation(where)]
    with pytest.raises(ValueError, match="killed"):
        train(cfg, out, callbacks=callbacks)
    monkeypatch.undo()
    assert (tmp_path / ".run.partial" / "adapter").is_dir() == (where == "adapter")
    metrics = train(cfg, out, resume=True)
    assert metrics["global_steps"] == 9 and metrics["resumed_from_steps"] == [9]
    _assert_same_run(ref, out, ref_metrics, metrics)


def test_resume_below_the_step_reached_is_refused_and_at_it_trains_nothing(tmp_path, toy):
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    with pytest.raises(TrainingInterrupted):
        train(toy.cfg(), out, callbacks=[SignalAt(8)])
    saved_config = (partial / "config.yaml").read_text()
    with pytest.raises(LoraFtError) as info:
        train(toy.cfg("train.max_steps=5"), out, resume=True)
    assert str(info.value).startswith(
        "cannot resume at step 8 with a budget of 5 steps: the run has trained past it; resume with a "
        "budget of at least 8 steps (train.max_steps or train.epochs)"
    )
    assert str(info.value).endswith(f"resume with: lora-ft train --resume {out}")
    assert (partial / "config.yaml").read_text() == saved_config  # that resume command still works
    saved = load_file(str(partial / "checkpoints" / "checkpoint-8" / "trainable.safetensors"))

    at_end = SnapshotAtEnd()
    metrics = train(toy.cfg("train.max_steps=8"), out, resume=True, callbacks=[at_end])
    assert metrics["global_steps"] == 8 and metrics["resumed_from_steps"] == [8]
    assert at_end.tensors.keys() == saved.keys()
    for name, tensor in saved.items():  # not one step more
        assert torch.equal(at_end.tensors[name], tensor), name


class SnapshotAtEnd(Snapshot):
    """The trainable tensors as training leaves them."""

    def on_train_begin(self, *args, **kwargs):
        pass

    def on_train_end(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model)


def _damage(ckpt: Path, name: str) -> None:
    path = ckpt / name
    if name.endswith(".json"):
        path.write_text('{"global_step": 5, "step"')  # cut short
    elif name == "trainable.safetensors":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.unlink()


DAMAGE = [
    "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainable.safetensors", "resume.json",
    "trainer_state.json",
]  # fmt: skip


@pytest.mark.parametrize("name", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, toy, caplog, name):
    cfg = toy.cfg("train.save_strategy=steps", "train.save_steps=2", "train.save_total_limit=2")
    out, checkpoints = tmp_path / "run", tmp_path / ".run.partial" / "checkpoints"
    with pytest.raises(TrainingInterrupted):
        train(cfg, out, callbacks=[SignalAt(5)])
    _damage(checkpoints / "checkpoint-5", name)
    metrics = train(cfg, out, resume=True)
    assert metrics["resumed_from_steps"] == [4]
    assert f"{checkpoints / 'checkpoint-5'} is damaged ({name}" in caplog.text
    assert f"resuming from {checkpoints / 'checkpoint-4'}" in caplog.text
    _assert_same_run(toy.ref, out, toy.ref_metrics, metrics)


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt"])
def test_a_missing_optimizer_or_scheduler_with_no_intact_checkpoint_is_refused(tmp_path, toy, name):
    out, checkpoints = tmp_path / "run", tmp_path / ".run.partial" / "checkpoints"
    with pytest.raises(TrainingInterrupted):
        train(toy.cfg(), out, callbacks=[SignalAt(5)])
    (checkpoints / "checkpoint-5" / name).unlink()
    with pytest.raises(LoraFtError) as info:
        train(toy.cfg(), out, resume=True)
    message = str(info.value)
    assert message.startswith(
        f"cannot resume {out} exactly: {checkpoints / 'checkpoint-5'} is damaged ({name} "
    )
    assert "no intact checkpoint is left" in message and "--force" in message
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-5"]  # nothing discarded


@pytest.mark.parametrize(
    "setting, phrase",
    [
        (
            "train.trainer.output_dir={tmp}/elsewhere",
            "train.trainer.output_dir is lora-ft's to set: use --out",
        ),
        (
            "train.trainer.learning_rate=0.1",
            "train.trainer.learning_rate is lora-ft's to set: use train.learning_rate",
        ),
        ("train.trainer.save_only_model=true", "train.trainer.save_only_model cannot be used"),
        (
            "train.trainer.load_best_model_at_end=true",
            "train.trainer.load_best_model_at_end is lora-ft's to set: use train.load_best_model",
        ),
        (
            "train.trainer.restore_callback_states_from_checkpoint=false",
            "train.trainer.restore_callback_states_from_checkpoint is lora-ft's to set: use --resume",
        ),
    ],
)
def test_trainer_settings_that_would_break_resume_are_refused_before_anything_is_written(
    tmp_path, toy, setting, phrase
):
    with pytest.raises(LoraFtError) as info:
        train(toy.cfg("train.max_steps=2", setting.format(tmp=tmp_path)), tmp_path / "run")
    assert str(info.value).startswith(phrase), str(info.value)
    assert list(tmp_path.iterdir()) == []


BEST = [
    "train.eval_strategy=steps", "train.eval_steps=2", "train.save_strategy=steps", "train.save_steps=2",
    "train.load_best_model=true", "train.metric_for_best=accuracy", "train.early_stopping_patience=2",
]  # fmt: skip


def _evals(run: Path) -> list[dict]:
    return [line for line in _log(run) if "eval_loss" in line]


def test_a_resume_continues_early_stopping_and_keeps_the_same_best_checkpoint(tmp_path, toy):
    cfg = toy.cfg(*BEST)
    ref = tmp_path / "ref"
    ref_metrics = train(cfg, ref)
    assert ref_metrics["stopped_early"] and ref_metrics["best_step"] < ref_metrics["global_steps"] < 12
    # Interrupted after the first evaluation that did not improve: the checkpoint holds a count of 1,
    # and a resume counting from 0 again would train past the step the run stopped at.
    best = 0.0
    for line in _evals(ref):
        if line["eval_accuracy"] <= best:
            break
        best = line["eval_accuracy"]
    assert line["step"] < ref_metrics["global_steps"]
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(cfg, out, callbacks=[SignalAt(line["step"] + 1)])
    metrics = train(cfg, out, resume=True)
    assert metrics["resumed_from_steps"] == [line["step"] + 1]
    for key in ("best_step", "best_metric", "stopped_early"):
        assert metrics[key] == ref_metrics[key], key
    _assert_same_run(ref, out, ref_metrics, metrics)


def test_killed_in_the_final_evaluation_the_resume_counts_it_towards_the_best_checkpoint(tmp_path, toy):
    # metric_for_best: loss; at this rate the validation loss still falls in the second epoch
    cfg = toy.cfg("train.learning_rate=2e-3", "train.save_strategy=epoch", "train.load_best_model=true")
    ref = tmp_path / "ref"
    ref_metrics = train(cfg, ref)
    assert ref_metrics["best_step"] == 12  # the final evaluation is the best: the one a resume must run
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="killed"):
        train(cfg, out, callbacks=[CrashInEvaluation("eval", step=12)])
    metrics = train(cfg, out, resume=True)
    assert metrics["resumed_from_steps"] == [12] and metrics["best_step"] == 12
    _assert_same_run(ref, out, ref_metrics, metrics)
