"""What an ``adapter_config.json`` may say for lora-ft to compute the same thing PEFT does.

``check_config`` refuses a config that is not LoRA, a LoRA variant ``LoRALinear`` does not compute
(bias terms, Conv1D layers, base-rewriting inits, ...), and values of the wrong type or range (JSON
allows NaN, strings and the rest where a rank belongs); keys from a newer PEFT that lora-ft does not
know are ignored with a warning when they are set.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from lora_ft.errors import LoraFtError
from lora_ft.finite import is_finite_number

log = logging.getLogger("lora_ft")

# Our record of a layer cut (model.num_layers): the adapter fits only a base cut the same way. PEFT
# ignores the key, with a warning that names it.
CUT_KEY = "lora_ft_num_layers"

# Keys of adapter_config.json that lora-ft understands. Others (newer PEFT fields) are ignored, with a
# warning when they are set: PEFT writes every field of its config, and null means the feature is off.
_KNOWN_KEYS = {
    "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save",
    "base_model_name_or_path", "bias", "fan_in_fan_out", "use_rslora", "init_lora_weights", "rank_pattern",
    "alpha_pattern", "revision", "inference_mode", "use_dora", "layers_to_transform", "layers_pattern",
    "auto_mapping", "peft_version", "exclude_modules", "layer_replication", "megatron_config", "megatron_core",
    "loftq_config", "eva_config", "corda_config", "lora_bias", "target_parameters", "trainable_token_indices",
    "use_qalora", "qalora_group_size", "alora_invocation_tokens", "arrow_config", "ensure_weight_tying",
    CUT_KEY,
}  # fmt: skip
# Known keys that, when set, make the adapter compute something LoRALinear does not.
_UNSUPPORTED = {
    "lora_bias": "LoRA bias terms (lora_bias)",
    "fan_in_fan_out": "fan_in_fan_out layers (GPT-2 Conv1D)",
    "use_qalora": "QA-LoRA",
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "arrow_config": "Arrow routing",
}
# These inits rewrite the base weights: such an adapter needs the residual base PEFT saved with it.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


def check_config(config: Any, cfg_path: Path) -> None:
    """Refuse what lora-ft cannot compute as PEFT would; warn about set keys it does not know.

    Raises:
        LoraFtError: naming ``cfg_path``, the key and what to do.
    """
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        peft_type = config.get("peft_type") if isinstance(config, dict) else None
        raise LoraFtError(
            f"{cfg_path}: peft_type {peft_type!r} is not LORA; lora-ft reads LoRA adapters only"
        )
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise LoraFtError(f"{cfg_path} has no {key!r}; is it a LoRA adapter config?")
    _check_values(config, cfg_path)
    for key, feature in _UNSUPPORTED.items():
        if config.get(key):
            raise LoraFtError(f"{cfg_path}: {feature} adapters are not supported by lora-ft ({key} is set)")
    if config.get("bias", "none") != "none":
        raise LoraFtError(
            f"{cfg_path}: bias={config['bias']!r} adapters also train base biases, which lora-ft does not "
            "load; only bias='none' is supported"
        )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise LoraFtError(
            f"{cfg_path}: init_lora_weights={init!r} rewrites the base weights, so this adapter does not apply "
            "to the original base; convert it with PEFT (save_pretrained(path_initial_model_for_weight_conversion=...))"
        )
    unknown = sorted(k for k in set(config) - _KNOWN_KEYS if config[k] not in (None, False, {}, [], ""))
    if unknown:
        log.warning(
            "adapter config %s: ignoring keys lora-ft does not know (from a newer PEFT?): %s; if they change "
            "what the adapter computes, results will differ from PEFT's",
            cfg_path,
            ", ".join(unknown),
        )


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_alpha(value: Any) -> bool:
    return is_finite_number(value) and value > 0


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise LoraFtError(f"{where} {pattern!r} is not a valid regex ({exc})") from None


def _check_values(config: dict[str, Any], cfg_path: Path) -> None:
    """The type and range of every value lora-ft computes with; JSON allows NaN, strings and the rest."""
    if not _is_rank(config["r"]):
        raise LoraFtError(f"{cfg_path}: r must be an integer >= 1, got {config['r']!r}")
    if not _is_alpha(config["lora_alpha"]):
        raise LoraFtError(f"{cfg_path}: lora_alpha must be a finite number > 0, got {config['lora_alpha']!r}")
    dropout = config.get("lora_dropout")
    if dropout is not None and not (is_finite_number(dropout) and 0 <= dropout < 1):
        raise LoraFtError(f"{cfg_path}: lora_dropout must be a number in [0, 1), got {dropout!r}")
    cut = config.get(CUT_KEY)
    if cut is not None and not _is_rank(cut):
        raise LoraFtError(f"{cfg_path}: {CUT_KEY} must be an integer >= 1 (a layer count), got {cut!r}")
    for key in ("use_rslora", "use_dora"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise LoraFtError(f"{cfg_path}: {key} must be true or false, got {config[key]!r}")
    targets = config.get("target_modules")
    if isinstance(targets, str):  # PEFT: a string is a regex over full module names
        _check_regex(targets, f"{cfg_path}: target_modules")
    elif targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise LoraFtError(f"{cfg_path}: target_modules must be a regex or a list of names, got {targets!r}")
    for key, valid, what in (
        ("rank_pattern", _is_rank, "an integer >= 1"),
        ("alpha_pattern", _is_alpha, "a finite number > 0"),
    ):
        pattern = config.get(key)
        if pattern is None:
            continue
        if not isinstance(pattern, dict):
            raise LoraFtError(f"{cfg_path}: {key} must map module regexes to values, got {pattern!r}")
        for name, value in pattern.items():
            _check_regex(name, f"{cfg_path}: {key} key")
            if not valid(value):
                raise LoraFtError(f"{cfg_path}: {key}[{name!r}] must be {what}, got {value!r}")
