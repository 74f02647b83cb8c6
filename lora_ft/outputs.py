"""Where lora-ft may publish an output directory (a run, a merged export, an inspect report, a
comparison), and publishing it there.

Every such output is built in a hidden temporary next to ``--out`` and renamed into place. An existing
``--out`` is replaced only with ``--force``, and only when lora-ft can prove it wrote it: it holds our
marker (``MARKER_NAME``, which lists every path we wrote), or it has the exact layout of an output
written before the marker existed. Nothing else is ever deleted, and no ``--out`` may be the current
directory, one of its ancestors, the home directory, a file system root or a symbolic link, ``--force``
or not. The renames themselves are ``fsutil``'s.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from lora_ft.errors import LoraFtError
from lora_ft.fsutil import give_default_modes, move_into_place, read_json_record, write_json

MARKER_NAME = ".lora-ft-output.json"
MARKER_MAX_BYTES = 1 << 20
COMPARISON = "comparison"

# Outputs written before the marker, recognised by their exact layout (frozen: new outputs carry the
# marker, so these never grow). A layout is (top-level names that must be present, what may be there):
# a pattern maps to None for a regular file, or to the layout of a directory, down to every file, so a
# directory of someone else's that only borrows one of our names (a run's model/) is never ours.
_Layout = dict[str, "_Layout | None"]
_HF_CHECKPOINT = (
    ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json")
    + ("tokenizer*.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json")
    + ("merges.txt", "*.model", "chat_template.jinja")
)
_TRAINER_CHECKPOINT = ("trainable.safetensors", "resume.json", "trainer_state.json", "optimizer.pt")
_TRAINER_CHECKPOINT += ("scheduler.pt", "scaler.pt", "rng_state*.pth")
_CHECKPOINTS: _Layout = {
    pattern: dict.fromkeys(_TRAINER_CHECKPOINT) for pattern in ("checkpoint-*", ".checkpoint-*")
}
_LEGACY_LAYOUTS: tuple[tuple[tuple[str, ...], _Layout], ...] = (
    (  # a run: config.yaml, metrics.json, log.jsonl, adapter/ or model/, checkpoints/
        ("config.yaml", "metrics.json"),
        dict.fromkeys(("config.yaml", "metrics.json", "log.jsonl"))
        | {"adapter": dict.fromkeys(("adapter_config.json", "adapter_model.safetensors"))}
        | {"model": dict.fromkeys(_HF_CHECKPOINT), "checkpoints": _CHECKPOINTS},
    ),
    (  # an inspect report
        ("inspect.json",),
        dict.fromkeys(("inspect.json", "lora_spectra.png", "lora_energy.png", "spectra_vs_full.png"))
        | dict.fromkeys(("energy_vs_full.png", "rank_summary.png")),
    ),
    (  # a merged export: a Hugging Face checkpoint, its tokenizer, our provenance and model card
        ("lora-ft.json", "config.json"),
        dict.fromkeys(("lora-ft.json", "README.md", *_HF_CHECKPOINT)),
    ),
)
# A comparison's directory from before the marker: its report, and runs/ (configs, logs, run dirs).
_LEGACY_COMPARISON = ("runs", "results.json", "report.md", "curves.png", "accuracy_vs_params.png")
_LEGACY_COMPARISON += ("accuracy_vs_rank.png",)


def path_exists(path: Path) -> bool:
    """``path.exists()``, with an unusable path (a name over the file system's limit) as a LoraFtError."""
    try:
        return path.exists()
    except OSError as exc:
        raise LoraFtError(f"output path {path} is not usable: {exc.strerror}; choose another --out") from None


def _protected(out: Path) -> str | None:
    """Why ``out`` can never be an output directory, or None."""
    real = Path(os.path.realpath(out))
    if real.parent == real or os.path.ismount(real):
        return "is a file system root"
    cwd = Path.cwd().resolve()
    if real == cwd:
        return "is the current directory"
    try:
        home = Path.home().resolve()
    except RuntimeError:  # no HOME and no password entry: there is no home directory to protect
        home = None
    if real == home:
        return "is the home directory"
    if real in cwd.parents:
        return "is an ancestor of the current directory"
    return None


def check_location(out: Path) -> None:
    """Refuse an ``--out`` that no command may write, ``--force`` or not: see the module docstring."""
    try:
        is_link = out.is_symlink()
    except OSError as exc:
        raise LoraFtError(f"output path {out} is not usable: {exc.strerror}; choose another --out") from None
    if is_link:
        raise LoraFtError(
            f"--out {out} is a symbolic link, and lora-ft does not write through a link it did not make; "
            f"give the directory itself ({os.path.realpath(out)}) or another --out"
        )
    why = _protected(out)
    if why is not None:
        raise LoraFtError(
            f"--out {out} {why}; lora-ft writes each output into a directory of its own: give a new one, "
            "e.g. --out runs/NAME"
        )
    if out.name == "..":  # publishing renames onto the name "..", which fails only once the work is done
        raise LoraFtError(
            f"--out {out} ends in '..'; name the directory itself ({os.path.realpath(out)}) or another --out"
        )
    if path_exists(out) and not out.is_dir():
        raise LoraFtError(f"output path {out} exists and is not a directory")


def _read_marker(directory: Path) -> dict | None:
    """Our marker in ``directory`` (a regular file, never followed through a link), or None."""
    path = directory / MARKER_NAME
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        marker = read_json_record(path, "output marker", MARKER_MAX_BYTES)
    except (OSError, UnicodeDecodeError, ValueError, LoraFtError):  # not ours: too big, not JSON
        return None
    return marker if isinstance(marker, dict) and marker.get("written_by") == "lora-ft" else None


def _tree(directory: Path) -> list[str]:
    """Every path under ``directory``, relative and sorted, without following links."""
    found = []
    for root, dirs, files in os.walk(directory):
        rel = Path(root).relative_to(directory)
        found += [(rel / name).as_posix() for name in dirs + files]
    return sorted(found)


def _outside_layout(path: Path, layout: _Layout | None) -> str | None:
    """The first path at or under ``path`` that ``layout`` does not allow (relative, ``""`` for ``path``
    itself), or None when all of it fits; a link never fits."""
    if path.is_symlink():
        return ""
    if layout is None:
        return None if path.is_file() else ""
    if not path.is_dir():
        return ""
    for child in sorted(path.iterdir()):
        inner = _outside_entry(child, layout)
        if inner is not None:
            return f"{child.name}/{inner}" if inner else child.name
    return None


def _outside_entry(path: Path, layout: _Layout) -> str | None:
    """``_outside_layout`` of ``path`` under the first pattern of the directory ``layout`` it matches."""
    patterns = [pattern for pattern in layout if fnmatch.fnmatchcase(path.name, pattern)]
    return _outside_layout(path, layout[patterns[0]]) if patterns else ""


def _foreign_inside(path: Path) -> str | None:
    """For a path our output does not list: None if it is a whole output of ours (or an empty directory),
    else what in it is not ours (``""``: the path itself)."""
    if path.is_symlink() or not path.is_dir():
        return ""
    return _foreign(path)


def _foreign(directory: Path) -> str | None:
    """The first path in ``directory`` that lora-ft cannot prove it wrote, or None when all of it is ours."""
    marker = _read_marker(directory)
    if marker is not None and isinstance(marker.get("entries"), list):
        ours = {str(entry) for entry in marker["entries"]} | {MARKER_NAME}
        nested: list[str] = []
        for rel in _tree(directory):
            if rel in ours or any(rel.startswith(n + "/") for n in nested):
                continue
            inner = _foreign_inside(directory / rel)
            if inner is None:
                nested.append(rel)  # an output of ours written inside this one later, e.g. RUN/inspect
                continue
            return f"{rel}/{inner}" if inner else rel
        return None
    entries = sorted(p.name for p in directory.iterdir())
    for required, layout in _LEGACY_LAYOUTS:
        if all((directory / name).exists() for name in required):
            for name in entries:
                path = directory / name
                outside = _outside_entry(path, layout)
                inner = _foreign_inside(path) if outside is not None else None  # e.g. RUN/inspect is ours
                if inner is not None:
                    found = outside or inner  # what breaks our layout in it, else its first foreign path
                    return f"{name}/{found}" if found else name
            return None
    return entries[0] if entries else None


def check_output_dir(out: Path, force: bool, sources: Iterable[Path] = ()) -> None:
    """Before any work: may a new output be published at ``out``? Raises a LoraFtError naming the fix.

    ``sources`` are the directories the command reads: an ``out`` that is one of them or holds one
    would replace its own input, ``--force`` or not.
    """
    check_location(out)
    target = out.resolve()
    for src in sources:
        if src.resolve().is_relative_to(target):
            raise LoraFtError(f"--out {out} would replace the source {src}; choose another --out")
    if path_exists(out):
        foreign = _foreign(out)
        if foreign is not None:
            raise LoraFtError(
                f"--out {out} holds {foreign}, which lora-ft did not write, so it is not replaced; choose "
                "another --out (--force replaces only an output lora-ft wrote)"
            )
        if not force:
            raise LoraFtError(
                f"output directory {out} already exists; pass --force to replace it, or choose another --out"
            )
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise LoraFtError(f"cannot write to {parent}: permission denied (choose another --out)")


def check_comparison_dir(out: Path) -> None:
    """May a comparison write into ``out``: absent, empty, or a comparison's directory (``--force`` or not)."""
    check_location(out)
    if not path_exists(out) or not any(out.iterdir()):
        return
    marker = _read_marker(out)
    if marker is not None and marker.get("kind") == COMPARISON:
        return
    entries = sorted(p.name for p in out.iterdir())
    legacy = ((out / "runs").is_dir() or (out / "results.json").is_file()) and all(
        name in _LEGACY_COMPARISON and not (out / name).is_symlink() for name in entries
    )
    if not legacy:
        foreign = next((name for name in entries if name not in _LEGACY_COMPARISON), entries[0])
        raise LoraFtError(
            f"--out {out} is a non-empty directory that no comparison wrote (it holds {foreign}); "
            "choose another --out"
        )


def write_marker(directory: Path, kind: str, entries: list[str] | None = None) -> None:
    """Mark ``directory`` as lora-ft's: ``entries`` (its relative paths) make it replaceable with --force."""
    marker: dict = {"written_by": "lora-ft", "kind": kind}
    if entries is not None:
        marker["entries"] = entries
    write_json(directory / MARKER_NAME, marker, indent=1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        pass
    return True


def _tidy_replaced(out: Path) -> None:
    """Remove ``.<out>.old-PID`` left by a process killed while publishing (dead PID, provably ours)."""
    for old in out.parent.glob(f".{glob.escape(out.name)}.old-*"):
        pid = old.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _pid_alive(int(pid)) and old.is_dir() and not old.is_symlink():
            if _foreign(old) is None:
                shutil.rmtree(old, ignore_errors=True)


def publish_dir(tmp: Path, out: Path, kind: str, force: bool) -> None:
    """Mark the finished temporary ``tmp`` as ours and rename it to ``out``.

    ``out`` is checked again here, since it may have appeared while the output was being made: an
    existing one is replaced only with ``force`` and only if it is ours, and it is moved aside at the
    last moment (put back if the rename fails), then deleted.
    """
    check_output_dir(out, force)
    give_default_modes(tmp)
    write_marker(tmp, kind, _tree(tmp))
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        move_into_place(out, old)
    try:
        move_into_place(tmp, out)
    except BaseException:
        if old is not None:
            move_into_place(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _tidy_replaced(out)
