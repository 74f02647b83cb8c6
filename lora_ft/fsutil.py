"""Where lora-ft writes: output directories (where one may go, its temporary, publishing) and our own files.

Every output lora-ft publishes (a run, a merged export, an inspect report) is built in a hidden
temporary next to ``--out`` and renamed into place. An existing ``--out`` is replaced only with
``--force``, and only when lora-ft can prove it wrote it: it holds our marker (``MARKER_NAME``, which
lists every path we wrote), or it has the exact layout of an output written before the marker
existed. Nothing else is ever deleted, and no ``--out`` may be the current directory, one of its
ancestors, the home directory, a file system root or a symbolic link, ``--force`` or not.

A run directory can be received (a colleague's interrupted run, an unpacked archive) and resumed, so
its names may be symbolic links planted to make us truncate or overwrite their targets: we open our
own files with ``O_NOFOLLOW`` (temporaries also ``O_EXCL``), replace files by renaming over them (a
rename replaces a link, never its target), and refuse a run directory that holds links at all. Small
records written by others (adapter configs, label lists, YAML configs) are read with a size bound.
Reading a model directory through links (the Hugging Face hub cache is made of them) is unaffected.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lora_ft.errors import LoraFtError

# Far above any real adapter_config.json, labels.json, lora-ft.json or YAML config (a few KB), far
# below what would exhaust memory once parsed.
MAX_RECORD_BYTES = 8 * 2**20
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
    if not stat.S_ISREG(st.st_mode) or st.st_size > MARKER_MAX_BYTES:
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
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
    write_atomic(directory / MARKER_NAME, json.dumps(marker, indent=1) + "\n")


def publishable_temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the permissions ``mkdir`` would have given it.

    ``mkdtemp`` creates its directory 0700 so that no one else can race into it; that protection is
    for the writing, not for the result, which is renamed into place as the user's output and must be
    as readable as any directory they create (0755 under the usual umask 022).
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str, suffix: str = "") -> Iterator[Path]:
    """A ``publishable_temp_dir`` in ``parent`` for building an output, deleted if it is still there when
    the block ends (it raised, or it did not publish it with ``publish_dir``/``move_into_place``)."""
    tmp = publishable_temp_dir(parent, prefix, suffix)
    try:
        yield tmp
    finally:
        if tmp.exists() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` in one step: a reader sees the old ``dst`` or the new one, never half.

    The one rename of lora-ft's writers (files, directories, checkpoints, the cache): both paths are
    on one filesystem (temporaries are siblings); a file ``dst`` is replaced, a directory must be gone.
    """
    os.replace(src, dst)


def write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    """``write_atomic`` of ``obj`` as JSON; NaN and Infinity are refused (``ValueError``), never written."""
    write_atomic(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


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
    write_marker(tmp, kind, _tree(tmp))
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _tidy_replaced(out)


def _link_error(path: Path) -> LoraFtError:
    return LoraFtError(
        f"{path} is a symbolic link; lora-ft never writes through a link it did not make: remove it "
        "(or use a copy of the directory without links) and retry"
    )


def _special_error(path: Path) -> LoraFtError:
    return LoraFtError(
        f"{path} is not a regular file (a FIFO, socket or device); lora-ft writes only files of its own "
        "there: remove it (or use a copy of the directory without it) and retry"
    )


def open_own(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` of a regular file of ours, never through a symbolic link (``O_NOFOLLOW``); the fd.

    ``O_NONBLOCK`` too: opening a FIFO planted at the name would otherwise wait for a writer forever.

    Raises:
        LoraFtError: ``path`` is a symbolic link, or not a regular file.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link_error(path) from None
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing, with no reader
            raise _special_error(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _special_error(path)
    return fd


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8): a new temporary sibling, renamed over ``path``.

    The temporary is created with ``O_EXCL`` (a planted link or file at its name is never opened), and
    the rename replaces whatever ``path`` is, a link included, without touching a link's target.

    Raises:
        LoraFtError: a symbolic link sits at the temporary's name.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = open_own(tmp, flags)
    except FileExistsError:
        if tmp.is_symlink():
            raise _link_error(tmp) from None
        tmp.unlink()  # our own, left by a killed process that had this pid
        fd = open_own(tmp, flags)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refuse_links(root: Path, what: str) -> None:
    """Refuse ``root`` if it or anything under it is a symbolic link, or neither a file nor a directory
    (a FIFO that reading would wait on forever): lora-ft writes there and makes none of them.

    Raises:
        LoraFtError: naming the first one found.
    """
    if root.is_symlink():
        raise LoraFtError(
            f"{what} {root} is a symbolic link; lora-ft writes into it and never through a link it did "
            "not make: use the directory itself"
        )
    for dirpath, dirnames, filenames in os.walk(root):  # links to directories are listed, not entered
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            if path.is_symlink():
                raise LoraFtError(
                    f"{what} {root} holds a symbolic link, {path}; lora-ft writes into this directory and "
                    "never through a link it did not make: remove the link (or use a copy without links)"
                )
            if not (path.is_file() or path.is_dir()):
                raise _special_error(path)


def read_record(path: Path, what: str, limit: int = MAX_RECORD_BYTES) -> str:
    """The UTF-8 text of a small file someone else may have written, refused above ``limit`` bytes.

    Raises:
        LoraFtError: a file over the limit. UnicodeDecodeError and OSError pass through.
    """
    with open(path, "rb") as f:
        raw = f.read(limit + 1)  # not stat: a FIFO or a growing file has no honest size
    if len(raw) > limit:
        raise LoraFtError(
            f"{what} {path} is larger than {limit // 2**20} MiB; such a file is a few KB, so this is not "
            "one: check the path"
        )
    return raw.decode("utf-8")


def read_json_record(path: Path, what: str, limit: int = MAX_RECORD_BYTES) -> Any:
    """``read_record`` parsed as JSON; json.JSONDecodeError passes through for the caller's message.

    Raises:
        LoraFtError: a file over the limit, or nested too deeply to parse.
    """
    text = read_record(path, what, limit)
    try:
        return json.loads(text)
    except RecursionError:
        raise LoraFtError(f"{what} {path} is nested too deeply to be one; check the path") from None
