"""The declared floors hold here, and the Trainer still has the members lora_ft/training/trainer.py relies on.

A floor below what the code needs installs a lora-ft that fails at run time; a Trainer release that
renames a private member breaks atomic checkpoints and exact resume, most of it silently.
"""

from __future__ import annotations

import ast
import inspect
import platform
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
# Every extra (dev, and the trackers: tensorboard, mlflow, trackio) is checked where it is installed.
EXTRAS = [Requirement(r) for group in PROJECT["optional-dependencies"].values() for r in group]

TRAINER_MODULE = ROOT / "lora_ft" / "training" / "trainer.py"
# CheckpointTrainer overrides these private methods: the Trainer calls them with its own arguments.
OVERRIDDEN = ["_save_checkpoint", "_load_from_checkpoint", "_load_best_model", "_get_train_sampler"]
# Private methods CheckpointTrainer calls without overriding them.
CALLED = ["_determine_best_metric"]
# Set by the Trainer's training loop (not class attributes); _ResumePolicy restores them on resume.
LOOP_STATE = ["_tr_loss", "_total_loss_scalar", "_globalstep_last_logged", "_initial_global_step"]
# Public methods CheckpointTrainer overrides: a changed signature would be called wrongly, silently.
PUBLIC_OVERRIDDEN = ["training_step", "get_batch_samples", "evaluate", "log", "save_model"]
OURS = {
    "_record",
    "_sampler",
    "_segment_start",
    "_sharded",
    "_staged",
    "_finish_checkpoint",
    "_evaluate_at_resume",
}


def _installed(req: Requirement) -> Version | None:
    try:
        return Version(version(req.name))
    except PackageNotFoundError:
        return None


def test_python_meets_requires_python():
    floor = SpecifierSet(PROJECT["requires-python"])
    assert floor.contains(platform.python_version()), f"Python {platform.python_version()} is not {floor}"


@pytest.mark.parametrize("req", RUNTIME + EXTRAS, ids=str)
def test_installed_version_meets_the_floor(req):
    have = _installed(req)
    if have is None and req in EXTRAS:
        pytest.skip(f"{req.name} (an extra) is not installed")
    assert have is not None, f"{req.name} is not installed (pyproject.toml requires {req})"
    assert req.specifier.contains(have, prereleases=True), (
        f"installed {req.name} {have} does not satisfy {req}"
    )


def _private_members_used() -> set[str]:
    """Private names CheckpointTrainer defines or that trainer.py reaches on the Trainer (self., t., super())."""
    tree = ast.parse(TRAINER_MODULE.read_text(encoding="utf-8"))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "CheckpointTrainer":
            used |= {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
        if isinstance(node, ast.Attribute):
            on = node.value
            if (isinstance(on, ast.Name) and on.id in ("self", "t")) or (
                isinstance(on, ast.Call) and getattr(on.func, "id", None) == "super"
            ):
                used.add(node.attr)
    return {n for n in used if n.startswith("_") and not n.startswith("__")}


def test_trainer_module_uses_no_private_trainer_member_left_out_here():
    unlisted = _private_members_used() - set(OVERRIDDEN) - set(CALLED) - set(LOOP_STATE) - OURS
    assert not unlisted, f"lora_ft/training/trainer.py uses {sorted(unlisted)}: add them to this test's lists"


def test_the_module_docstring_lists_exactly_the_private_members_touched():
    docstring = ast.get_docstring(ast.parse(TRAINER_MODULE.read_text(encoding="utf-8")))
    listed = set(re.findall(r"^  (_\w+(?:, _\w+)*):", docstring, re.MULTILINE))
    names = {name for group in listed for name in group.split(", ")}
    assert names == set(OVERRIDDEN) | set(CALLED) | set(LOOP_STATE), (
        "lora_ft/training/trainer.py's docstring and this test disagree on the private Trainer members used"
    )


@pytest.mark.parametrize("name", OVERRIDDEN + CALLED + LOOP_STATE + PUBLIC_OVERRIDDEN)
def test_trainer_has_the_member_we_rely_on(name):
    from transformers import Trainer, __version__

    from lora_ft.training.trainer import CheckpointTrainer

    if name in LOOP_STATE:
        assigned = re.search(rf"self\.{name}\s*=", inspect.getsource(Trainer))
        assert assigned, (
            f"transformers {__version__}: Trainer does not set self.{name} (lora_ft/training/trainer.py restores it)"
        )
        return
    assert hasattr(Trainer, name), (
        f"transformers {__version__}: Trainer has no {name} (lora_ft/training/trainer.py uses it)"
    )
    theirs = list(inspect.signature(getattr(Trainer, name)).parameters)
    ours = list(inspect.signature(getattr(CheckpointTrainer, name)).parameters)
    if ours == ["self", "args", "kwargs"]:  # passes every argument through unchanged
        return
    assert ours == theirs, (
        f"transformers {__version__}: Trainer.{name}{tuple(theirs)}, lora_ft overrides it as {tuple(ours)}"
    )
