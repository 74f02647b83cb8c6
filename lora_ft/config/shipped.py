"""The configs that ship inside the package, ``lora_ft/configs/*.yaml``: their one copy, so a pip install
has them as a checkout does. ``lora-ft configs`` lists, shows and copies them, and a config argument that
names no existing file finds one by name: ``smoke``, ``smoke.yaml`` or the README's ``configs/smoke.yaml``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from lora_ft.errors import LoraFtError
from lora_ft.fsutil import read_record, write_new

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "configs"
SUFFIX = ".yaml"
# The folder the README's commands name them under (a checkout kept them there before they shipped).
_README_FOLDER = Path("configs")


def shipped_configs() -> dict[str, Path]:
    """Every shipped config by name (its file name without ``.yaml``), in name order."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob(f"*{SUFFIX}"), key=lambda p: p.stem)}


def describe(path: Path) -> str:
    """What a config is for: its first comment line, without the ``#``."""
    for line in read_record(path, "config file").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def shipped_config(name: str) -> Path:
    """The path of the shipped config ``name`` (``default`` or ``default.yaml``).

    Raises:
        LoraFtError: no shipped config has that name.
    """
    stem = name.removesuffix(SUFFIX)
    found = shipped_configs()
    if stem not in found:
        close = difflib.get_close_matches(stem, list(found), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise LoraFtError(
            f"no shipped config is named {name!r}; {hint}the shipped configs are {', '.join(found)} "
            "(lora-ft configs lists them)"
        )
    return found[stem]


def shipped_text(name: str) -> str:
    """The text of the shipped config ``name``, comments and all.

    Raises:
        LoraFtError: no shipped config has that name.
    """
    return read_record(shipped_config(name), "config file")


def resolve_config_path(path: str | Path) -> Path:
    """``path`` if anything exists there, else the shipped config it names, else ``path`` unchanged.

    A bare name (``smoke``, ``smoke.yaml``) or ``configs/NAME.yaml`` relative to the current directory
    names a shipped config; a file of the user's at that path always wins over it.
    """
    p = Path(path)
    if os.path.lexists(p) or p.parent not in (Path("."), _README_FOLDER) or p.suffix not in ("", SUFFIX):
        return p
    return shipped_configs().get(p.stem, p)


def copy_shipped(name: str, dest: Path) -> Path:
    """Write the shipped config ``name`` to ``dest``, or into it as ``NAME.yaml`` when ``dest`` is a
    directory; the path written.

    Raises:
        LoraFtError: an unknown name, a destination that exists (nothing is replaced), or a destination
            whose folder does not exist.
    """
    target = dest / shipped_config(name).name if dest.is_dir() else dest
    if not target.parent.is_dir():
        raise LoraFtError(
            f"cannot write {target}: the folder {target.parent} does not exist; create it first"
        )
    write_new(target, shipped_text(name))
    return target
