"""What a prepared cache directory held when lora-ft made it, and whether it still holds it.

A manifest maps each file's path (relative, POSIX) to its size, sha256 and the ``(mtime_ns,
ctime_ns)`` it had when recorded. Checking is cheap by default: a stat per file, and a hash only of
the files whose size or times changed (an edit, a copy, a restore). Any write to a file moves its
ctime, which no user-level call can set back, so an unchanged stat means unchanged content unless
the disk itself was edited; ``thorough`` hashes every file regardless. This guards against
accidents (truncation, a half-finished copy, an edited file), not against someone who can rewrite
the manifest too.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _times(st: os.stat_result) -> list[int]:
    return [st.st_mtime_ns, st.st_ctime_ns]


def record(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {"size", "sha256", "stat"}}`` of every regular file under ``directory``."""
    files = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        st = path.lstat()
        if rel in skip or not stat.S_ISREG(st.st_mode):
            continue
        files[rel] = {"size": st.st_size, "sha256": sha256_file(path), "stat": _times(st)}
    return files


def check(directory: Path, files: dict[str, dict], *, thorough: bool = False) -> tuple[str | None, bool]:
    """Compare ``directory`` with its manifest ``files``, updating the recorded stats of re-hashed files.

    Returns:
        ``(problem, restat)``: the first difference found (None when every file is as recorded), and
        whether a file's content was verified under a new stat, so the manifest is worth saving again.
    """
    restat = False
    try:
        for rel, want in files.items():
            try:
                st = (directory / rel).lstat()
            except FileNotFoundError:
                return f"{rel} is missing", restat
            if not stat.S_ISREG(st.st_mode):
                return f"{rel} is not a regular file", restat
            if st.st_size != want["size"]:
                return f"{rel} is {st.st_size} bytes, {want['size']} when prepared", restat
            if thorough or _times(st) != want["stat"]:
                if sha256_file(directory / rel) != want["sha256"]:
                    return f"{rel} no longer has the sha256 it was prepared with", restat
                restat = restat or _times(st) != want["stat"]
                want["stat"] = _times(st)
    except (KeyError, TypeError, AttributeError):
        return "its file manifest is malformed", False
    return None, restat
