"""Config files and the command line: YAML read with 1.2 booleans and no aliases, ``--set key=value``
overrides, ``load_config`` (defaults < YAML < ``--set``) and the YAML a run saves as ``config.yaml``
(and ``lora-ft train --print-config`` prints).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lora_ft.config.build import config_from_dict
from lora_ft.config.schema import RunConfig
from lora_ft.config.shipped import resolve_config_path
from lora_ft.errors import LoraFtError, first_line
from lora_ft.fsutil import read_record


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
            f"config file not found: {p} (run without a config for the defaults; lora-ft configs lists "
            "the shipped ones, which a name like smoke or configs/smoke.yaml finds)"
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
    """Defaults, then the YAML file at ``path`` (if any; a name finds a shipped config, see
    ``shipped.resolve_config_path``), then ``overrides``; validated.

    ``model.trust_remote_code`` is on only when the command line grants it (``trust_remote_code``,
    or an override setting it true); a file that sets it true without that grant is refused.

    Raises:
        LoraFtError: a missing or malformed file, an unknown key, a wrong type or a value out of range,
            or a file setting ``model.trust_remote_code: true`` that the command line does not grant.
    """
    overrides = list(overrides or [])
    path = resolve_config_path(path) if path is not None else None
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
