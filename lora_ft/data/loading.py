"""Data specs -> ``DatasetDict`` of ``sentence`` / ``label``; tokenization with an on-disk cache.

``DataConfig.name`` is resolved, in order, as:

- a built-in name (``rt-sentences``): prepared by :mod:`lora_ft.data.assets`, read like a directory;
- a local file (``.csv``, ``.tsv``, ``.jsonl``/``.json``, ``.parquet``): the train split, with 10% carved
  out (seed 42) as validation;
- a local directory of split files ``train.*``, ``validation.*`` (or ``dev.*``/``valid.*``), ``test.*``
  (``<split>-*`` shards too), optionally with ``labels.json`` (the label names, index = id);
- otherwise a Hugging Face Hub data set (``glue/sst2``, ``rotten_tomatoes``), when online.

Every split comes out with exactly two columns: ``sentence`` (str) and ``label`` (``ClassLabel``, ids
0..K-1). Empty or null sentences and labels are errors naming the file, the row (counted from 1, a csv
header not counted) and the column: nothing is dropped silently, so the same data gives the same
evaluation set in every tool (and an empty label cell does not become a class of its own). A split
whose labels are all -1 (GLUE's unlabelled test sets) is not used as a test split.

Data is fingerprinted by content: the sha256 of every local file read (``LoadedData.fingerprint``).
It keys the ``datasets`` cache, which on its own keys local files by path and mtime and so would serve
a file corrected in place (same size, mtime kept) stale, and a run records it so that ``--resume``
refuses data that changed underneath.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets

from lora_ft.config import DataConfig
from lora_ft.data import assets
from lora_ft.data.labels import check_label_names
from lora_ft.errors import LoraFtError
from lora_ft.failures import disk_full_error, is_disk_full
from lora_ft.fsutil import publishable_temp_dir, read_json_record

logger = logging.getLogger("lora_ft")

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}
# QUOTE_NONE for .tsv: review sentences hold stray double quotes that would otherwise swallow lines.
FILE_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
HUB_CONFIG_PARENTS = ("glue", "super_glue")  # "glue/sst2" is load_dataset("glue", "sst2"), not a repo id
CARVE_FRACTION, CARVE_SEED = 0.1, 42
SAMPLE_SEED = 42  # fixed, not the training seed: every seed and method sees the same capped sample
UNLABELLED = -1
TOKENIZED_FORMAT = 1


@dataclass
class LoadedData:
    """Splits ready for tokenization.

    Attributes:
        splits: keys among ``train``, ``validation``, ``test``; columns ``sentence`` (str) and ``label``
            (``ClassLabel`` with ``label_names``).
        label_names: index -> name.
        source: human-readable origin, with notes on carved-out or unused splits.
        fingerprint: what was read -> the sha256 of its content: each local file by absolute path, a
            built-in's files as ``<name>/<file>``, a hub split as ``<name>[<split>]``.
    """

    splits: datasets.DatasetDict
    label_names: list[str]
    source: str
    fingerprint: dict[str, str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _hf_cache() -> str:
    return str(assets.cache_dir("hf-datasets"))


def _cache_full(exc: BaseException, where: Path | str) -> LoraFtError:
    return disk_full_error(
        exc, where, "free some space, or set LORA_FT_CACHE to a directory on a disk with room"
    )


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def hub_load(path: str, config: str | None) -> datasets.DatasetDict:
    """The one call that reaches the Hugging Face Hub (tests monkeypatch it)."""
    return datasets.load_dataset(path, config, cache_dir=_hf_cache())


def hub_args(name: str) -> tuple[str, str | None]:
    """``glue/sst2`` -> ``("glue", "sst2")``; any other name is a repo id with no config."""
    parent, _, child = name.partition("/")
    return (parent, child) if child and parent in HUB_CONFIG_PARENTS else (name, None)


# --- reading ------------------------------------------------------------------------------------


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
        digests[os.path.abspath(path)] = assets.sha256_file(path)
    if builder == "csv":
        kwargs = {**kwargs, "na_filter": False}  # keep sentences such as "NA" or "null" as text
    # datasets keys its cache of a local file by path and mtime; one cache directory per content makes
    # the bytes the key, so a file corrected in place with its mtime kept is read again.
    content = hashlib.sha256("".join(digests.values()).encode("ascii")).hexdigest()[:16]
    cache_dir = str(Path(_hf_cache()) / f"files-{content}")
    try:
        ds = datasets.load_dataset(
            builder, data_files=[str(p) for p in paths], split="train", cache_dir=cache_dir, **kwargs
        )
    except Exception as exc:  # the builders raise many types; the root cause is the useful part
        if is_disk_full(exc):
            raise _cache_full(exc, cache_dir) from None
        if "corresponds to no data" in str(exc):  # datasets' words for a file with a header and no rows
            raise LoraFtError(f"data file {paths[0]} has no rows") from None
        raise LoraFtError(f"could not read data file {paths[0]}: {_root_cause(exc)}") from None
    return ds, digests


def _split_files(directory: Path, cfg: DataConfig) -> dict[str, list[Path]]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in FILE_BUILDERS)
    configured = {"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split}
    found = {}
    for split in SPLITS:
        if configured[split] is None:
            continue
        names = list(dict.fromkeys([configured[split], *SPLIT_ALIASES[split]]))
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


@dataclass
class _Raw:
    """Splits as read, before column mapping; ``where`` names each split's origin for error messages."""

    splits: dict[str, datasets.Dataset]
    where: dict[str, str]
    source: str
    fingerprint: dict[str, str]
    label_names: list[str] | None = None


def _read_spec(cfg: DataConfig) -> _Raw:
    name = cfg.name
    if assets.is_builtin(name):
        raw = _read_directory(assets.ensure(name, "data"), cfg)
        raw.source = f"built-in {name}"
        # Named by the asset, not the cache path: the same data wherever LORA_FT_CACHE points.
        raw.fingerprint = {f"{name}/{Path(p).name}": h for p, h in raw.fingerprint.items()}
        return raw
    path = Path(name).expanduser()
    if path.is_dir():
        return _read_directory(path, cfg)
    if path.is_file():
        ds, digests = _read_files([path])
        return _Raw({"train": ds}, {"train": f"data file {path}"}, str(path), digests)
    if name.startswith((".", "/", "~")) or path.suffix.lower() in FILE_BUILDERS:
        raise LoraFtError(
            f"data file not found: {name} (give a csv/tsv/jsonl/parquet file, a directory or a hub name)"
        )
    return _read_hub(name, cfg)


def _read_directory(directory: Path, cfg: DataConfig) -> _Raw:
    files = _split_files(directory, cfg)
    splits, fingerprint = {}, {}
    for split, paths in files.items():
        splits[split], digests = _read_files(paths)
        fingerprint.update(digests)
    labels_file = directory / "labels.json"
    if labels_file.is_file():
        fingerprint[os.path.abspath(labels_file)] = assets.sha256_file(labels_file)
    where = {split: f"data file {', '.join(str(p) for p in paths)}" for split, paths in files.items()}
    return _Raw(splits, where, str(directory), fingerprint, _label_names_file(directory))


def _read_hub(name: str, cfg: DataConfig) -> _Raw:
    path, config = hub_args(name)
    try:
        loaded = hub_load(path, config)
    except Exception as exc:  # offline, unknown name, gated repo: all end the same way for the user
        if is_disk_full(exc):
            raise _cache_full(exc, _hf_cache()) from None
        raise LoraFtError(
            f"could not load data set {name!r} from the Hugging Face Hub ({_root_cause(exc)}); if offline, use a "
            "local file or directory (data.name=path/to/train.csv) or the built-in rt-sentences"
        ) from None
    wanted = {"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split}
    if cfg.train_split not in loaded:
        raise LoraFtError(
            f"data set {name!r} has no split {cfg.train_split!r}; splits are: {', '.join(loaded)}"
        )
    splits = {
        ours: loaded[theirs] for ours, theirs in wanted.items() if theirs is not None and theirs in loaded
    }
    where = {ours: f"data set {name}[{wanted[ours]}]" for ours in splits}
    fingerprint = {f"{name}[{wanted[ours]}]": _content_hash(ds).hex() for ours, ds in splits.items()}
    return _Raw(splits, where, f"{name} (hub)", fingerprint)


# --- columns, sentences, labels -----------------------------------------------------------------


def _map_columns(ds: datasets.Dataset, where: str, cfg: DataConfig) -> datasets.Dataset:
    for column in (cfg.text_column, cfg.label_column):
        if column not in ds.column_names:
            raise LoraFtError(
                f"{where} has no column {column!r}; columns are: {', '.join(ds.column_names)} "
                "(set data.text_column / data.label_column)"
            )
    ds = ds.select_columns([cfg.text_column, cfg.label_column])
    return ds.rename_columns({cfg.text_column: "sentence", cfg.label_column: "label"})


def _missing(value) -> bool:
    """An empty cell: csv gives ``""`` (na_filter off), json and parquet ``None``, a float column NaN."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_cells(ds: datasets.Dataset, where: str, cfg: DataConfig) -> None:
    if len(ds) == 0:
        raise LoraFtError(f"{where} has no rows")
    for i, sentence in enumerate(ds["sentence"]):
        if not isinstance(sentence, str) or not sentence.strip():
            raise LoraFtError(
                f"empty, missing or non-text sentence at row {i + 1} of {where} (column {cfg.text_column!r}); "
                "fix or remove that row"
            )
    for i, label in enumerate(ds["label"]):
        if _missing(label):
            raise LoraFtError(
                f"empty or missing label at row {i + 1} of {where} (column {cfg.label_column!r}); "
                "fill it in or remove that row"
            )


def _integral(labels: list, where: str) -> list[int]:
    out = []
    for i, v in enumerate(labels):
        if isinstance(v, float) and v.is_integer():  # csv readers turn an int column with gaps into floats
            v = int(v)
        if not isinstance(v, int):
            raise LoraFtError(
                f"label {v!r} at row {i + 1} of {where} is not an integer; labels must be all integers 0..K-1 "
                "or all class names"
            )
        out.append(int(v))
    return out


def _label_names(feature, train_labels: list, where: str, hint: list[str] | None) -> list[str]:
    """Names of the label ids, fixed by the train split: ClassLabel, labels.json, sorted strings or 0..K-1."""
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if hint is not None:
        return hint
    if any(isinstance(v, str) for v in train_labels):
        return sorted({str(v) for v in train_labels})
    ids = set(_integral(train_labels, where)) - {UNLABELLED}
    return [str(i) for i in range(len(ids))]


def _label_ids(labels: list, names: list[str], where: str, by_name: bool) -> list[int] | None:
    """Label ids checked against ``names``; None when the split is unlabelled (all -1)."""
    if by_name:
        index = {n: i for i, n in enumerate(names)}
        for i, v in enumerate(labels):
            if v not in index:
                raise LoraFtError(
                    f"label {v!r} at row {i + 1} of {where} does not occur in train; labels are: {', '.join(names)}"
                )
        return [index[v] for v in labels]
    ids = _integral(labels, where)
    if all(v == UNLABELLED for v in ids):
        return None
    for i, v in enumerate(ids):
        if not 0 <= v < len(names):
            raise LoraFtError(
                f"label {v} at row {i + 1} of {where} is out of range 0..{len(names) - 1} "
                f"(integer labels must be 0..K-1, K = {len(names)}; or use class-name strings)"
            )
    return ids


def _with_labels(ds: datasets.Dataset, ids: list[int], names: list[str]) -> datasets.Dataset:
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict({"sentence": ds["sentence"][:], "label": ids}, features=features)


def _cap(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None or n >= len(ds) else ds.shuffle(seed=SAMPLE_SEED).select(range(n))


def load_data(cfg: DataConfig) -> LoadedData:
    """Read the data named by ``cfg.name``; map columns, validate labels, carve validation, apply caps.

    Returns:
        ``LoadedData`` whose splits have columns ``sentence`` (str) and ``label`` (int ``ClassLabel``).

    Raises:
        LoraFtError: missing files or columns, non-UTF-8 text, empty data or sentences, labels out of
            range or unseen in train, or a hub data set that cannot be reached.
    """
    raw = _read_spec(cfg)
    notes = []
    columns = {split: _map_columns(ds, raw.where[split], cfg) for split, ds in raw.splits.items()}
    for split, ds in columns.items():
        _check_cells(ds, raw.where[split], cfg)
    train = columns["train"]
    train_labels = train["label"][:]
    names = _label_names(train.features["label"], train_labels, raw.where["train"], raw.label_names)
    if len(names) < 2:
        raise LoraFtError(
            f"{raw.where['train']} has {len(names)} distinct label(s); a classifier needs two or more"
        )
    by_name = not isinstance(train.features["label"], datasets.ClassLabel) and any(
        isinstance(v, str) for v in train_labels
    )
    splits = {}
    for split, ds in columns.items():
        ids = _label_ids(ds["label"][:], names, raw.where[split], by_name)
        if ids is None and split == "test":
            notes.append("test split unlabelled (all -1), not used")
            continue
        if ids is None:
            raise LoraFtError(
                f"the {split} split ({raw.where[split]}) has no labels (all -1); it must be labelled"
            )
        splits[split] = _with_labels(ds, ids, names)
    if "validation" not in splits:
        if len(splits["train"]) < 2:
            raise LoraFtError(f"{raw.where['train']} has one row; need more to carve out a validation split")
        parts = splits["train"].train_test_split(test_size=CARVE_FRACTION, seed=CARVE_SEED)
        splits["train"], splits["validation"] = parts["train"], parts["test"]
        notes.append(f"validation: {CARVE_FRACTION:.0%} of train, seed {CARVE_SEED}")
    splits["train"] = _cap(splits["train"], cfg.max_train_samples)
    for split in ("validation", "test"):
        if split in splits:
            splits[split] = _cap(splits[split], cfg.max_eval_samples)
    source = raw.source + (f" ({'; '.join(notes)})" if notes else "")
    ordered = datasets.DatasetDict({split: splits[split] for split in SPLITS if split in splits})
    return LoadedData(ordered, names, source, raw.fingerprint)


# --- tokenization -------------------------------------------------------------------------------


def _content_hash(ds: datasets.Dataset) -> bytes:
    h = hashlib.sha256()
    for batch in ds.iter(batch_size=10_000):
        h.update(json.dumps(batch, ensure_ascii=False).encode("utf-8"))
    return h.digest()


def tokenized_cache_dir(data: LoadedData, tokenizer, max_length: int) -> Path:
    """Where ``tokenize_data`` keeps its result: ``<cache>/tokenized/<tokenizer>-<max_length>-<hash>``.

    The hash covers the tokenizer's vocabulary and rules (``backend_tokenizer.to_str()``), its name,
    ``max_length``, the label names and every split's content, so any change gives a fresh directory.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        rules = json.loads(backend.to_str())
        # Calling the tokenizer stores its last truncation/padding settings in the backend; not vocabulary.
        rules.pop("truncation", None)
        rules.pop("padding", None)
    else:
        rules = tokenizer.get_vocab()
    rules = json.dumps(rules, sort_keys=True, ensure_ascii=False)  # ascii-escaping a 30k vocab costs 0.1 s
    meta = {
        "format": TOKENIZED_FORMAT,
        "tokenizer": tokenizer.name_or_path,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "truncation_side": tokenizer.truncation_side,
        "max_length": max_length,
        "label_names": data.label_names,
    }
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode("utf-8"))
    h.update(hashlib.sha256(rules.encode("utf-8")).digest())
    for split, ds in data.splits.items():
        h.update(split.encode("utf-8"))
        h.update(_content_hash(ds))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(tokenizer.name_or_path).name or "tokenizer")
    return assets.cache_root() / "tokenized" / f"{slug}-{max_length}-{h.hexdigest()[:16]}"


def tokenize_data(data: LoadedData, tokenizer, max_length: int) -> datasets.DatasetDict:
    """Tokenize every split (truncation to ``max_length``, no padding), cached on disk.

    Returns:
        A ``DatasetDict`` with the splits of ``data`` and columns ``input_ids``, ``attention_mask``
        (``token_type_ids`` when the tokenizer gives them), ``labels`` and ``length`` (the token count,
        for length-grouped batching). Padding is left to ``DataCollatorWithPadding``.
    """
    target = tokenized_cache_dir(data, tokenizer, max_length)
    if target.is_dir():  # complete by construction: it only appears by rename
        logger.info("tokenized data from cache: %s", target)
        return datasets.load_from_disk(str(target))

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = dict(tokenizer(batch["sentence"], truncation=True, max_length=max_length))
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    tokenized = datasets.DatasetDict(
        {
            # An explicit fingerprint spares datasets from hashing the tokenizer (slow, and random for some).
            split: ds.map(
                encode,
                batched=True,
                remove_columns=["sentence"],
                keep_in_memory=True,
                new_fingerprint=f"{target.name}-{split}",
                desc=f"tokenizing {split}",
            ).rename_column("label", "labels")
            for split, ds in data.splits.items()
        }
    )
    try:
        _save_tokenized(tokenized, target)
    except OSError as exc:
        if is_disk_full(exc):
            raise _cache_full(exc, target.parent) from None
        raise
    logger.info("tokenized data cached in %s", target)
    return datasets.load_from_disk(str(target))


def _save_tokenized(tokenized: datasets.DatasetDict, target: Path) -> None:
    assets.cache_dir(target.parent.name)  # a cache that is a file or read-only: one line naming LORA_FT_CACHE
    tmp = publishable_temp_dir(target.parent, f".{target.name}.tmp-")
    try:
        tokenized.save_to_disk(str(tmp))
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise  # a real failure, not another process having saved the same key first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
