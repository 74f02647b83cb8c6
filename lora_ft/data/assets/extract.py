"""Safe extraction of the pinned archives: only the members asked for, and never a path or link that
leaves the target directory, a device, a FIFO, or more bytes than ``max_bytes`` (a decompression bomb)
in all; all checked before anything is written."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from lora_ft.errors import LoraFtError

# The most a selection may unpack to: the largest built-in (the minilm-l6 model directory) is 91 MB.
# Members' declared sizes are what tarfile and zipfile write, so the sum bounds what reaches the disk.
MAX_EXTRACT_BYTES = 1 << 30


def _selected(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix.rstrip("/") + "/")


def _check_name(archive: Path, name: str) -> None:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        raise LoraFtError(f"refusing to extract {archive.name}: member {name!r} has an absolute path")
    if ".." in posix.parts or ".." in windows.parts:
        raise LoraFtError(f"refusing to extract {archive.name}: member {name!r} has a '..' component")


def _inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _check_size(archive: Path, sizes: list[int], max_bytes: int) -> None:
    total = sum(sizes)
    if total > max_bytes:
        raise LoraFtError(
            f"refusing to extract {archive.name}: its members would unpack to {total} bytes, over the "
            f"{max_bytes}-byte limit; is it the right file?"
        )


def safe_extract_tar(
    archive: Path, dest: Path, prefix: str = "", max_bytes: int = MAX_EXTRACT_BYTES
) -> list[Path]:
    """Extract the members of a tar archive named ``prefix`` or under ``prefix/`` (all if empty) into ``dest``.

    Returns:
        The extracted paths, in archive order.

    Raises:
        LoraFtError: a selected member has an absolute path or a ``..`` component, is a link resolving
            outside ``dest``, or is a device/fifo; nothing is extracted then.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if _selected(m.name, prefix)]
        for m in members:
            _check_name(archive, m.name)
            if m.issym():
                # A symlink's target is relative to the directory holding it.
                target = dest / PurePosixPath(m.name).parent / m.linkname
            elif m.islnk():
                target = dest / m.linkname  # hardlink targets are archive-root relative
            elif m.isfile() or m.isdir():
                continue
            else:
                raise LoraFtError(
                    f"refusing to extract {archive.name}: member {m.name!r} is not a file or directory"
                )
            if PurePosixPath(m.linkname).is_absolute() or not _inside(dest, target):
                raise LoraFtError(
                    f"refusing to extract {archive.name}: link {m.name!r} -> {m.linkname!r} points outside the target"
                )
        _check_size(archive, [m.size for m in members], max_bytes)
        # The "data" filter (PEP 706) re-checks all of the above and drops setuid/permission bits.
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **extra)
    return [dest / m.name for m in members]


def safe_extract_zip(
    archive: Path, dest: Path, prefix: str = "", max_bytes: int = MAX_EXTRACT_BYTES
) -> list[Path]:
    """Extract the members of a zip (or wheel) named ``prefix`` or under ``prefix/`` into ``dest``.

    Symlink members are refused outright: zipfile would write them as small text files anyway.

    Returns:
        The extracted paths, in archive order.

    Raises:
        LoraFtError: a selected member has an absolute path, a ``..`` component or is a symlink, or the
            selection is over ``max_bytes``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        members = [i for i in zf.infolist() if _selected(i.filename, prefix)]
        for info in members:
            _check_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise LoraFtError(
                    f"refusing to extract {archive.name}: member {info.filename!r} is a symlink"
                )
            if not _inside(dest, dest / info.filename):
                raise LoraFtError(
                    f"refusing to extract {archive.name}: member {info.filename!r} escapes the target"
                )
        _check_size(archive, [info.file_size for info in members], max_bytes)
        return [Path(zf.extract(info, dest)) for info in members]
