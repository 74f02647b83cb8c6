"""Reading a data spec: ``DataConfig.name`` to its splits as read, with the sha256 of what was read.

``DataConfig.name`` is resolved, in order, as:

- a built-in name (``rt-sentences``): prepared by :mod:`lora_ft.data.assets`, read like a directory;
- a local file (``.csv``, ``.tsv``, ``.jsonl``/``.json``, ``.parquet``, or ``.conll`` for a token task:
  data/iob2.py): the train split (``loading`` carves a validation split out of it);
- a local directory of split files ``train.*``, ``validation.*`` (or ``dev.*``/``valid.*``), ``test.*``
  (``<split>-*`` shards too), optionally with ``labels.json`` (the label names, index = id);
- otherwise a Hugging Face Hub data set (``glue/sst2``, ``rotten_tomatoes``), when online.

Data is fingerprinted by content: the sha256 of every local file read (``LoadedData.fingerprint``).
It keys the ``datasets`` cache of local files (inside lora-ft's cache), which on its own keys local
files by path and mtime and so would serve a file corrected in place (same size, mtime kept) stale,
and a run records it so that ``--resume`` refuses data that changed underneath. Hub data sets live in
Hugging Face's own datasets cache (``HF_DATASETS_CACHE``, default ``$HF_HOME/datasets``), where
``datasets`` finds, offline too, what the user has already downloaded; each hub split is
fingerprinted by the sha256 of its rows.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from lora_ft.config import DataConfig
from lora_ft.data import assets
from lora_ft.data.iob2 import parse_conll
from lora_ft.data.labels import check_label_names
from lora_ft.data.manifest import sha256_file
from lora_ft.errors import LoraFtError
from lora_ft.failures import disk_full_error, is_disk_full
from lora_ft.fsutil import read_json_record

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}
# QUOTE_NONE for .tsv: review sentences hold stray double quotes that would otherwise swallow lines.
FILE_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
    ".conll": ("conll", {}),  # read here (data/iob2.py), not by a datasets builder
}
CONLL_LINES = "conll_lines"  # a CoNLL split's column: each word's line in its file, for error messages
HUB_CONFIG_PARENTS = ("glue", "super_glue")  # "glue/sst2" is load_dataset("glue", "sst2"), not a repo id


@dataclass
class RawSplits:
    """Splits as read, before column mapping; ``where`` names each split's origin for error messages.

    Attributes:
        splits: keys among ``train``, ``validation``, ``test`` and the extra splits asked for (a
            preset's ``extra_eval_splits``), columns as in the source.
        where: split -> its origin in words (``data file PATH``, ``data set NAME[SPLIT]``).
        source: human-readable origin of the whole spec.
        fingerprint: what was read -> the sha256 of its content: each local file by absolute path, a
            built-in's files as ``<name>/<file>``, a hub split as ``<name>[<split>]``.
        label_names: from a directory's ``labels.json``, else None.
    """

    splits: dict[str, datasets.Dataset]
    where: dict[str, str]
    source: str
    fingerprint: dict[str, str]
    label_names: list[str] | None = None


def hf_cache() -> str:
    """The ``datasets`` cache of local data files, inside lora-ft's own (``LORA_FT_CACHE``)."""
    return str(assets.cache_dir("hf-datasets"))


def cache_full(exc: BaseException, where: Path | str, variable: str = "LORA_FT_CACHE") -> LoraFtError:
    """The one line for a full disk met while writing a data cache (``variable`` says where it is)."""
    return disk_full_error(
        exc, where, f"free some space, or set {variable} to a directory on a disk with room"
    )


def content_hash(ds: datasets.Dataset) -> bytes:
    """The sha256 of a data set's rows (their JSON, in order): what a hub split or a tokenization is keyed by."""
    h = hashlib.sha256()
    for batch in ds.iter(batch_size=10_000):
        h.update(json.dumps(batch, ensure_ascii=False).encode("utf-8"))
    return h.digest()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def hub_load(path: str, config: str | None) -> datasets.DatasetDict:
    """The one call that reaches the Hugging Face Hub, through the datasets cache the user already has
    (``HF_DATASETS_CACHE`` / ``HF_HOME``): what is there loads offline (tests monkeypatch it)."""
    return datasets.load_dataset(path, config)


def hub_args(name: str) -> tuple[str, str | None]:
    """``glue/sst2`` -> ``("glue", "sst2")``; any other name is a repo id with no config."""
    parent, _, child = name.partition("/")
    return (parent, child) if child and parent in HUB_CONFIG_PARENTS else (name, None)


def _check_utf8(path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise LoraFtError(
                    f"data file {path} is not UTF-8 (byte {chunk[exc.start]:#04x} at offset {offset + exc.start}); "
                    "re-save it as UTF-8"
                ) from None
            offset += len(chunk)


def _read_files(paths: list[Path]) -> tuple[datasets.Dataset, dict[str, str]]:
    """One split from one or more files of the same type (shards), and each file's sha256 by absolute path."""
    suffix = paths[0].suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise LoraFtError(f"data file {paths[0]} has an unsupported type; use {', '.join(FILE_BUILDERS)}")
    if len({p.suffix.lower() for p in paths}) > 1:
        raise LoraFtError(
            f"split files {', '.join(p.name for p in paths)} mix file types; use one type per split"
        )
    builder, kwargs = FILE_BUILDERS[suffix]
    digests = {}
    for path in paths:
        if path.stat().st_size == 0:
            raise LoraFtError(f"data file {path} is empty")
        if builder != "parquet":
            _check_utf8(path)
        digests[os.path.abspath(path)] = sha256_file(path)
    if builder == "conll":
        return _read_conll(paths), digests
    if builder == "csv":
        kwargs = {**kwargs, "na_filter": False}  # keep sentences such as "NA" or "null" as text
    # datasets keys its cache of a local file by path and mtime; one cache directory per content makes
    # the bytes the key, so a file corrected in place with its mtime kept is read again.
    content = hashlib.sha256("".join(digests.values()).encode("ascii")).hexdigest()[:16]
    cache_dir = str(Path(hf_cache()) / f"files-{content}")
    try:
        ds = datasets.load_dataset(
            builder, data_files=[str(p) for p in paths], split="train", cache_dir=cache_dir, **kwargs
        )
    except Exception as exc:  # the builders raise many types; the root cause is the useful part
        if is_disk_full(exc):
            raise cache_full(exc, cache_dir) from None
        if "corresponds to no data" in str(exc):  # datasets' words for a file with a header and no rows
            raise LoraFtError(f"data file {paths[0]} has no rows") from None
        raise LoraFtError(f"could not read data file {paths[0]}: {_root_cause(exc)}") from None
    return ds, digests


def _read_conll(paths: list[Path]) -> datasets.Dataset:
    """CoNLL files as one split: ``tokens``, ``tags`` and ``CONLL_LINES`` (each word's line)."""
    sentences = [
        s for path in paths for s in parse_conll(path.read_text(encoding="utf-8"), f"data file {path}")
    ]
    return datasets.Dataset.from_dict(
        {
            "tokens": [s.tokens for s in sentences],
            "tags": [s.tags for s in sentences],
            CONLL_LINES: [s.lines for s in sentences],
        }
    )


def _split_files(directory: Path, cfg: DataConfig, extra: tuple[str, ...]) -> dict[str, list[Path]]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in FILE_BUILDERS)
    configured = {"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split}
    configured.update({name: name for name in extra})
    found = {}
    for split, name in configured.items():
        if name is None:
            continue
        names = list(dict.fromkeys([name, *SPLIT_ALIASES.get(split, ())]))
        for name in names:
            shards = [p for p in files if p.stem == name or re.fullmatch(rf"{re.escape(name)}-.+", p.stem)]
            if shards:
                found[split] = shards
                break
    if "train" not in found:
        listing = ", ".join(p.name for p in directory.iterdir()) or "nothing"
        raise LoraFtError(
            f"data directory {directory} has no {cfg.train_split}.* file ({', '.join(FILE_BUILDERS)}); "
            f"it holds: {listing}"
        )
    return found


def _label_names_file(directory: Path) -> list[str] | None:
    path = directory / "labels.json"
    if not path.is_file():
        return None
    try:
        names = read_json_record(path, "label list")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoraFtError(
            f"{path} is not valid UTF-8 JSON ({exc}); it must hold a JSON list of label names (index = label id)"
        ) from None
    return check_label_names(names, str(path))


def read_spec(cfg: DataConfig, extra: tuple[str, ...] = ()) -> RawSplits:
    """The splits ``cfg.name`` names, as read (see the module docstring for how the name resolves), and
    the ``extra`` splits (by their own names) where the data has them.

    Raises:
        LoraFtError: a missing, empty, non-UTF-8 or unreadable file, a directory without a train split,
            a malformed ``labels.json``, or a hub data set that cannot be reached.
    """
    name = cfg.name
    if assets.is_builtin(name):
        raw = _read_directory(assets.ensure(name, "data"), cfg, extra)
        raw.source = f"built-in {name}"
        # Named by the asset, not the cache path: the same data wherever LORA_FT_CACHE points.
        raw.fingerprint = {f"{name}/{Path(p).name}": h for p, h in raw.fingerprint.items()}
        return raw
    path = Path(name).expanduser()
    if path.is_dir():
        return _read_directory(path, cfg, extra)
    if path.is_file():
        ds, digests = _read_files([path])
        return RawSplits({"train": ds}, {"train": f"data file {path}"}, str(path), digests)
    if name.startswith((".", "/", "~")) or path.suffix.lower() in FILE_BUILDERS:
        raise LoraFtError(
            f"data file not found: {name} (give a csv/tsv/jsonl/parquet file, a directory or a hub name)"
        )
    return _read_hub(name, cfg, extra)


def _read_directory(directory: Path, cfg: DataConfig, extra: tuple[str, ...]) -> RawSplits:
    files = _split_files(directory, cfg, extra)
    splits, fingerprint = {}, {}
    for split, paths in files.items():
        splits[split], digests = _read_files(paths)
        fingerprint.update(digests)
    labels_file = directory / "labels.json"
    if labels_file.is_file():
        fingerprint[os.path.abspath(labels_file)] = sha256_file(labels_file)
    where = {split: f"data file {', '.join(str(p) for p in paths)}" for split, paths in files.items()}
    return RawSplits(splits, where, str(directory), fingerprint, _label_names_file(directory))


def _read_hub(name: str, cfg: DataConfig, extra: tuple[str, ...]) -> RawSplits:
    path, config = hub_args(name)
    try:
        loaded = hub_load(path, config)
    except Exception as exc:  # offline, unknown name, gated repo: all end the same way for the user
        if is_disk_full(exc):
            raise cache_full(exc, datasets.config.HF_DATASETS_CACHE, "HF_DATASETS_CACHE") from None
        raise LoraFtError(
            f"could not load data set {name!r} from the Hugging Face Hub ({_root_cause(exc)}); offline, only "
            "data sets already in the Hugging Face datasets cache (HF_DATASETS_CACHE) load: use one of those, "
            "a local file or directory (data.name=path/to/train.csv) or the built-in rt-sentences"
        ) from None
    wanted = {"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split}
    wanted.update({split: split for split in extra})
    if cfg.train_split not in loaded:
        raise LoraFtError(
            f"data set {name!r} has no split {cfg.train_split!r}; splits are: {', '.join(loaded)}"
        )
    splits = {
        ours: loaded[theirs] for ours, theirs in wanted.items() if theirs is not None and theirs in loaded
    }
    where = {ours: f"data set {name}[{wanted[ours]}]" for ours in splits}
    fingerprint = {f"{name}[{wanted[ours]}]": content_hash(ds).hex() for ours, ds in splits.items()}
    return RawSplits(splits, where, f"{name} (hub)", fingerprint)
