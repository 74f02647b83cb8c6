"""From a parsed mapping to a typed ``RunConfig``: each value checked against its field's annotation
(int -> float the one conversion), unknown keys named with the closest known one, and
``model.trust_remote_code`` taken from the caller, never from the mapping.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Union

from lora_ft.config.schema import RunConfig
from lora_ft.errors import LoraFtError

# Keys a saved config may carry that are records, not settings: the library versions, the sha256 of
# every data file the run read (``LoadedData.fingerprint``), which a resume must find unchanged, and
# the task the data gave (``Task.to_dict``).
DATA_FINGERPRINT = "data_sha256"
TASK_RECORD = "task"
_INFORMATIONAL_KEYS = ("versions", DATA_FINGERPRINT, TASK_RECORD)


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


def config_from_dict(data: dict[str, Any], *, trust_remote_code: bool = False) -> RunConfig:
    """The config ``data`` holds, with ``model.trust_remote_code`` from the argument, never from ``data``.

    Running a model directory's own Python is granted by the current command line only: a saved
    config.yaml (a run someone sent, a resumed run) or a merged export's record cannot switch it on.
    """
    cfg = _build(RunConfig, data, "")
    cfg.model.trust_remote_code = trust_remote_code
    return cfg
