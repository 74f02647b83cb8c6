"""The typed run config: nested dataclasses, loaded from YAML, overridden by ``--set key=value``.

Precedence: dataclass defaults < YAML file < ``--set``. Unknown keys and wrong types are errors that
name the key; ranges are checked in ``__post_init__`` so a config object is valid once it exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from lora_ft.errors import LoraFtError, first_line
from lora_ft.fsutil import read_record
from lora_ft.lora.scaling import lora_scaling

METHODS = ("lora", "full", "head")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
STRATEGIES = ("no", "steps", "epoch")
# What numpy's seeding accepts (torch's takes more): transformers.set_seed seeds both.
MAX_SEED = 2**32 - 1


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise LoraFtError(message)


def _check_finite(section: Any, prefix: str) -> None:
    """Every float setting of ``section``, and every float in its mappings, is finite.

    Checked first, so the range checks after it hold: ``x > 0`` is False for NaN, but ``x >= 0`` lets
    +inf through, and ``x < 1`` lets -inf through.
    """
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, v in items:
            if isinstance(v, float) and not math.isfinite(v):
                name = f"{prefix}.{f.name}" if key is None else f"{prefix}.{f.name}.{key}"
                raise LoraFtError(f"{name} must be a finite number, got {v}")


@dataclass
class ModelConfig:
    """Which pretrained model to start from."""

    name: str = "minilm-l6"  # built-in name, local HF model directory, or hub id
    revision: str | None = None
    trust_remote_code: bool = False  # never on unless the user asks: it runs the model repo's code
    num_layers: int | None = None  # keep only the first N encoder layers (fast runs, smoke tests)
    allow_pickle: bool = False  # load a pytorch_model.bin (weights_only) when no safetensors exist

    def __post_init__(self) -> None:
        _check_finite(self, "model")
        _check(
            bool(self.name), "model.name is empty; give a built-in name (minilm-l6), a directory or a hub id"
        )
        _check(
            self.num_layers is None or self.num_layers >= 1,
            f"model.num_layers must be >= 1, got {self.num_layers}",
        )


@dataclass
class DataConfig:
    """Which sentence-classification data, and how to read it."""

    name: str = "rt-sentences"  # built-in name, hub name (glue/sst2, rotten_tomatoes), file or directory
    text_column: str = "sentence"
    label_column: str = "label"
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = "test"
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self) -> None:
        _check_finite(self, "data")
        _check(
            bool(self.name), "data.name is empty; give a built-in name (rt-sentences), a hub name or a path"
        )
        _check(self.max_length >= 8, f"data.max_length must be >= 8 tokens, got {self.max_length}")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            _check(
                value is None or value >= 1, f"data.{key} must be >= 1 (or null for all rows), got {value}"
            )


@dataclass
class LoRAConfig:
    """The adapter: rank, scaling, dropout, which Linears to wrap, which head modules to train fully."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    # Exact names or dotted suffixes ("query", "attention.self.query"), regexes (full match on the
    # module name), or "all-linear". null: the model type's default (BERT query/value, DistilBERT q_lin/v_lin).
    targets: Union[list[str], str, None] = None  # noqa: UP007 - the config parser reads this annotation
    init: str = "kaiming"  # or "gaussian"
    rslora: bool = False  # scaling alpha / sqrt(r) (rsLoRA) instead of alpha / r
    use_dora: bool = False  # DoRA: a trainable magnitude per output feature beside the low-rank direction
    # Another r / alpha for some modules, PEFT's rank_pattern / alpha_pattern: {regex: value}, where the
    # first key (in order) matching the end of a module name wins, e.g. {query: 16, value: 4}.
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    # Modules trained fully and saved with the adapter (PEFT's modules_to_save). null: the classifier head.
    head: list[str] | None = None

    def __post_init__(self) -> None:
        _check_finite(self, "lora")
        _check(self.r >= 1, f"lora.r must be an integer >= 1, got {self.r}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")
        _check(
            self.init in ("kaiming", "gaussian"), f"lora.init must be kaiming or gaussian, got {self.init!r}"
        )
        if isinstance(self.targets, list):
            _check(
                len(self.targets) > 0, "lora.targets is an empty list; name modules, or null for the default"
            )
        for key, r in self.rank_pattern.items():
            _check(r >= 1, f"lora.rank_pattern.{key} must be an integer >= 1, got {r}")
        for key, alpha in self.alpha_pattern.items():
            _check(alpha > 0, f"lora.alpha_pattern.{key} must be > 0, got {alpha}")
        for what in ("rank_pattern", "alpha_pattern"):
            for key in getattr(self, what):
                try:
                    re.compile(key)
                except re.error as exc:
                    raise LoraFtError(
                        f"lora.{what} key {key!r} is not a valid regex ({exc}); escape special characters"
                    ) from None

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.r, self.rslora)


@dataclass
class TrainConfig:
    """How to train: method, budget, optimiser, evaluation, precision."""

    method: str = "lora"
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 32
    eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    # null: the method's own rate from learning_rates (full fine-tuning needs a much smaller one).
    learning_rate: float | None = None
    learning_rates: dict[str, float] = field(
        default_factory=lambda: {"lora": 5e-4, "full": 5e-5, "head": 2e-3}
    )
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 42
    group_by_length: bool = True  # batches of similar lengths: less padding, faster steps
    precision: str = "fp32"  # or bf16, fp16, auto: bf16 where the hardware multiplies it natively, else fp32
    gradient_checkpointing: bool = False
    eval_strategy: str = "epoch"
    eval_steps: int | None = None
    logging_steps: int = 25
    save_strategy: str = "epoch"
    save_steps: int | None = None
    save_total_limit: int = 1
    threads: int | None = None  # torch intra-op threads; null: one per physical core
    # Further TrainingArguments fields passed through unchanged (fsdp, deepspeed, ...).
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_finite(self, "train")
        _check(
            self.method in METHODS, f"train.method must be one of {', '.join(METHODS)}, got {self.method!r}"
        )
        _check(self.epochs > 0 or self.max_steps > 0, f"train.epochs must be > 0, got {self.epochs}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(
            self.gradient_accumulation_steps >= 1,
            f"train.gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}",
        )
        _check(
            self.learning_rate is None or self.learning_rate > 0,
            f"train.learning_rate must be > 0, got {self.learning_rate}",
        )
        for method, lr in self.learning_rates.items():
            _check(
                method in METHODS,
                f"train.learning_rates has unknown method {method!r}; use {', '.join(METHODS)}",
            )
            _check(lr > 0, f"train.learning_rates.{method} must be > 0, got {lr}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(
            0.0 <= self.warmup_ratio < 1.0, f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}"
        )
        _check(
            self.max_grad_norm >= 0,
            f"train.max_grad_norm must be >= 0 (0 turns gradient clipping off), got {self.max_grad_norm}",
        )
        _check(
            0 <= self.seed <= MAX_SEED,
            f"train.seed must be in [0, {MAX_SEED}] (what numpy's seeding accepts), got {self.seed}",
        )
        _check(
            self.lr_scheduler in SCHEDULERS,
            f"train.lr_scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}",
        )
        _check(
            self.precision in PRECISIONS,
            f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        for key in ("eval_strategy", "save_strategy"):
            value = getattr(self, key)
            _check(value in STRATEGIES, f"train.{key} must be one of {', '.join(STRATEGIES)}, got {value!r}")
        _check(self.logging_steps >= 1, f"train.logging_steps must be >= 1, got {self.logging_steps}")
        _check(
            self.save_total_limit >= 1, f"train.save_total_limit must be >= 1, got {self.save_total_limit}"
        )
        _check(self.threads is None or self.threads >= 1, f"train.threads must be >= 1, got {self.threads}")

    def lr_for(self, method: str) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        if method not in self.learning_rates:
            raise LoraFtError(f"no learning rate for method {method!r}; set train.learning_rates.{method}")
        return self.learning_rates[method]


@dataclass
class RunConfig:
    """Everything a run needs; ``lora-ft train`` saves the resolved copy as ``config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so ``save_strategy: no`` stays the string "no".

    Aliases (``*name``) are refused: nine nested anchors of nine aliases each, 431 bytes, expand to
    hundreds of millions of values once the config is copied or compared (a MemoryError after minutes).
    A config has no need for them; refusing them at parse time keeps the parsed size bounded by the text's.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"found the alias *{event.anchor}; lora-ft configs do not expand YAML aliases: write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class _Dumper(yaml.SafeDumper):
    """Writes every value out, never as an alias: a saved config must load with ``_Loader``."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# Keys a saved config may carry that are records, not settings: the library versions, and the sha256 of
# every data file the run read (``LoadedData.fingerprint``), which a resume must find unchanged.
DATA_FINGERPRINT = "data_sha256"
_INFORMATIONAL_KEYS = ("versions", DATA_FINGERPRINT)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is Any:
        return "any value"
    return tp.__name__


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float only)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except LoraFtError:
                continue
        raise LoraFtError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, val_tp = typing.get_args(tp)
            return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; everyone writes learning rates that way.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise LoraFtError(f"{key} must be {_type_name(tp)}, got {value!r}")


def _unknown_key(key: str, known: list[str]) -> LoraFtError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return LoraFtError(f"unknown config key {key!r}{hint}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise LoraFtError(f"{prefix or 'the config'} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if not prefix and key in _INFORMATIONAL_KEYS:
            continue
        if key not in names:
            raise _unknown_key(path, names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise LoraFtError(f"--set {item!r} is not key=value; write e.g. --set lora.r=16")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise LoraFtError(f"--set {item!r} has no key; write e.g. --set lora.r=16")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        why = getattr(exc, "problem", None) or exc.__class__.__name__
        raise LoraFtError(f"--set {key}: cannot parse value {raw!r} ({why})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict; values are parsed as YAML (``[a,b]``, ``1e-4``)."""
    for item in overrides:
        parts, value = _parse_override(item)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise LoraFtError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise LoraFtError(
            f"config file not found: {p} (run without a config for the defaults, or see configs/)"
        )
    try:
        data = _yaml_load(read_record(p, "config file"))
    except RecursionError:
        raise LoraFtError(f"config file {p} is nested too deeply to be a run config") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = first_line(exc, type(exc).__name__)
        raise LoraFtError(f"config file {p} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoraFtError(
            f"config file {p} must hold a mapping (model:, data:, lora:, train:), not {type(data).__name__}"
        )
    return data


def config_from_dict(data: dict[str, Any], *, trust_remote_code: bool = False) -> RunConfig:
    """The config ``data`` holds, with ``model.trust_remote_code`` from the argument, never from ``data``.

    Running a model directory's own Python is granted by the current command line only: a saved
    config.yaml (a run someone sent, a resumed run) or a merged export's record cannot switch it on.
    """
    cfg = _build(RunConfig, data, "")
    cfg.model.trust_remote_code = trust_remote_code
    return cfg


def _trust_in(data: dict[str, Any]) -> Any:
    model = data.get("model")
    return model.get("trust_remote_code") if isinstance(model, dict) else None


def command_line_trust(overrides: list[str], flag: bool = False) -> bool | None:
    """``model.trust_remote_code`` as the command line sets it: True with ``--trust-remote-code``, else
    what ``--set model.trust_remote_code=...`` says (the last one wins), else None."""
    return True if flag else _trust_in(apply_overrides({}, list(overrides)))


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, trust_remote_code: bool = False
) -> RunConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; validated.

    ``model.trust_remote_code`` is on only when the command line grants it (``trust_remote_code``,
    or an override setting it true); a file that sets it true without that grant is refused.

    Raises:
        LoraFtError: a missing or malformed file, an unknown key, a wrong type or a value out of range,
            or a file setting ``model.trust_remote_code: true`` that the command line does not grant.
    """
    overrides = list(overrides or [])
    data = read_yaml(path) if path is not None else {}
    granted = command_line_trust(overrides, trust_remote_code)
    if granted is None and _trust_in(data) is True:
        raise LoraFtError(
            f"config file {path} sets model.trust_remote_code: true, which runs Python code from the model's "
            "directory; a file cannot grant that: add --trust-remote-code to the command if you trust that code"
        )
    return config_from_dict(apply_overrides(data, overrides), trust_remote_code=granted is True)


def dump_config(cfg: RunConfig, extra: dict[str, Any] | None = None) -> str:
    """YAML text of the resolved config, with informational records (e.g. library versions) appended."""
    data = cfg.to_dict()
    if extra:
        data.update(extra)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
