"""Atomic publishing and our own files: the one module that renames into place.

Everything lora-ft writes is built under a temporary name next to its destination and renamed over
it (``write_atomic``, ``write_json``, ``staging_dir`` + ``move_into_place``), so a reader sees the old
file or directory or the new one, never half of one. Where an output directory may go and when an
existing one may be replaced is ``outputs``' job.

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
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_ft.errors import LoraFtError

# Far above any real adapter_config.json, labels.json, lora-ft.json or YAML config (a few KB), far
# below what would exhaust memory once parsed.
MAX_RECORD_BYTES = 8 * 2**20


def publishable_temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the permissions ``mkdir`` would have given it.

    ``mkdtemp`` creates its directory 0700 so that no one else can race into it; that protection is
    for the writing, not for the result, which is renamed into place as the user's output and must be
    as readable as any directory they create (0755 under the usual umask 022).
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def give_default_modes(root: Path) -> None:
    """Give every regular file under ``root`` the mode ``open()`` would have (0644 under umask 022).

    safetensors writes through a private temporary, so ``adapter_model.safetensors`` and
    ``model.safetensors`` arrive 0600 while the files beside them are 0644: on a shared machine a
    teammate could read the config but not the weights. Links are neither followed nor changed.
    """
    mode = 0o666 & ~_umask()
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                path.chmod(mode)


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str, suffix: str = "") -> Iterator[Path]:
    """A ``publishable_temp_dir`` in ``parent`` for building an output, deleted if it is still there when
    the block ends (it raised, or it did not publish it with ``outputs.publish_dir`` or ``move_into_place``)."""
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


def write_new(path: Path, data: str | bytes) -> None:
    """Create ``path`` holding ``data`` (text as UTF-8), refused when anything is there already.

    For files handed to the user to edit (a copied config): ``O_EXCL`` makes the check and the creation
    one step, so a file of theirs, or a link, that appears in between is never replaced or followed;
    a write that fails removes the file it created.

    Raises:
        LoraFtError: something (a file, a directory, a link) exists at ``path``.
    """
    try:
        fd = open_own(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        raise LoraFtError(
            f"{path} exists, and lora-ft never replaces a file it did not write: remove it or choose another name"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    except BaseException:
        path.unlink(missing_ok=True)
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
